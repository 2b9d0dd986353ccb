"""/status of a fleet from its registry: each worker's state by heartbeat age, figures over the live ones only."""

from __future__ import annotations

from engine.client.fleet_status import fleet_status
from engine.protocol import WorkerConfig, WorkerInfo

NOW = 1_000_000.0


def info(name: str, *, age: float = 1.0, state: str = "ready", busy: bool = False, device: str = "cuda:0",
         cache: int = 10) -> WorkerInfo:
    return WorkerInfo(name=name, pid=7, host="box", state=state, protocol_version=2, max_batch=4, device=device,
                      checkpoint="sd15", dtype="float16", context_dim=768, attention_widths=(320, 640), busy=busy,
                      jobs_done=3, heartbeat_at=NOW - age, hypernet_cache_bytes=cache, hypernet_cache_names=(name,))


def status(workers: list[WorkerInfo], broker_ok: bool = True):  # type: ignore[no-untyped-def]
    return fleet_status(WorkerConfig(checkpoint="configured"), workers, NOW, 5.0, broker_ok=broker_ok, queue_length=2,
                        running=1, users_queued=1, jobs_done=9, jobs_failed=1, images_per_s=1.5, avg_step_s=0.2,
                        uptime_s=60.0)


def test_states_from_the_registry() -> None:
    got = status([info("a"), info("b", busy=True, device="cuda:1"), info("c", age=9.0), info("d", state="stopped"),
                  info("e", state="starting")])
    assert [(w.name, w.state) for w in got.workers] == [("a", "ready"), ("b", "busy"), ("c", "gone"),
                                                        ("d", "stopped"), ("e", "starting")]
    assert got.state == "ready" and got.device == "cuda:0, cuda:1" and got.context_dim == 768
    assert got.cache_bytes == 20 and got.cache_contents == ("a", "b")  # live workers only
    assert got.workers[2].heartbeat_age_s == 9.0 and got.workers[0].max_batch == 4


def test_no_live_worker_or_no_broker() -> None:
    gone = status([info("a", age=60.0)])
    assert gone.state == "no workers" and gone.checkpoint == "configured" and gone.context_dim is None
    assert status([info("a")], broker_ok=False).state == "broker down"
