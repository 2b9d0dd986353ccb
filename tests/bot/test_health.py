"""The container health check reads the file the running bot keeps fresh."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bot.health import check_health, health_path, write_health

ROOT = Path(__file__).resolve().parents[2]


def test_fresh_connected_file_is_healthy(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    write_health(path, {"connected": True, "worker": "ready", "queue": 3})
    assert check_health(path) == (True, "ok: connected, worker ready, queue 3")


def test_missing_stale_and_disconnected_are_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    healthy, reason = check_health(path)
    assert not healthy and reason.startswith("no health file at")
    write_health(path, {"connected": True})
    healthy, reason = check_health(path, now=time.time() + 600)
    assert not healthy and "the bot stopped updating it" in reason
    write_health(path, {"connected": False})
    assert check_health(path) == (False, "the bot is not connected to Discord")


def test_cli_healthcheck_uses_the_database_folder(tmp_path: Path) -> None:
    database = tmp_path / "data" / "hypercord.sqlite3"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HYPERCORD_STORAGE__DATABASE": str(database)}
    cmd = [sys.executable, "-m", "bot", "--healthcheck"]
    missing = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no health file" in missing.stdout
    write_health(health_path(database), {"connected": True, "worker": "ready", "queue": 0})
    ok = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
