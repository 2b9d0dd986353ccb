"""Per-user token-bucket rate limiting for commands that start generations.

Pure and synchronous: no I/O, no tasks, no module state; time comes from an injected clock so tests drive it.
Each user has a bucket of ``burst`` tokens that refills continuously at ``rate_per_minute``; a request costs one
token (or ``cost``, e.g. the number of images).  A bucket that has refilled completely is the same as no bucket, so
full buckets are forgotten now and then and memory stays proportional to the users active recently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["RateDecision", "RateLimiter"]

# Float slack so that waiting exactly `retry_after` seconds is always enough.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a request may go ahead now; if not, how many seconds until it could (0.0 when allowed)."""

    allowed: bool
    retry_after: float


class RateLimiter:
    """Token bucket per user: ``rate_per_minute`` sustained, up to ``burst`` at once."""

    def __init__(
        self,
        rate_per_minute: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        prune_every: int = 1024,
    ) -> None:
        if not rate_per_minute > 0:
            raise ValueError("rate_per_minute must be > 0")
        if not burst >= 1:
            raise ValueError("burst must be >= 1")
        self._rate = rate_per_minute / 60.0  # tokens per second
        self._burst = float(burst)
        self._clock = clock
        self._prune_every = max(1, prune_every)
        self._ops = 0
        # user -> (tokens at `stamp`, stamp)
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def rate_per_minute(self) -> float:
        return self._rate * 60.0

    def _tokens(self, user_id: Hashable, now: float) -> float:
        tokens, stamp = self._buckets.get(user_id, (self._burst, now))
        elapsed = max(0.0, now - stamp)  # a clock that steps back never takes tokens away
        return min(self._burst, tokens + elapsed * self._rate)

    def _decide(self, tokens: float, cost: float) -> RateDecision:
        if tokens + _EPSILON >= cost:
            return RateDecision(True, 0.0)
        return RateDecision(False, (cost - tokens) / self._rate)

    def _check_cost(self, cost: float) -> None:
        if not 0 < cost <= self._burst:
            raise ValueError(f"cost must be in (0, {self._burst}], got {cost!r}")

    def check(self, user_id: Hashable, cost: float = 1.0) -> RateDecision:
        """Would a request of ``cost`` be allowed now?  Takes nothing."""
        self._check_cost(cost)
        return self._decide(self._tokens(user_id, self._clock()), cost)

    def consume(self, user_id: Hashable, cost: float = 1.0) -> RateDecision:
        """Take ``cost`` tokens if the user has them; a refused request takes nothing."""
        self._check_cost(cost)
        now = self._clock()
        tokens = self._tokens(user_id, now)
        decision = self._decide(tokens, cost)
        if decision.allowed:
            self._buckets[user_id] = (max(0.0, tokens - cost), now)
        self._ops += 1
        if self._ops % self._prune_every == 0:
            self._prune(now)
        return decision

    def refund(self, user_id: Hashable, cost: float = 1.0) -> None:
        """Give tokens back, e.g. when a request was refused after consuming (bad prompt, queue full)."""
        self._check_cost(cost)
        now = self._clock()
        tokens = min(self._burst, self._tokens(user_id, now) + cost)
        self._buckets[user_id] = (tokens, now)

    def reset(self, user_id: Hashable) -> None:
        """Forget a user's bucket (they start full again)."""
        self._buckets.pop(user_id, None)

    def tracked_users(self) -> int:
        """How many buckets are held (those not yet known to be full)."""
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        for user_id in [u for u in self._buckets if self._tokens(u, now) >= self._burst]:
            del self._buckets[user_id]
