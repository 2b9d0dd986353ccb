"""The worker's finishing thread (:mod:`engine.worker.finisher`): order, waiting, and failures that stay contained."""

from __future__ import annotations

import threading

from engine.worker.finisher import Finisher


def test_tasks_run_in_submission_order_off_the_caller_thread() -> None:
    finisher = Finisher(max_pending=4)
    seen: list[tuple[int, str]] = []
    for n in range(10):
        finisher.submit(lambda n=n: seen.append((n, threading.current_thread().name)))
    assert finisher.drain(10)
    assert [n for n, _ in seen] == list(range(10))
    assert {name for _, name in seen} == {"worker-finish"}
    assert finisher.close(10)


def test_drain_waits_for_the_running_task_and_pending_counts_it() -> None:
    finisher = Finisher()
    release = threading.Event()
    finisher.submit(release.wait)
    assert finisher.pending == 1
    assert not finisher.drain(0.05), "drain must not report done while a task still runs"
    release.set()
    assert finisher.drain(10) and finisher.pending == 0
    finisher.close(10)


def test_a_failing_task_does_not_stop_the_ones_after_it(caplog) -> None:
    finisher = Finisher()
    after: list[str] = []

    def broken() -> None:
        raise RuntimeError("zlib exploded")

    finisher.submit(broken)
    finisher.submit(lambda: after.append("sent"))
    assert finisher.drain(10)
    assert after == ["sent"]
    assert "a finishing task failed" in caplog.text
    finisher.close(10)


def test_a_full_queue_makes_the_submitter_wait_instead_of_piling_up() -> None:
    finisher = Finisher(max_pending=1)
    release = threading.Event()
    finisher.submit(release.wait)  # running
    finisher.submit(lambda: None)  # waiting: the queue is full now
    third_in = threading.Event()

    def submit_third() -> None:
        finisher.submit(lambda: None)
        third_in.set()

    threading.Thread(target=submit_third, daemon=True).start()
    assert not third_in.wait(0.2), "the third submit should block while the queue is full"
    release.set()
    assert third_in.wait(10) and finisher.drain(10)
    finisher.close(10)
