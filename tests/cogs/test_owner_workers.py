"""/status lists every worker: one line each (state, device, model, batch, jobs done, heartbeat), inside the limits."""

from __future__ import annotations

from typing import Any

from cogs.owner import status_embed, worker_lines


def worker(name: str, state: str = "ready", age: float | None = 1.2) -> dict[str, Any]:
    return {"name": name, "state": state, "device": "cuda:1", "checkpoint": "sd15", "max_batch": 4, "jobs_done": 17,
            "heartbeat_age_s": age, "host": "gpu-box"}


def figures(workers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"worker": "ready", "pid": None, "device": "cuda:0, cuda:1", "checkpoint": "sd15", "queue": 0, "running": 0,
            "users_waiting": 0, "jobs_last_hour": {}, "images_per_s": 0.0, "avg_step_ms": 0.0, "vram_used_bytes": 0,
            "hypernet_cache_bytes": 0, "hypernet_cache": [], "worker_restarts": 0, "uptime_s": 5.0, "guilds": 1,
            "accepting_jobs": True, "workers": workers, "unet_compiled_calls": 0, "unet_eager_calls": 0,
            "unet_pending_layouts": 0, "unet_compile_failure": ""}


def test_each_worker_gets_a_line() -> None:
    text = worker_lines([worker("gpu-a"), worker("gpu-b", "gone", 95.0), worker("starting-c", "starting", None)])
    assert text.splitlines() == [
        "`gpu-a` ready · cuda:1 · `sd15` · batch 4 · 17 done · heartbeat 1s ago",
        "`gpu-b` gone · cuda:1 · `sd15` · batch 4 · 17 done · heartbeat 95s ago",
        "`starting-c` starting · cuda:1 · `sd15` · batch 4 · 17 done · heartbeat —",
    ]


def test_many_workers_stay_inside_a_field_and_say_how_many_are_left_out() -> None:
    text = worker_lines([worker(f"worker-{i:03d}") for i in range(40)])
    assert len(text) <= 1024
    shown = text.count("` ready")
    assert text.endswith(f"… and {40 - shown} more") and 0 < shown < 40


def test_the_embed_has_a_workers_field() -> None:
    embed = status_embed(figures([worker("gpu-a"), worker("gpu-b")]))
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Workers (2)"].count("\n") == 1 and "`gpu-b` ready" in fields["Workers (2)"]


def test_a_compiling_worker_shows_its_unet_calls_and_an_eager_one_does_not() -> None:
    eager = {f.name: f.value for f in status_embed(figures([])).fields}
    compiling = figures([]) | {"unet_compiled_calls": 120, "unet_eager_calls": 3, "unet_pending_layouts": 1}
    fields = {f.name: f.value for f in status_embed(compiling).fields}
    assert fields["Speed"] == "0.00 images/s\n0 ms/step\nUNet: 120 compiled, 3 eager calls, 1 layouts to compile"
    assert eager["Speed"] == "0.00 images/s\n0 ms/step"
    failed = compiling | {"unet_compile_failure": "compiling the UNet for 2 rows failed: RuntimeError"}
    assert {f.name: f.value for f in status_embed(failed).fields}["Speed"] == (
        "0.00 images/s\n0 ms/step\nUNet: eager — compiling the UNet for 2 rows failed: RuntimeError (see the worker's log)")


def test_a_line_names_the_checkpoints_its_worker_holds_on_its_device() -> None:
    held = worker("gpu-a") | {"on_device": ["sd15", "anythingV3"]}
    assert worker_lines([held]) == ("`gpu-a` ready · cuda:1 · `sd15` · batch 4 · 17 done · heartbeat 1s ago · holds "
                                    "`sd15`, `anythingV3`")
