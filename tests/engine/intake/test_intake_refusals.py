"""Every refusal: the exact one-line message, nothing written to the store, and no payload side effect.

Hostile files are built here at run time (tests/fixtures/malicious/payloads.py); code payloads would create a
marker file, so its absence proves they did not run.
"""

from __future__ import annotations

import builtins
import io
import logging
import os
import pickle
import random
import struct
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from engine.intake import IntakeLimits, IntakeRefused, ingest_file
from engine.intake.containers import pickle_globals
from tests.fixtures.malicious import payloads

GELU = payloads.FIXTURES / "zoo" / "pub_zoo_gelu.pt"
LIMITS = IntakeLimits(max_bytes=8 << 20, sandbox_memory_bytes=1024 << 20, sandbox_cpu_s=60, sandbox_wall_s=120)


def refused(data: bytes, store: Path, limits: IntakeLimits = LIMITS, filename: str = "model.pt") -> str:
    with pytest.raises(IntakeRefused) as info:
        ingest_file(data, filename=filename, store_dir=store, limits=limits)
    assert os.listdir(store) == []  # not even a temp folder
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_calling_os_system_is_refused_unread(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    store = tmp_path / "store"
    data = payloads.code_pickle(os.system, (payloads.marker_command(marker),), legacy=legacy)
    assert refused(data, store) == "the file would run code when loaded (it calls `posix.system`); refused unread"
    assert not marker.exists()


def test_pickle_calling_print_is_refused(tmp_path: Path) -> None:
    data = payloads.code_pickle(print, ("PWNED",))
    assert refused(data, tmp_path) == "the file would run code when loaded (it calls `builtins.print`); refused unread"


def test_pickle_calling_eval_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    store = tmp_path / "store"
    data = payloads.code_pickle(builtins.eval, (f"open({str(marker)!r}, 'w').close()",))
    assert refused(data, store) == "the file would run code when loaded (it calls `builtins.eval`); refused unread"
    assert not marker.exists()


def test_stack_global_reference_is_seen_too() -> None:
    # Protocol 4 names globals with STACK_GLOBAL (strings pushed first): the scan must still read them.
    assert pickle_globals(io.BytesIO(pickle.dumps(os.system, protocol=4))) == ["posix.system"]


def test_truncated_file(tmp_path: Path) -> None:
    data = GELU.read_bytes()
    assert refused(data[: len(data) // 2], tmp_path) == "the file is truncated or damaged (it is not a complete zip archive)"


def test_random_bytes(tmp_path: Path) -> None:
    data = random.Random(1234).randbytes(4096)
    assert refused(data, tmp_path) == "the file is neither a PyTorch .pt file nor a .safetensors file"


def test_zip_with_a_foreign_member(tmp_path: Path) -> None:
    data = payloads.with_extra_member(GELU.read_bytes(), "pub_zoo_gelu/evil.sh", b"rm -rf /\n")
    assert refused(data, tmp_path) == "the archive holds `pub_zoo_gelu/evil.sh`, which a PyTorch save never writes"


def test_zip_with_a_corrupted_record(tmp_path: Path) -> None:
    data = bytearray(GELU.read_bytes())
    with zipfile.ZipFile(GELU) as z:
        offset = z.getinfo("pub_zoo_gelu/data/0").header_offset
    name_len, extra_len = struct.unpack("<HH", data[offset + 26: offset + 30])  # the local header's own lengths
    data[offset + 30 + name_len + extra_len + 5] ^= 0xFF  # one byte of the weights
    assert refused(bytes(data), tmp_path) == "the file is damaged (archive member `pub_zoo_gelu/data/0` fails its checksum)"


def test_empty_file(tmp_path: Path) -> None:
    assert refused(b"", tmp_path) == "the file is empty"


def test_file_over_the_cap_is_refused_before_reading(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    small = IntakeLimits(max_bytes=32 << 10)
    with caplog.at_level(logging.INFO, logger="engine.intake"):
        assert refused(GELU.read_bytes(), tmp_path, small) == "the file is larger than the 32 KiB limit"
    assert "the file is larger than the 32 KiB limit" in caplog.text  # refusals are logged


def test_truncated_safetensors(tmp_path: Path) -> None:
    data = safetensors.torch.save({"w": torch.zeros(64)}, metadata={"format": "hypercord-hypernetwork"})
    assert refused(data[:-10], tmp_path, filename="x.safetensors") == (
        "the file is truncated (its safetensors tensors run past the end)")


# ---- these reach the sandbox child (a few seconds each) ------------------------------------------------------

def test_declared_tensor_far_larger_than_the_file(tmp_path: Path) -> None:
    data = payloads.oversized_view()
    assert refused(data, tmp_path) == (f"the file declares 74.5 GiB of weights but is only {len(data)} bytes long "
                                       "(damaged or hostile)")


def test_nan_weights(tmp_path: Path) -> None:
    data = payloads.saved(payloads.small_hypernet(fill=float("nan")))
    assert refused(data, tmp_path) == "not a usable hypernetwork: size 320 k: tensor 'linear.0.weight' contains NaN or Inf"


def test_unknown_activation(tmp_path: Path) -> None:
    data = (payloads.FIXTURES / "pub_err_unknown_activation.pt").read_bytes()
    assert refused(data, tmp_path) == ("not a usable hypernetwork: unsupported activation_func 'swishy' (A1111 accepts "
                                       "lower-case torch.nn activation names such as 'relu', 'swish', 'gelu')")


def test_size_no_unet_has(tmp_path: Path) -> None:
    data = payloads.saved(payloads.small_hypernet(sizes=(320, 333)))
    assert refused(data, tmp_path) == ("the file has size 333, which no Stable Diffusion UNet uses "
                                       "(expected 320, 384, 640, 768, 1024, 1280, 1536, 2048)")


def test_file_without_sizes_does_nothing(tmp_path: Path) -> None:
    data = payloads.saved({"layer_structure": [1, 2, 1], "activation_func": "relu"})
    assert refused(data, tmp_path) == "the file holds no weights (no sizes), so it would do nothing"


def test_safetensors_that_is_not_our_layout(tmp_path: Path) -> None:
    data = safetensors.torch.save({"lora_up.weight": torch.zeros(4, 4)})
    assert refused(data, tmp_path, filename="lora.safetensors") == (
        "not a usable hypernetwork: not a canonical hypernetwork file (format None)")


def test_huge_allocation_hits_the_sandbox_memory_limit(tmp_path: Path) -> None:
    # Legacy torch files allocate each storage at its declared size before reading it: 4 GiB here.
    data = payloads.huge_storage_legacy(1 << 30)
    assert len(data) < 4096
    assert refused(data, tmp_path) == "reading the file needed more than the 1024 MiB memory limit; refused"
