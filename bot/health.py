"""A liveness file for container health checks.

Why a file: the health check runs as a separate short process (Docker's HEALTHCHECK), which must not
open a Discord connection or load torch. The running bot rewrites the file every few seconds with
its state; the check reads it and fails when it is missing, stale, or says the bot is not ready.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

HEALTH_FILE_NAME = "health.json"
STALE_AFTER_S = 90.0


def health_path(database: str | Path) -> Path:
    """The file lives beside the database (the data volume)."""
    return Path(database).resolve().parent / HEALTH_FILE_NAME


def write_health(path: Path, state: dict[str, Any]) -> None:
    """Atomically replace the file (a reader never sees half a write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"time": time.time(), **state})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".health-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(payload)
    os.replace(tmp, path)


def check_health(path: Path, *, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> tuple[bool, str]:
    """(healthy, one-line reason)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False, f"no health file at {path} (is the bot running?)"
    except (OSError, ValueError) as exc:
        return False, f"health file unreadable: {exc}"
    age = (time.time() if now is None else now) - float(state.get("time", 0))
    if age > stale_after_s:
        return False, f"health file is {age:.0f} s old (the bot stopped updating it)"
    if not state.get("connected"):
        return False, "the bot is not connected to Discord"
    return True, f"ok: connected, worker {state.get('worker', 'unknown')}, queue {state.get('queue', 0)}"
