"""What a file is, and the exact refusal for each kind that is not a hypernetwork.

All of these are decided in the bot process from a bounded look at the file (no sandbox child), except the kinds
of pickled files, which the child reports after the safe load (``identify_loaded`` here; one end-to-end case is in
test_intake_refusals.py).  Every refusal goes through ``ingest_file``, which must leave nothing on disk.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from engine.intake import FileKind, IntakeLimits, IntakeRefused, identify, ingest_file
from engine.intake.identify import identify_loaded, refusal

LIMITS = IntakeLimits(max_bytes=8 << 20)
KOHYA_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def st(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return safetensors.torch.save(tensors, metadata=metadata)


def refused(data: bytes | Path, store: Path, filename: str = "model.safetensors") -> IntakeRefused:
    with pytest.raises(IntakeRefused) as info:
        ingest_file(data, filename=filename, store_dir=store, limits=LIMITS)
    assert os.listdir(store) == []  # not even a temp folder
    assert "\n" not in str(info.value)
    return info.value


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buf.getvalue()


PNG = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + bytes(64)

CASES = {
    "kohya LoRA for SD 1.x": (
        st({f"{KOHYA_K}.lora_down.weight": torch.zeros(4, 768), f"{KOHYA_K}.lora_up.weight": torch.zeros(320, 4),
            f"{KOHYA_K}.alpha": torch.tensor(4.0)}, {"ss_network_module": "networks.lora"}),
        FileKind.LORA,
        "this is a LoRA for SD 1.x, not a hypernetwork; add it as a LoRA instead"),
    "LyCORIS LoHa for SDXL": (
        st({"lora_te2_text_model_encoder_layers_0_mlp_fc1.hada_w1_a": torch.zeros(1280, 4),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.hada_w1_b": torch.zeros(4, 1280)}),
        FileKind.LORA,
        "this is a LyCORIS (LoHa) for SDXL, not a hypernetwork, and this bot runs only SD 1.x and SD 2.x checkpoints, "
        "which cannot use it; look for its SD 1.x version"),
    "textual-inversion embedding (safetensors)": (
        st({"emb_params": torch.zeros(2, 768)}),
        FileKind.EMBEDDING,
        "this is a textual-inversion embedding for SD 1.x, not a hypernetwork; add it as an embedding "
        "instead"),
    "SDXL embedding": (
        st({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}),
        FileKind.EMBEDDING,
        "this is a textual-inversion embedding for SDXL, not a hypernetwork, and this bot runs only SD 1.x and SD 2.x "
        "checkpoints, which cannot use it; look for its SD 1.x version"),
    "other safetensors": (
        st({"lora_up.weight": torch.zeros(4, 4), "w": torch.zeros(1)}),
        FileKind.SAFETENSORS_OTHER,
        "this .safetensors file holds 2 tensors but no hypernetwork (A1111 saves hypernetworks as .pt files); add the "
        "hypernetwork's .pt file instead"),
    "HTML page": (
        b"\n<!DOCTYPE html>\n<html lang=en><head><title>Model page</title></head><body>Download</body></html>\n",
        FileKind.WEB_PAGE,
        "the file is a web page (HTML), not a model file; download the model again with its direct download link"),
    "JSON error body": (
        b'{"error": "Not Found", "message": "Model version 12345\\nnot found"}',
        FileKind.ERROR_BODY,
        "the file is a website's error message (“Model version 12345 not found”), not a model file; download the "
        "model again with its direct download link"),
    "Git LFS pointer": (
        b"version https://git-lfs.github.com/spec/v1\noid sha256:1f2e3d\nsize 87654321\n",
        FileKind.LFS_POINTER,
        "the file is a Git LFS pointer, not the model itself; download the real file (on Hugging Face, the link with "
        "/resolve/ in it)"),
    "plain text with a terminal escape": (
        b"Access denied \x1b[31mfor you\x1b[0m",
        FileKind.TEXT,
        "the file is text (“Access denied for you”), not a model file; check that you picked the model file itself"),
    "PNG preview": (
        PNG, FileKind.IMAGE,
        "the file is a PNG image, not a model file; add the hypernetwork's .pt file, not its preview"),
    "zip holding a model": (
        zipped({"readme.txt": b"hi", "gelu/model.safetensors": b"x"}),
        FileKind.ARCHIVE,
        "the file is a zip archive holding `gelu/model.safetensors`, not a model file; unpack it and add the model "
        "file inside"),
    "random bytes": (
        bytes(range(256)) * 8, FileKind.UNKNOWN,
        "the file is not a model file we know (neither a PyTorch .pt nor a .safetensors file); check that you picked "
        "the hypernetwork file itself"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_kind_is_named_and_refused(tmp_path: Path, case: str) -> None:
    data, kind, message = CASES[case]
    error = refused(data, tmp_path)
    assert str(error) == message
    assert error.identity is not None and error.identity.kind is kind
    assert identify(io.BytesIO(data), len(data)).kind is kind


def sparse_checkpoint(path: Path, total: int) -> None:
    """A safetensors SD 2.x checkpoint of exactly ``total`` bytes whose one big tensor is a hole in the file."""
    header_len = 512  # padded with spaces, which the format allows
    data_len = total - 8 - header_len
    header = json.dumps({
        "cond_stage_model.model.ln_final.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "model.diffusion_model.input_blocks.0.0.weight": {"dtype": "U8", "shape": [data_len - 4],
                                                          "data_offsets": [4, data_len]},
    }).encode().ljust(header_len)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", header_len) + header)
        f.truncate(total)


def test_a_checkpoint_over_the_size_cap_is_still_named(tmp_path: Path) -> None:
    path = tmp_path / "sd2.safetensors"
    sparse_checkpoint(path, 2 << 30)
    assert path.stat().st_size == 2 << 30
    store = tmp_path / "store"
    store.mkdir()
    error = refused(path, store)
    assert str(error) == ("this is a Stable Diffusion checkpoint (2 GiB, SD 2.x), not a hypernetwork; the bot's owner "
                          "sets the checkpoint in the config (models.checkpoint), it cannot be added as a model")
    assert error.identity is not None and error.identity.kind is FileKind.CHECKPOINT


class _Shape:
    def __init__(self, *shape: int) -> None:
        self.shape = shape


@pytest.mark.parametrize(("obj", "kind", "message"), [
    ({"string_to_token": {"*": 265}, "string_to_param": {"*": _Shape(2, 768)}, "name": "emb", "step": 100},
     FileKind.EMBEDDING,
     "this is a textual-inversion embedding for SD 1.x, not a hypernetwork; add it as an embedding "
     "instead"),
    ({"epoch": 3, "state_dict": {"model.diffusion_model.out.2.weight": _Shape(4, 320, 3, 3),
                                 "cond_stage_model.transformer.text_model.final_layer_norm.weight": _Shape(768)}},
     FileKind.CHECKPOINT,
     "this is a Stable Diffusion checkpoint (1.5 KiB, SD 1.x), not a hypernetwork; the bot's owner sets the "
     "checkpoint in the config (models.checkpoint), it cannot be added as a model"),
    ({f"{KOHYA_K}.lora_down.weight": _Shape(8, 1024), f"{KOHYA_K}.lora_up.weight": _Shape(320, 8)},
     FileKind.LORA,
     "this is a LoRA for SD 2.x, not a hypernetwork; add it as a LoRA instead"),
])
def test_the_kind_of_a_loaded_pickle(obj: dict[str, object], kind: FileKind, message: str) -> None:
    identity = identify_loaded(obj, 1536, "pt")
    assert identity.kind is kind
    assert refusal(identity) == message


def test_a_hypernetwork_dict_and_other_objects() -> None:
    assert identify_loaded({320: ({}, {}), "layer_structure": [1, 2, 1]}, 10, "pt").kind is FileKind.HYPERNETWORK
    assert identify_loaded([1, 2, 3], 10, "pt-legacy").kind is FileKind.UNKNOWN
    assert identify_loaded({"step": 3}, 10, "pt").kind is FileKind.UNKNOWN
