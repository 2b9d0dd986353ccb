"""The sandbox child's LoRA path: a kohya / LyCORIS file (``.safetensors``, or ``.pt``/``.ckpt`` through the safe
loader) validated by the engine's own rules and written back as a plain safetensors LoRA.

Why the engine's validator (:func:`engine.lora.lora_from_state_dict`, against the SD 1.x module table): the worker
will parse the stored file with the same rules, so a file that passes here applies there.  Before it, the format and
family from the shapes (:func:`engine.lora.describe_shapes`): an SDXL LoRA, a diffusers/PEFT file A1111 would not
read, GLoRA/OFT modules are refused with that reason.  The canonical file keeps every tensor as stored (dtype
included) and the safetensors metadata (kohya's ``ss_output_name`` is A1111's alias).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping
from typing import Any

from engine.intake.base import IntakeRefused, MiB, damaged
from engine.intake.identify import lora_format_label, refusal
from engine.intake.kinds import Container, FileIdentity, FileKind
from engine.intake.sandbox.reading import (
    CANONICAL_NAME,
    check_weight_bytes,
    expect_kind,
    load_pt,
    read_stdin,
    stdin_as_memfd,
    tensor_bytes,
)

__all__ = ["convert", "verify", "warm_up"]

_NAME = "lora"  # the validator's messages start with the network's name; it is cut off again below
_SD1_CONTEXT = 768
_WARM_UP_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def _unusable(reason: object) -> IntakeRefused:
    text = " ".join(str(reason).removeprefix(f"{_NAME}: ").split())[:300]
    return IntakeRefused(f"the file is not a usable LoRA ({text}); use another version of it")


def _state_of(obj: object) -> dict[str, Any]:
    """The flat state dict of a loaded ``.pt`` (kohya's, or one nested under ``state_dict``)."""
    nested = obj.get("state_dict") if isinstance(obj, Mapping) else None
    state = nested if isinstance(nested, Mapping) else obj
    if not isinstance(state, Mapping):
        raise _unusable(f"it holds a {type(state).__name__}, not a dict of tensors")
    bad = next((key for key in state if not isinstance(key, str)), None)
    if bad is not None:
        raise _unusable(f"key {str(bad)[:40]!r} is not a name")
    return dict(state)


def summarize(state: Mapping[str, Any], metadata: Mapping[str, str], file_size: int) -> dict[str, Any]:
    """Validate a LoRA state dict; what the bot records (format, family, module counts, alias) and warnings."""
    import torch

    from engine.lora import LoraFormatError, compatibility_problem, describe_shapes, lora_from_state_dict

    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    info = describe_shapes(shapes, metadata)
    identity = FileIdentity(FileKind.LORA, file_size, label=lora_format_label(info.types), family=info.family)
    message = refusal(identity, FileKind.LORA)
    if message is not None:
        raise IntakeRefused(message, identity)
    problem = compatibility_problem(info, context_width=info.context_width or _SD1_CONTEXT)
    if problem is not None:
        raise IntakeRefused(f"the LoRA {problem}; use another version of it", identity)
    try:
        network = lora_from_state_dict(state, _NAME, metadata=metadata)
    except LoraFormatError as e:
        raise _unusable(e) from None
    te = sum(name.startswith("text_encoder.") for name in network.modules)
    warnings = []
    if network.ignored_keys:
        warnings.append(f"{len(network.ignored_keys)} of its keys name no layer of an SD 1.x model; A1111 ignores "
                        "them too")
    if "dora" in info.types:
        warnings.append("it holds DoRA magnitudes, which we apply and A1111 1.8 ignores, so its images differ from "
                        "A1111 1.8's")
    return {
        "label": identity.label, "family": info.family, "context_width": info.context_width,
        "text_width": info.text_width, "unet_modules": len(network.modules) - te, "te_modules": te,
        "ignored_keys": len(network.ignored_keys), "alias": metadata.get("ss_output_name") or None,
        "base_model": metadata.get("ss_sd_model_name") or None, "nbytes": int(network.nbytes), "warnings": warnings,
    }


def _read_safetensors(limit: int) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = stdin_as_memfd(limit)
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(path), metadata
    except (IntakeRefused, MemoryError):
        raise
    except Exception as e:
        print(f"safetensors failed: {type(e).__name__}: {str(e)[:2000]}", file=sys.stderr)
        raise IntakeRefused(damaged("its tensor data does not match its safetensors header")) from None


def _save(state: Mapping[str, Any], metadata: Mapping[str, str], path: str) -> None:
    """Every tensor as stored, each in its own contiguous memory (a pickle may share one storage between them)."""
    import torch
    from safetensors.torch import save_file

    tensors = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    save_file(tensors, path, metadata=dict(metadata) or None)


def convert(container: Container, weight_cap: int) -> dict[str, Any]:
    if container == "safetensors":
        state, metadata = _read_safetensors(weight_cap)
    else:
        data = read_stdin(weight_cap)
        obj = load_pt(data)
        del data
        expect_kind(obj, weight_cap, container, FileKind.LORA, missing="no LoRA or LyCORIS keys")
        state, metadata = _state_of(obj), {}
        check_weight_bytes(tensor_bytes(state.values()), weight_cap)
    summary = summarize(state, metadata, weight_cap)
    _save(state, metadata, CANONICAL_NAME)
    return summary


def verify(weight_cap: int) -> dict[str, Any]:
    state, metadata = _read_safetensors(weight_cap + 16 * MiB)
    return summarize(state, metadata, weight_cap)


def warm_up(work_dir: str) -> None:
    """Run every code path once on a tiny LoRA, so no import is left for after the lock-down."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    tiny = {f"{_WARM_UP_KEY}.lora_down.weight": torch.zeros(1, 768), f"{_WARM_UP_KEY}.lora_up.weight": torch.zeros(320, 1),
            f"{_WARM_UP_KEY}.alpha": torch.tensor(1.0)}
    for zipped in (True, False):
        buf = io.BytesIO()
        torch.save(tiny, buf, _use_new_zipfile_serialization=zipped)
        loaded = load_pt(buf.getvalue())
    expect_kind(loaded, 1 << 20, "pt", FileKind.LORA, missing="")
    state = _state_of(loaded)
    summarize(state, {"ss_output_name": "x"}, 1 << 20)
    path = os.path.join(work_dir, "warm-up.safetensors")
    _save(state, {"ss_output_name": "x"}, path)
    with safe_open(path, framework="pt") as handle:
        summarize(load_file(path), dict(handle.metadata() or {}), 1 << 20)
    os.remove(path)
