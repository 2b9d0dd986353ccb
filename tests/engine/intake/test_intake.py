"""Intake of good files: sandboxed parse, canonical store by sha256, the same file twice is one model.

These run the real sandbox children (``python -m engine.intake.sandbox``), so each ingest costs a few seconds;
a module-scoped ingest is shared by the tests that only read its result.  That ingest reads a file the caller
opened, whose name is then given to another file: what is stored must be what was opened.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from engine.hypernet import load, load_canonical
from engine.intake import IntakeLimits, IntakeResult, ingest_bytes, ingest_file, purge_temp
from tests.fixtures.malicious import payloads

FIXTURE = payloads.FIXTURES / "zoo" / "pub_zoo_gelu.pt"
LIMITS = IntakeLimits(max_bytes=8 << 20, sandbox_memory_bytes=2048 << 20, sandbox_cpu_s=60, sandbox_wall_s=120)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IntakeResult]:
    store, folder = tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("folder")
    shutil.copy(FIXTURE, folder / "pub_zoo_gelu.pt")
    shutil.copy(payloads.FIXTURES / "zoo" / "pub_zoo_tanh.pt", folder / "swap.pt")
    with (folder / "pub_zoo_gelu.pt").open("rb") as opened:
        os.replace(folder / "swap.pt", folder / "pub_zoo_gelu.pt")  # the name now means another file
        return store, ingest_file(opened, filename="pub_zoo_gelu.pt", store_dir=store, limits=LIMITS)


def test_a1111_file_is_stored_canonically_under_its_sha256(stored: tuple[Path, IntakeResult]) -> None:
    store, result = stored
    digest = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    assert result.sha256 == digest and result.short_hash == digest[:10]
    assert sorted(os.listdir(store)) == [f"{digest}.safetensors"]  # no temp files left behind
    assert (result.file_name, result.file_size, result.container) == ("pub_zoo_gelu.pt", FIXTURE.stat().st_size, "pt")
    assert result.sizes == (320,)
    assert result.layer_structure == (1.0, 0.025, 1.0)
    assert result.activation == "gelu"  # the opened file's, not the tanh file now at its name
    assert result.base_model == "v1-5-pruned-emaonly [6ce0161689]"  # A1111's checkpoint title: name and hash
    assert result.suggested_name == "pub_zoo_gelu"
    assert result.already_stored is False and result.warnings == ()


def test_canonical_file_holds_exactly_the_original_weights(stored: tuple[Path, IntakeResult]) -> None:
    store, result = stored
    canonical = load_canonical(store / f"{result.sha256}.safetensors")
    original = load(FIXTURE)  # a trusted fixture, so reading it in the test process is fine
    assert canonical.sizes == original.sizes and canonical.metadata["activation_func"] == "gelu"
    assert result.nbytes == original.nbytes
    for dim, (k, v) in original.layers.items():
        for mine, theirs in zip(canonical.layers[dim], (k, v), strict=True):
            for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
                assert torch.equal(a, b), name


@pytest.mark.asyncio
async def test_same_file_again_is_one_model(stored: tuple[Path, IntakeResult]) -> None:
    store, first = stored
    again = await ingest_bytes(FIXTURE.read_bytes(), filename="renamed copy.pt", store_dir=store, limits=LIMITS)
    assert again.already_stored is True
    assert again.sha256 == first.sha256 and again.sizes == first.sizes and again.activation == first.activation
    assert again.file_name == "renamed copy.pt" and again.suggested_name is None  # a space: not a valid name
    assert sorted(os.listdir(store)) == [f"{first.sha256}.safetensors"]


def test_canonical_safetensors_input_is_accepted(stored: tuple[Path, IntakeResult], tmp_path: Path) -> None:
    store, first = stored
    data = (store / f"{first.sha256}.safetensors").read_bytes()
    result = ingest_file(data, filename="../../etc/gelu.safetensors", store_dir=tmp_path, limits=LIMITS)
    assert result.container == "safetensors"
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert (result.file_name, result.suggested_name) == ("gelu.safetensors", "gelu")
    assert (result.sizes, result.activation) == (first.sizes, first.activation)
    assert os.listdir(tmp_path) == [f"{result.sha256}.safetensors"]


def test_legacy_torch_format_with_two_sizes(tmp_path: Path) -> None:
    data = payloads.saved(payloads.small_hypernet(sizes=(320, 768), activation="softmax"), legacy=True)
    result = ingest_file(data, filename="old_style.pt", store_dir=tmp_path, limits=LIMITS)
    assert result.container == "pt-legacy"
    assert result.sizes == (320, 768) and result.activation == "softmax"
    assert result.warnings == ("activation 'softmax' normalises over the batch in A1111, so images in one batch "
                               "influence each other",)
    hn = load_canonical(tmp_path / f"{result.sha256}.safetensors")
    assert hn.sizes == [320, 768]


def test_limits_from_settings() -> None:
    from bot.config import IntakeSettings

    limits = IntakeLimits.from_settings(IntakeSettings(max_file_mb=100, sandbox_memory_mb=1024, sandbox_cpu_s=30))
    assert limits == IntakeLimits(max_bytes=100 << 20, sandbox_memory_bytes=1 << 30, sandbox_cpu_s=30, sandbox_wall_s=60)


def test_purge_temp_removes_only_intake_leftovers(tmp_path: Path) -> None:
    (tmp_path / ".intake-abc").mkdir()
    (tmp_path / ".intake-abc" / "source").write_bytes(b"x")
    keep = tmp_path / ("0" * 64 + ".safetensors")
    keep.write_bytes(b"y")
    assert purge_temp(tmp_path) == 1
    assert os.listdir(tmp_path) == [keep.name]
    shutil.rmtree(tmp_path)
