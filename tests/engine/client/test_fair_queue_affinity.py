"""The fair queue with several checkpoints: batches never mix them, a resident one is preferred, the wait is bounded."""

from __future__ import annotations

import itertools

from engine.client import FairQueue
from engine.client.fair_queue import preferred_checkpoints
from engine.protocol import GenerateRequest, ResidentCheckpoint
from tests.requests import request

_ids = itertools.count(1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def req(user: int, checkpoint: str) -> GenerateRequest:
    return request(next(_ids), user, "p", steps=4, width=64, height=64, checkpoint=checkpoint)


def ids(batch) -> list[int]:
    return [j.job_id for j in batch]


def test_batches_never_mix_checkpoints():
    q = FairQueue(max_queue=50, max_per_user=20)
    jobs = [q.submit(req(user, ckpt)) for user, ckpt in [(1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "c")]]
    batches = []
    while batch := q.next_batch(8):
        batches.append(batch)
        for j in batch:
            q.finish(j.job_id)
    assert [sorted({j.checkpoint for j in b}) for b in batches] == [["a"], ["b"], ["c"]]
    assert ids(batches[0]) == [jobs[0].job_id, jobs[2].job_id]


def test_a_resident_checkpoint_goes_first_but_each_user_keeps_their_order():
    clock = Clock()
    q = FairQueue(max_queue=50, max_per_user=20, affinity_wait_s=20.0, clock=clock)
    b1 = q.submit(req(1, "b"))
    a1_after_b = q.submit(req(1, "a"))  # user 1's second job: must not overtake their first
    a2 = q.submit(req(2, "a"))
    batch = q.next_batch(4, prefer={"a"})
    assert ids(batch) == [a2.job_id]
    for j in batch:
        q.finish(j.job_id)
    assert ids(q.next_batch(4, prefer={"a"})) == [b1.job_id]  # only user 1's "b" job is eligible to lead
    assert q.get(a1_after_b.job_id) is not None


def test_no_job_waits_longer_than_the_bound_for_affinity():
    clock = Clock()
    q = FairQueue(max_queue=50, max_per_user=20, affinity_wait_s=20.0, clock=clock)
    b = q.submit(req(1, "b"))
    for user in range(2, 6):
        q.submit(req(user, "a"))
    clock.now += 5
    first = q.next_batch(1, prefer={"a"})
    assert first[0].checkpoint == "a"
    q.finish(first[0].job_id)
    clock.now += 20  # b has now waited 25 s: fair order decides again
    assert ids(q.next_batch(1, prefer={"a"})) == [b.job_id]


def test_without_a_preference_fair_order_decides():
    q = FairQueue(max_queue=50, max_per_user=20)
    b = q.submit(req(1, "b"))
    q.submit(req(2, "a"))
    assert ids(q.next_batch(4)) == [b.job_id]


def test_preferred_checkpoints_are_those_on_the_device_and_the_default_as_empty():
    resident = (ResidentCheckpoint("tiny", True, 10), ResidentCheckpoint("tiny-b", False, 10))
    assert preferred_checkpoints(resident, "tiny") == {"tiny", ""}
    assert preferred_checkpoints(resident, "tiny-b") == {"tiny"}
    assert preferred_checkpoints(resident, "tiny", several=False) == frozenset()
