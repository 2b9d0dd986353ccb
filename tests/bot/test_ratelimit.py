"""Token-bucket limiter driven by a fake clock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.ratelimit import RateDecision, RateLimiter


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(rate: float = 6.0, burst: float = 2.0) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(rate, burst, clock=clock), clock


def test_burst_then_refused_with_retry_after() -> None:
    limiter, _ = make(rate=6.0, burst=2)  # one token per 10 s
    assert limiter.consume("u") == RateDecision(True, 0.0)
    assert limiter.consume("u") == RateDecision(True, 0.0)
    refused = limiter.consume("u")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(10.0)


def test_waiting_retry_after_is_enough() -> None:
    limiter, clock = make(rate=7.0, burst=3)
    for _ in range(3):
        assert limiter.consume(42).allowed
    decision = limiter.consume(42)
    clock.advance(decision.retry_after * 0.99)
    assert not limiter.check(42).allowed
    clock.advance(decision.retry_after * 0.01)
    assert limiter.consume(42).allowed


def test_check_does_not_consume() -> None:
    limiter, _ = make(burst=1)
    for _ in range(5):
        assert limiter.check("u").allowed
    assert limiter.consume("u").allowed
    assert not limiter.check("u").allowed


def test_refused_request_takes_nothing() -> None:
    limiter, clock = make(rate=6.0, burst=1)
    limiter.consume("u")
    clock.advance(5)
    assert limiter.consume("u").retry_after == pytest.approx(5.0)
    assert limiter.consume("u").retry_after == pytest.approx(5.0)  # still 5: the refusals cost nothing
    clock.advance(5)
    assert limiter.consume("u").allowed


def test_users_are_independent() -> None:
    limiter, _ = make(burst=1)
    assert limiter.consume("a").allowed
    assert not limiter.consume("a").allowed
    assert limiter.consume("b").allowed


def test_refill_is_capped_at_burst() -> None:
    limiter, clock = make(rate=60.0, burst=2)
    limiter.consume("u")
    clock.advance(3600)
    assert limiter.consume("u").allowed
    assert limiter.consume("u").allowed
    assert not limiter.consume("u").allowed


def test_cost_refund_and_reset() -> None:
    limiter, _ = make(rate=6.0, burst=4)
    assert limiter.consume("u", cost=4).allowed
    decision = limiter.consume("u", cost=2)
    assert not decision.allowed and decision.retry_after == pytest.approx(20.0)
    limiter.refund("u", cost=2)
    assert limiter.consume("u", cost=2).allowed
    limiter.reset("u")
    assert limiter.check("u", cost=4).allowed
    with pytest.raises(ValueError):
        limiter.check("u", cost=5)
    with pytest.raises(ValueError):
        limiter.consume("u", cost=0)


def test_clock_stepping_back_takes_nothing_away() -> None:
    limiter, clock = make(rate=6.0, burst=2)
    limiter.consume("u")
    clock.advance(-100)
    assert limiter.consume("u").allowed


def test_full_buckets_are_forgotten() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60.0, 1, clock=clock, prune_every=4)
    for user in range(3):
        limiter.consume(user)
    assert limiter.tracked_users() == 3
    clock.advance(1.0)  # everyone is full again
    limiter.consume("fresh")  # 4th operation prunes
    assert limiter.tracked_users() == 1


def test_instances_share_nothing() -> None:
    clock = FakeClock()
    a, b = RateLimiter(6, 1, clock=clock), RateLimiter(6, 1, clock=clock)
    a.consume("u")
    assert b.consume("u").allowed


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_bad_settings(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


@given(
    st.floats(0.5, 120.0),
    st.integers(1, 10),
    st.lists(st.tuples(st.floats(0.0, 30.0), st.sampled_from(["a", "b"])), max_size=60),
)
def test_never_more_than_burst_plus_refill(rate: float, burst: int, steps: list[tuple[float, str]]) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, burst, clock=clock)
    start = clock.now
    granted = {"a": 0, "b": 0}
    for wait, user in steps:
        clock.advance(wait)
        decision = limiter.consume(user)
        assert decision.allowed == (decision.retry_after == 0.0)
        assert decision.retry_after >= 0.0
        granted[user] += decision.allowed
        # Sustained rate can never be beaten: burst up front plus what the elapsed time refilled.
        assert granted[user] <= burst + (clock.now - start) * rate / 60.0 + 1e-6


def test_imports_without_torch_discord_or_diffusers() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'discord', 'diffusers', 'transformers'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "import bot.ratelimit\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
