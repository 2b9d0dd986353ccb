"""The fair scheduler on its own: round-robin, caps, positions, batching (no worker, no torch)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.client import FairQueue
from engine.errors import QueueFull, UserQueueFull
from engine.protocol import GenerateRequest
from tests.requests import request

_ids = itertools.count(1)


def req(user: int, *, size: int = 64, steps: int = 4, count: int = 1, job_id: int | None = None) -> GenerateRequest:
    return request(job_id if job_id is not None else next(_ids), user, "p", steps=steps, width=size, height=size,
                   count=count)


def serve_all(s: FairQueue, max_batch: int) -> list[list[int]]:
    batches = []
    while batch := s.next_batch(max_batch):
        batches.append([j.job_id for j in batch])
        for j in batch:
            s.finish(j.job_id)
    return batches


def test_one_heavy_user_does_not_starve_a_later_one_compatible():
    s = FairQueue(max_queue=50, max_per_user=20)
    a = [s.submit(req(1)).job_id for _ in range(10)]
    b = s.submit(req(2)).job_id
    batches = serve_all(s, max_batch=4)
    assert b in batches[0]
    assert batches[0] == [a[0], b, a[1], a[2]]


def test_one_heavy_user_does_not_starve_a_later_one_incompatible():
    s = FairQueue(max_queue=50, max_per_user=20)
    a = [s.submit(req(1)).job_id for _ in range(10)]
    b = s.submit(req(2, size=128)).job_id  # cannot share A's batches
    batches = serve_all(s, max_batch=4)
    assert batches[0] == a[:4]
    assert batches[1] == [b]


def test_round_robin_order_and_positions():
    s = FairQueue(max_queue=50, max_per_user=20)
    a1, a2, a3 = (s.submit(req(1, size=64 + 8 * i)).job_id for i in range(3))  # all incompatible: one per batch
    b1, b2 = (s.submit(req(2, size=200 + 8 * i)).job_id for i in range(2))
    c1 = s.submit(req(3, size=300)).job_id
    assert s.positions() == {a1: 0, b1: 1, c1: 2, a2: 3, b2: 4, a3: 5}
    assert s.position(c1) == 2
    assert serve_all(s, max_batch=4) == [[a1], [b1], [c1], [a2], [b2], [a3]]


def test_positions_move_as_the_queue_moves_and_on_cancel():
    s = FairQueue(max_queue=50, max_per_user=20)
    jobs = [s.submit(req(u, size=64 + 8 * u)).job_id for u in range(4)]
    last = jobs[-1]
    assert s.position(last) == 3
    s.next_batch(1)
    assert s.position(last) == 2
    assert s.cancel(jobs[1]) is not None
    assert s.position(last) == 1
    assert s.cancel(jobs[1]) is None  # already gone
    assert s.position(jobs[0]) is None  # running, not queued


def test_new_user_joins_the_current_round():
    s = FairQueue(max_queue=50, max_per_user=20)
    a = [s.submit(req(1, size=64 + 8 * i)).job_id for i in range(5)]
    assert serve_all_n(s, 2) == [[a[0]], [a[1]]]
    c = s.submit(req(3, size=500)).job_id
    assert s.position(c) == 0  # A already had two turns


def serve_all_n(s: FairQueue, n: int) -> list[list[int]]:
    out = []
    for _ in range(n):
        batch = s.next_batch(1)
        out.append([j.job_id for j in batch])
        for j in batch:
            s.finish(j.job_id)
    return out


def test_global_cap_refuses_with_message():
    s = FairQueue(max_queue=3, max_per_user=10)
    for u in range(3):
        s.submit(req(u))
    with pytest.raises(QueueFull) as err:
        s.submit(req(9))
    assert "queue is full" in str(err.value)
    assert err.value.retry_hint
    assert s.queued == 3


def test_user_cap_counts_running_jobs():
    s = FairQueue(max_queue=10, max_per_user=2)
    s.submit(req(1))
    s.submit(req(1))
    with pytest.raises(UserQueueFull, match="limit is 2"):
        s.submit(req(1))
    s.next_batch(1)  # one runs, still counts
    with pytest.raises(UserQueueFull):
        s.submit(req(1))
    (running,) = s.running_jobs()
    s.finish(running.job_id)
    s.submit(req(1))  # room again
    s.submit(req(2))  # other users unaffected


def test_user_queue_full_is_a_queue_full():
    assert issubclass(UserQueueFull, QueueFull)


def test_batch_respects_rows_and_key():
    s = FairQueue(max_queue=50, max_per_user=20)
    big = s.submit(req(1, count=3)).job_id
    other_steps = s.submit(req(2, steps=8)).job_id
    two = s.submit(req(3, count=2)).job_id
    one = s.submit(req(4)).job_id
    batch = [j.job_id for j in s.next_batch(4)]
    assert batch == [big, one]  # 3 + 1 rows; the 2-image job does not fit, different steps never mix
    assert [j.job_id for j in s.next_batch(4)] == [other_steps]
    assert [j.job_id for j in s.next_batch(4)] == [two]


def test_oversized_first_job_is_served_alone():
    s = FairQueue(max_queue=50, max_per_user=20)
    big = s.submit(req(1, count=6)).job_id
    s.submit(req(2))
    assert [j.job_id for j in s.next_batch(4)] == [big]


def test_requeued_job_goes_first_alone_and_counts_attempts():
    s = FairQueue(max_queue=50, max_per_user=20)
    first = s.submit(req(1))
    others = [s.submit(req(u)).job_id for u in (2, 3, 4)]
    batch = s.next_batch(4)
    assert [j.job_id for j in batch] == [first.job_id, *others]
    for job in batch:
        s.requeue_front(job)
    assert s.position(first.job_id) == 0
    retried = [s.next_batch(4) for _ in range(4)]
    assert all(len(b) == 1 for b in retried)
    assert [b[0].job_id for b in retried] == [first.job_id, *others]
    assert {b[0].attempts for b in retried} == {2}


def test_duplicate_job_id_is_refused():
    s = FairQueue(max_queue=5, max_per_user=5)
    s.submit(req(1, job_id=77))
    with pytest.raises(ValueError):
        s.submit(req(2, job_id=77))


jobs_strategy = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from([64, 128]), st.integers(1, 3)), min_size=1, max_size=40
)


@settings(max_examples=150, deadline=None)
@given(jobs=jobs_strategy, max_batch=st.integers(1, 5))
def test_every_job_served_once_in_compatible_batches_fifo_per_user(jobs, max_batch):
    s = FairQueue(max_queue=100, max_per_user=100)
    submitted = [s.submit(req(u, size=size, count=count)) for u, size, count in jobs]
    order_by_user: dict[int, list[int]] = {}
    for j in submitted:
        order_by_user.setdefault(j.user_id, []).append(j.job_id)
    served: list[int] = []
    while s.queued:
        expected_first = min(s.positions(), key=s.positions().get)
        batch = s.next_batch(max_batch)
        assert batch, "a non-empty queue always yields a batch"
        assert batch[0].job_id == expected_first  # the next fair job always leads
        assert len({j.request.batch_key() for j in batch}) == 1
        assert len(batch) == 1 or sum(j.rows for j in batch) <= max_batch
        for j in batch:
            served.append(j.job_id)
            s.finish(j.job_id)
    assert sorted(served) == sorted(j.job_id for j in submitted)
    for ids in order_by_user.values():  # each user's jobs leave in the order sent
        assert [i for i in served if i in ids] == ids


@settings(max_examples=100, deadline=None)
@given(jobs=jobs_strategy)
def test_positions_are_a_permutation_and_only_decrease(jobs):
    s = FairQueue(max_queue=100, max_per_user=100)
    for u, size, count in jobs:
        s.submit(req(u, size=size, count=count))
    before = s.positions()
    assert sorted(before.values()) == list(range(len(before)))
    while s.queued:
        for j in s.next_batch(3):
            s.finish(j.job_id)
        after = s.positions()
        assert all(after[i] < before[i] for i in after)
        assert sorted(after.values()) == list(range(len(after)))
        before = after


@settings(max_examples=100, deadline=None)
@given(heavy=st.integers(1, 30), light_users=st.integers(1, 5))
def test_light_users_wait_at_most_one_round(heavy, light_users):
    """A user who queues one job behind a heavy user is served within (users) single-job batches."""
    s = FairQueue(max_queue=100, max_per_user=100)
    for i in range(heavy):
        s.submit(req(1, size=64 + 8 * (i % 3)))
    light = [s.submit(req(10 + u, size=999)).job_id for u in range(light_users)]
    served = [b[0] for b in serve_all(s, max_batch=1)]
    assert max(served.index(j) for j in light) <= light_users
