"""The books of batches in flight to a local worker (:mod:`engine.client.in_flight`): pure, no worker."""

from __future__ import annotations

import pytest

from engine.client.fair_queue import QueuedJob
from engine.client.in_flight import InFlight
from tests.requests import request


def job(job_id: int) -> QueuedJob:
    return QueuedJob(request=request(job_id, 1), seq=job_id, round=0, attempts=1, running=True)


def test_only_the_head_batch_is_on_the_clock_and_one_batch_goes_ahead_once_rendered() -> None:
    flight = InFlight(depth=2)
    assert flight.may_send() and flight.head is None
    flight.add(1, [job(1), job(2)], now=10.0, time_limit_s=5.0)
    assert not flight.may_send() and flight.head is not None and flight.head.deadline == 15.0
    assert not flight.mark_rendered(99) and flight.mark_rendered(1) and flight.may_send()
    second = flight.add(2, [job(3)], now=11.0, time_limit_s=7.0)
    assert second.deadline == float("inf") and not flight.may_send()
    assert 3 in flight and len(flight) == 3 and flight.answer(1) is not None and flight.answer(1) is None
    assert flight.finish(99, now=12.0) is None
    assert [j.job_id for j in flight.finish(1, now=12.0) or []] == [2]  # unanswered: the client fails it
    assert flight.head is second and second.deadline == 19.0
    assert [j.job_id for j in flight.take_head()] == [3] and flight.head is None


def test_a_lost_worker_hands_back_every_job_oldest_batch_first() -> None:
    flight = InFlight(depth=2)
    flight.add(3, [job(4)], now=20.0, time_limit_s=1.0)
    flight.mark_rendered(3)
    flight.add(4, [job(5)], now=20.5, time_limit_s=1.0)
    assert [j.job_id for j in flight.clear()] == [4, 5] and flight.batches == 0


def test_depth_one_never_sends_ahead() -> None:
    single = InFlight(depth=1)
    single.add(1, [job(6)], now=0.0, time_limit_s=1.0)
    single.mark_rendered(1)
    assert not single.may_send()
    with pytest.raises(ValueError):
        InFlight(depth=0)
