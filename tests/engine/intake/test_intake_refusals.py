"""Every refusal: the exact one-line message, nothing written to the store, and no payload side effect.

Hostile files are built here at run time (tests/fixtures/malicious/payloads.py); code payloads would create a
marker file, so its absence proves they did not run.  The first part is refused in the bot process (fast, and
bounded: the crafted containers below once raised RecursionError, OverflowError or RuntimeError, or cost the bot
hundreds of MB); the last part reaches the sandbox child (a second or two each).
"""

from __future__ import annotations

import builtins
import io
import logging
import os
import pickle
import random
import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from engine.intake import FileKind, IntakeLimits, IntakeRefused, ingest_file
from engine.intake import containers as containers_module
from engine.intake.pickles import pickle_globals
from tests.fixtures.malicious import payloads

GELU = payloads.FIXTURES / "zoo" / "pub_zoo_gelu.pt"
LIMITS = IntakeLimits(max_bytes=8 << 20, sandbox_memory_bytes=1024 << 20, sandbox_cpu_s=60, sandbox_wall_s=120)
RUNS_CODE = "the file would run code when loaded (it calls `{}`); refused unread, do not load it anywhere else either"
DAMAGED = "the file is damaged or incomplete ({}); download it again"


def refused(data: bytes | Path, store: Path, limits: IntakeLimits = LIMITS, filename: str = "model.pt") -> str:
    with pytest.raises(IntakeRefused) as info:
        ingest_file(data, filename=filename, store_dir=store, limits=limits)
    assert os.listdir(store) == [] if store.exists() else True  # not even a temp folder
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_calling_os_system_is_refused_unread(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    store = tmp_path / "store"
    data = payloads.code_pickle(os.system, (payloads.marker_command(marker),), legacy=legacy)
    assert refused(data, store) == RUNS_CODE.format("posix.system")
    assert not marker.exists()


def test_pickle_calling_print_or_eval_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    store = tmp_path / "store"
    assert refused(payloads.code_pickle(print, ("PWNED",)), store) == RUNS_CODE.format("builtins.print")
    data = payloads.code_pickle(builtins.eval, (f"open({str(marker)!r}, 'w').close()",))
    assert refused(data, store) == RUNS_CODE.format("builtins.eval")
    assert not marker.exists()


def test_stack_global_references_are_seen_directly_and_through_the_memo() -> None:
    assert pickle_globals(io.BytesIO(pickle.dumps(os.system, protocol=4))) == ["posix.system"]
    assert pickle_globals(io.BytesIO(payloads.stack_global_pickle("os", "system", via_memo=True))) == ["os.system"]


@pytest.mark.parametrize(("data", "message"), [
    (payloads.stack_global_pickle("os", "system", indirect=True),
     "the file's pickle names a Python object indirectly, which PyTorch never does and which cannot be checked without "
     "running it; refused unread"),
    (payloads.ext_pickle(),
     "the file's pickle uses the copyreg extension registry, which PyTorch never does; refused unread"),
    (payloads.global_pickle("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
     "the file holds PyTorch Lightning training state (`pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`), "
     "as a full model checkpoint does, not a hypernetwork; refused unread"),
    (payloads.global_pickle("numpy.core.multiarray", "_reconstruct"),
     "the file stores `numpy.core.multiarray._reconstruct` objects, which a hypernetwork never holds; refused unread "
     "(if it is one, save it again with A1111)"),
    (b"\x80\x02c" + b"o" * 5000 + b"\n",
     "the file's pickle data holds a text line far longer than PyTorch ever writes; refused unread (the file is "
     "damaged or was not saved by PyTorch)"),
    (b"\x80\x02}q\x00}\x94.", DAMAGED.format("its pickle data cannot be parsed")),  # BINPUT and MEMOIZE mixed
    (payloads.declared_string_pickle(1 << 40), DAMAGED.format("its pickle data cannot be parsed")),
    (payloads.memo_bomb(600_000),
     "the file's pickle has more than 500,000 instructions, far more than any model file; refused unread"),
], ids=["indirect", "ext", "lightning", "numpy", "long-line", "put-and-memoize", "huge-string", "too-many-ops"])
def test_unusual_pickles_say_what_they_do(tmp_path: Path, data: bytes, message: str) -> None:
    assert refused(data, tmp_path) == message


def test_the_pickle_scan_is_bounded_in_memory(tmp_path: Path) -> None:
    # One memo entry per MEMOIZE (50,000 here would be ~5 MB) and strings read whole (20 MB) are gone.
    bomb = io.BytesIO(payloads.memo_bomb(50_000))
    path = tmp_path / "long.pt"
    path.write_bytes(payloads.long_string_pickle(20 << 20))
    tracemalloc.start()
    try:
        assert pickle_globals(bomb) == []
        with path.open("rb") as f:
            assert pickle_globals(f) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_truncated_file(tmp_path: Path) -> None:
    data = GELU.read_bytes()
    assert refused(data[: len(data) // 2], tmp_path) == DAMAGED.format("it is not a complete zip archive")


def test_random_bytes(tmp_path: Path) -> None:
    data = random.Random(1234).randbytes(4096)
    assert refused(data, tmp_path) == ("the file is not a model file we know (neither a PyTorch .pt nor a .safetensors "
                                       "file); check that you picked the hypernetwork file itself")


def test_zip_with_a_foreign_member(tmp_path: Path) -> None:
    data = payloads.with_extra_member(GELU.read_bytes(), "pub_zoo_gelu/evil.sh", b"rm -rf /\n")
    assert refused(data, tmp_path) == ("the archive holds `pub_zoo_gelu/evil.sh`, which a PyTorch save never writes; "
                                       "refused unread (the file was altered or is not a model)")


def test_zip_with_a_corrupted_record(tmp_path: Path) -> None:
    data = bytearray(GELU.read_bytes())
    with zipfile.ZipFile(GELU) as z:
        offset = z.getinfo("pub_zoo_gelu/data/0").header_offset
    name_len, extra_len = struct.unpack("<HH", data[offset + 26: offset + 30])  # the local header's own lengths
    data[offset + 30 + name_len + extra_len + 5] ^= 0xFF  # one byte of the weights
    assert refused(bytes(data), tmp_path) == DAMAGED.format("archive member `pub_zoo_gelu/data/0` fails its checksum")


def test_zip_members_flagged_encrypted_or_compressed(tmp_path: Path) -> None:
    assert refused(payloads.flag_zip_members(GELU.read_bytes(), 0x1), tmp_path) == (
        "the archive member `pub_zoo_gelu/data.pkl` is encrypted, which PyTorch never does; refused unread (use the "
        "file as its author published it)")
    assert refused(payloads.recompressed(GELU.read_bytes()), tmp_path) == (
        "the archive member `pub_zoo_gelu/data.pkl` is compressed, which PyTorch never does; refused unread (use the "
        "file as its author published it)")


def test_zip_directory_and_pickle_sizes_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert refused(payloads.claim_directory_size(GELU.read_bytes(), 3 << 20), tmp_path) == DAMAGED.format(
        "its zip directory is larger than any model file's")
    monkeypatch.setattr(containers_module, "MAX_PICKLE_BYTES", 1024)  # GELU's data.pkl is 1.4 KiB
    assert refused(GELU.read_bytes(), tmp_path) == (
        "the file's pickle is 1.4 KiB, far larger than any model file's; refused unread")


def test_empty_file(tmp_path: Path) -> None:
    assert refused(b"", tmp_path) == "the file is empty (0 bytes); download it again"


def test_file_over_the_cap_is_refused_before_reading(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    small = IntakeLimits(max_bytes=32 << 10)
    expected = ("the file is 46.6 KiB, larger than the 32 KiB limit (intake.max_file_mb); hypernetworks are rarely "
                "over 100 MiB, so check that it is one")
    with caplog.at_level(logging.INFO, logger="engine.intake"):
        assert refused(GELU.read_bytes(), tmp_path, small) == expected
    assert expected in caplog.text  # refusals are logged


@pytest.mark.parametrize(("data", "problem"), [
    (safetensors.torch.save({"w": torch.zeros(64)}, metadata={"format": "hypercord-hypernetwork"})[:-10],
     "it declares 256 bytes of weights but only 246 bytes follow its header"),
    (payloads.deeply_nested_header(), "its safetensors header is nested deeper than the format allows"),
    (payloads.infinite_offsets_header(), "tensor `w` in its safetensors header has invalid fields"),
    (payloads.safetensors_with_header(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', b"\0" * 4),
     "tensor `w` in its safetensors header has the wrong byte size"),
    (payloads.safetensors_with_header(b'{"w": [1, 2', b"\0" * 4), "its safetensors header is not valid JSON"),
    (struct.pack("<Q", 5000) + b'{"w": 1}', "its safetensors header runs past the end of the file"),
], ids=["truncated", "deep", "1e400", "wrong-size", "bad-json", "header-past-end"])
def test_broken_safetensors(tmp_path: Path, data: bytes, problem: str) -> None:
    assert refused(data, tmp_path, filename="x.safetensors") == DAMAGED.format(problem)


def test_a_header_too_large_to_parse_is_named_from_its_first_keys(tmp_path: Path) -> None:
    # A LoRA with 9 MiB of training metadata: more than the bot parses, still named from the start of the header.
    key = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
    header = (f'{{"{key}": {{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, '
              f'"__metadata__": {{"ss_tag_frequency": "{"x" * (9 << 20)}"}}}}').encode()
    path = tmp_path / "big.safetensors"
    path.write_bytes(payloads.safetensors_with_header(header, b"\0" * 4))
    store = tmp_path / "store"
    with pytest.raises(IntakeRefused) as info:
        ingest_file(path, filename="big.safetensors", store_dir=store, limits=IntakeLimits(max_bytes=16 << 20))
    assert str(info.value) == "this is a LoRA, not a hypernetwork; add it as a LoRA instead"
    assert os.listdir(store) == []


# ---- these reach the sandbox child (a second or two each) ----------------------------------------------------

def test_declared_tensor_far_larger_than_the_file(tmp_path: Path) -> None:
    data = payloads.oversized_view()
    assert refused(data, tmp_path) == DAMAGED.format(f"it declares 74.5 GiB of weights but is only {len(data)} bytes "
                                                     "long")


def test_nan_weights(tmp_path: Path) -> None:
    data = payloads.saved(payloads.small_hypernet(fill=float("nan")))
    assert refused(data, tmp_path) == ("the file is not a usable hypernetwork (size 320 k: tensor 'linear.0.weight' "
                                       "contains NaN or Inf); use another version of it")


def test_unknown_activation(tmp_path: Path) -> None:
    data = (payloads.FIXTURES / "pub_err_unknown_activation.pt").read_bytes()
    assert refused(data, tmp_path) == ("the file is not a usable hypernetwork (unsupported activation_func 'swishy' "
                                       "(A1111 accepts lower-case torch.nn activation names such as 'relu', 'swish', "
                                       "'gelu')); use another version of it")


def test_size_no_unet_has(tmp_path: Path) -> None:
    data = payloads.saved(payloads.small_hypernet(sizes=(320, 333)))
    assert refused(data, tmp_path) == ("the file has size 333, which no Stable Diffusion UNet uses (expected 320, 384, "
                                       "640, 768, 1024, 1280, 1536, 2048); it cannot work with any model")


def test_file_without_sizes_does_nothing(tmp_path: Path) -> None:
    data = payloads.saved({"layer_structure": [1, 2, 1], "activation_func": "relu"})
    assert refused(data, tmp_path) == ("the file is a hypernetwork without any layers (it holds no weights), so it "
                                       "would change nothing; use another version of it")


def test_a_lora_saved_as_pt_is_named_by_the_sandbox(tmp_path: Path) -> None:
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    data = payloads.saved({f"{key}.lora_down.weight": torch.zeros(4, 768), f"{key}.lora_up.weight": torch.zeros(320, 4)})
    with pytest.raises(IntakeRefused) as info:
        ingest_file(data, filename="lora.pt", store_dir=tmp_path, limits=LIMITS)
    assert str(info.value) == "this is a LoRA for SD 1.x, not a hypernetwork; add it as a LoRA instead"
    assert info.value.identity is not None and info.value.identity.kind is FileKind.LORA
    assert (info.value.identity.container, info.value.identity.family) == ("pt", "sd1")
    assert os.listdir(tmp_path) == []


def test_huge_allocation_hits_the_sandbox_memory_limit(tmp_path: Path) -> None:
    # Legacy torch files allocate each storage at its declared size before reading it: 4 GiB here.
    data = payloads.huge_storage_legacy(1 << 30)
    assert len(data) < 4096
    assert refused(data, tmp_path) == ("reading the file needed more than the 1024 MiB memory limit "
                                       "(intake.sandbox_memory_mb); a hypernetwork needs far less, so the file is "
                                       "damaged or hostile")
