"""The sandbox child itself: its guards are on, the bot's environment never reaches it, limits end it.

These call :func:`engine.intake.run_sandbox` directly, bypassing the parent's static checks, so the child's
own defences are what is tested.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.intake import IntakeLimits, IntakeRefused, run_sandbox
from tests.fixtures.malicious import payloads

LIMITS = IntakeLimits(max_bytes=8 << 20, sandbox_memory_bytes=2048 << 20, sandbox_cpu_s=60, sandbox_wall_s=120)


def test_guards_are_active_and_the_environment_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-value")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    report = run_sandbox(["check"], stdin_path=None, work_dir=tmp_path, limits=LIMITS, fsize_bytes=1 << 20)
    assert report["socket"] is True  # creating a socket raised
    assert report["os_system"] is True and report["subprocess"] is True
    assert report["file_write"] is True
    assert not (tmp_path / "sandbox-probe.txt").exists()
    assert set(report["environment"]) <= {"PATH", "LC_ALL", "LC_CTYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                          "OPENBLAS_NUM_THREADS", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED"}
    limits = report["limits"]
    assert limits["RLIMIT_AS"] == 2048 << 20 and limits["RLIMIT_CPU"] == 60
    assert limits["RLIMIT_FSIZE"] == 1 << 20 and limits["RLIMIT_NOFILE"] <= 32 and limits["RLIMIT_CORE"] == 0
    assert "secret-token-value" not in (tmp_path / "child.out").read_text()


def test_child_refuses_a_code_pickle_even_without_the_parent_scan(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pt"
    source.write_bytes(payloads.code_pickle(os.system, (payloads.marker_command(marker),)))
    out = tmp_path / "out.safetensors"
    with pytest.raises(IntakeRefused) as info:
        run_sandbox(["convert", "--format", "pt", "--out", str(out), "--weight-cap", str(source.stat().st_size)],
                    stdin_path=source, work_dir=tmp_path, limits=LIMITS, fsize_bytes=1 << 20)
    assert str(info.value) == "the file would run code when loaded (PyTorch's safe loader refused it)"
    assert not marker.exists() and not out.exists()


def test_wall_clock_limit_kills_the_child(tmp_path: Path) -> None:
    source = tmp_path / "ok.pt"
    source.write_bytes(payloads.saved(payloads.small_hypernet()))
    quick = IntakeLimits(sandbox_wall_s=0.05)  # far less than importing torch takes
    with pytest.raises(IntakeRefused) as info:
        run_sandbox(["convert", "--format", "pt", "--out", str(tmp_path / "out"), "--weight-cap", "100000"],
                    stdin_path=source, work_dir=tmp_path, limits=quick, fsize_bytes=1 << 20)
    assert str(info.value) == "reading the file took longer than 0.05 s; refused"
