"""Mutated valid files through the whole intake: every result is a valid stored model or a one-line refusal.

Why: the crafted-container defects (RecursionError, OverflowError, RuntimeError from zipfile) were all "some other
exception" on a file a few bytes away from a valid one.  Hypothesis mutates a small valid ``.pt`` (zip and legacy)
and a Hypercord ``.safetensors`` where their structure lives (headers, zip directory, pickle) — truncations, flipped
bytes, inserted bytes, hostile tokens — and runs the real intake, sandbox included.  Bounded and derandomized, so
it takes the same few seconds every run; most mutants are refused in the bot process, a few reach the sandbox.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.hypernet import from_state_dict, load_canonical, save_canonical
from engine.intake import UNET_WIDTHS, IntakeLimits, IntakeRefused, ingest_file
from engine.intake.ingest import precheck
from tests.fixtures.malicious import payloads

LIMITS = IntakeLimits(max_bytes=1 << 20, sandbox_memory_bytes=1024 << 20, sandbox_cpu_s=30, sandbox_wall_s=60)
_SMALL = payloads.small_hypernet(layer_structure=(1, 0.0125, 1))
_ZIP = payloads.saved(_SMALL)
_LEGACY = payloads.saved(_SMALL, legacy=True)
_HOSTILE = (b"1e400", b"[" * 64, b"\xff" * 8, b"\0" * 8, b"-1", b'"', b"PK\x05\x06", b"\x93", b"}\x94" * 8)


def _canonical() -> bytes:
    """The Hypercord file for the small hypernetwork (our own dict, so it is built here, not through intake)."""
    folder = Path(tempfile.mkdtemp())
    try:
        save_canonical(from_state_dict(_SMALL, "base"), folder / "base.safetensors")
        return (folder / "base.safetensors").read_bytes()
    finally:
        shutil.rmtree(folder)


BASES = {"zip": _ZIP, "legacy": _LEGACY, "safetensors": _canonical()}


@st.composite
def mutants(draw: st.DrawFn, bases: dict[str, bytes]) -> bytes:
    """One valid file changed where its structure lives: the first 512 bytes, or (zip) its directory at the end."""
    name = draw(st.sampled_from(sorted(bases)))
    data = bytearray(bases[name])
    region = [(0, min(len(data), 512))] + ([(max(len(data) - 400, 0), len(data))] if name == "zip" else [])
    start, end = draw(st.sampled_from(region))
    at = draw(st.integers(start, end - 1))
    how = draw(st.sampled_from(["truncate", "flip", "insert", "token"]))
    if how == "truncate":
        return bytes(data[:at])
    if how == "flip":
        data[at] ^= draw(st.integers(1, 255))
    elif how == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    else:
        token = draw(st.sampled_from(_HOSTILE))
        data[at: at + len(token)] = token
    return bytes(data)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The system temp folder pointed at an empty folder of this test's own (the children's folders go there when
    the tests run as root; it must stay reachable for the child's user, hence in /tmp and not 0700).  Made after
    ``tmp_path``, which would otherwise be made inside it."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-tmp-"))
    folder.chmod(0o711)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def _clear(message: str) -> None:
    assert message and "\n" not in message and len(message) <= 500
    assert "on our side" not in message and "Traceback" not in message, message


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(data=st.data())
def test_the_bot_side_checks_refuse_in_one_line_or_pass_the_file_on(data: st.DataObject) -> None:
    mutant = data.draw(mutants(BASES))
    try:
        container = precheck(io.BytesIO(mutant), len(mutant))
    except IntakeRefused as error:
        _clear(str(error))
    else:
        assert container in ("pt", "pt-legacy", "safetensors")


def test_mutated_files_through_the_sandbox_are_stored_valid_or_refused(private_tmp: Path, tmp_path: Path) -> None:
    seen = {"stored": 0, "refused": 0}

    @settings(max_examples=12, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(data=mutants(BASES))
    def check(data: bytes) -> None:
        store = Path(tempfile.mkdtemp(dir=tmp_path))
        try:
            result = ingest_file(data, filename="mutant.pt", store_dir=store, limits=LIMITS)
        except IntakeRefused as error:
            _clear(str(error))
            assert os.listdir(store) == []
            seen["refused"] += 1
        else:
            assert os.listdir(store) == [f"{result.sha256}.safetensors"]
            stored = load_canonical(store / f"{result.sha256}.safetensors")
            assert tuple(stored.sizes) == result.sizes and set(result.sizes) <= UNET_WIDTHS
            seen["stored"] += 1
        finally:
            shutil.rmtree(store)
        assert os.listdir(private_tmp) == []

    check()
    assert seen["refused"] > 0 and sum(seen.values()) == 12
