"""The sandbox child itself: its guards are on, the bot's secrets are closed to it, every way it ends is one line.

These call :func:`engine.intake.run_sandbox` directly, bypassing the parent's static checks, so the child's own
defences are what is tested.  One ``check`` child (module-scoped) serves the guard tests.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from engine.intake import IntakeLimits, IntakeRefused, run_sandbox
from engine.intake.children import _ending
from tests.fixtures.malicious import payloads

LIMITS = IntakeLimits(max_bytes=8 << 20, sandbox_memory_bytes=2048 << 20, sandbox_cpu_s=60, sandbox_wall_s=120)
SECRETS = ("config.toml", "discord_token", "hypercord.sqlite3")


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One ``check`` child, asked to open the bot's secrets (owner-only files) and one world-readable file."""
    bot_dir = tmp_path_factory.mktemp("bot")
    for name in (*SECRETS, "public.txt"):
        (bot_dir / name).write_text(f"secret-token-value in {name}")
        os.chmod(bot_dir / name, 0o644 if name == "public.txt" else 0o600)
    work = tmp_path_factory.mktemp("child")
    mp = pytest.MonkeyPatch()
    mp.setenv("DISCORD_TOKEN", "secret-token-value")
    mp.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    try:
        args = ["check", *(arg for name in (*SECRETS, "public.txt") for arg in ("--try-read", str(bot_dir / name)))]
        report = run_sandbox(args, stdin=None, work_dir=work, limits=LIMITS, fsize_bytes=1 << 20)
    finally:
        mp.undo()
    return report, bot_dir


def test_guards_are_active_and_the_environment_is_empty(probe: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, bot_dir = probe
    assert report["socket"] is True  # creating a socket raised
    assert report["os_system"] is True and report["subprocess"] is True
    assert report["file_write"] is True
    assert set(report["environment"]) <= {"PATH", "LC_ALL", "LC_CTYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                          "OPENBLAS_NUM_THREADS", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED"}
    limits = report["limits"]
    assert limits["RLIMIT_AS"] == 2048 << 20 and limits["RLIMIT_CPU"] == 60
    assert limits["RLIMIT_FSIZE"] == 1 << 20 and limits["RLIMIT_NOFILE"] <= 32 and limits["RLIMIT_CORE"] == 0
    assert report["no_new_privs"] is True
    # Python-level: nothing outside its folders opens, whoever owns it.
    assert set(report["reads"].values()) == {"Blocked"}
    # Kernel-level: with Landlock even a world-readable file elsewhere is closed (Linux 5.13+, not in every sandbox).
    public = report["reads_os_level"][str(bot_dir / "public.txt")]
    assert public == ("PermissionError" if report["landlock_abi"] > 0 else "readable")


@pytest.mark.skipif(os.geteuid() != 0, reason="the child changes user only when started as root")
def test_started_as_root_the_child_cannot_read_the_bots_secrets(probe: tuple[dict[str, Any], Path]) -> None:
    report, bot_dir = probe
    assert (report["uid"], report["gid"], report["groups"], report["uid_dropped"]) == (65534, 65534, [], True)
    for name in SECRETS:  # owner-only files: closed by the user change alone, before any Python-level hook
        assert report["reads_os_level"][str(bot_dir / name)] == "PermissionError"


def test_child_refuses_a_code_pickle_even_without_the_parent_scan(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pt"
    source.write_bytes(payloads.code_pickle(os.system, (payloads.marker_command(marker),)))
    with pytest.raises(IntakeRefused) as info:
        run_sandbox(["convert", "--format", "pt", "--weight-cap", str(source.stat().st_size)],
                    stdin=source, work_dir=tmp_path, limits=LIMITS, fsize_bytes=1 << 20)
    assert str(info.value) == ("the file would run code when loaded (it calls `posix.system`); refused unread, do not "
                               "load it anywhere else either")
    assert not marker.exists() and not (tmp_path / "canonical.safetensors").exists()


def test_wall_clock_limit_kills_the_child(tmp_path: Path) -> None:
    source = tmp_path / "ok.pt"
    source.write_bytes(payloads.saved(payloads.small_hypernet()))
    quick = IntakeLimits(sandbox_wall_s=0.05)  # far less than importing torch takes
    with pytest.raises(IntakeRefused) as info:
        run_sandbox(["convert", "--format", "pt", "--weight-cap", "100000"], stdin=source, work_dir=tmp_path,
                    limits=quick, fsize_bytes=1 << 20)
    assert str(info.value) == ("reading the file took longer than 0.05 s; a hypernetwork takes a few seconds, so the "
                               "file is damaged or hostile (or the server is overloaded: try again later)")


def test_a_child_killed_by_its_cpu_limit_says_so(tmp_path: Path) -> None:
    with pytest.raises(IntakeRefused) as info:  # importing torch alone takes more than a second of CPU
        run_sandbox(["check"], stdin=None, work_dir=tmp_path, limits=IntakeLimits(sandbox_cpu_s=1), fsize_bytes=1 << 20)
    assert str(info.value) == ("reading the file used more than the 1 s CPU limit (intake.sandbox_cpu_s); a "
                               "hypernetwork needs a few seconds, so the file is damaged or hostile")


@pytest.mark.parametrize(("rc", "message"), [
    (-signal.SIGSEGV, "reading the file crashed PyTorch's loader (SIGSEGV); the file is damaged or hostile, do not "
                      "load it anywhere else either"),
    (-signal.SIGABRT, "reading the file crashed PyTorch's loader (SIGABRT); the file is damaged or hostile, do not "
                      "load it anywhere else either"),
    (-signal.SIGKILL, "reading the file was stopped by the system, most likely for using too much memory; a "
                      "hypernetwork needs far less, so the file is damaged or hostile"),
    (-signal.SIGXFSZ, "reading the file produced more data than the file holds; it is damaged or hostile, refused"),
    (3, "reading the file needed more than the 2048 MiB memory limit (intake.sandbox_memory_mb); a hypernetwork "
        "needs far less, so the file is damaged or hostile"),
    (1, "the intake sandbox stopped unexpectedly (exit status 1); this is a problem on our side, the log has the "
        "details"),
])
def test_every_other_ending_of_a_child_is_one_line(rc: int, message: str) -> None:
    assert _ending(rc, {}, LIMITS) == message
