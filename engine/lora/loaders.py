"""Reading LoRA files: the engine's safetensors-only loader, the intake validator, and the checker's reader.

Why three entry points: the worker must never unpickle (the design's rule), so its loader reads
safetensors and nothing else; the intake sandbox unpickles ``.pt`` files itself and hands us the tensors
(``lora_from_state_dict`` validates them before they are re-saved as safetensors); the shared parity
checker hands us fixture paths of either kind (``read_file_for_checker``, the one place that calls
``torch.load``, with ``weights_only=True``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.lora.errors import LoraFormatError
from engine.lora.names import ModuleTable
from engine.lora.network import DoraMode, LoraNetwork, Precision
from engine.lora.parse import parse_state_dict

__all__ = ["load_lora_safetensors", "lora_from_state_dict", "read_file_for_checker"]


def _stem(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


def load_lora_safetensors(path: str | os.PathLike[str], *, name: str | None = None, key: str = "",
                          table: ModuleTable | None = None, dora: DoraMode = "apply",
                          precision: Precision = "float32") -> LoraNetwork:
    """The engine's loader: one ``.safetensors`` LoRA file (no pickle, whatever the name says).

    ``key`` should be the file's content hash (the registry's name for it): it identifies the network in
    conditioning-cache keys.  ``table`` is the model's module table (``hooks.table_for_models``);
    without one, SD1.x's layout is assumed.
    """
    name = name or _stem(path)
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        state = load_file(os.fspath(path))
    except Exception as exc:  # safetensors raises its own error types for a malformed header or body
        raise LoraFormatError(f"{name}: not a readable safetensors file ({type(exc).__name__})") from None
    return parse_state_dict(state, name, table=table, dora=dora, precision=precision, key=key, metadata=metadata)


def lora_from_state_dict(state: Mapping[str, torch.Tensor], name: str, *, table: ModuleTable | None = None,
                         dora: DoraMode = "apply", metadata: Mapping[str, str] | None = None) -> LoraNetwork:
    """Validate what the intake sandbox read from an uploaded file; raise :class:`LoraFormatError` to refuse.

    Beyond A1111's own refusals (``parse_state_dict``) intake also refuses a file with non-finite values and
    a file that would change nothing (every key ignored — e.g. diffusers/PEFT ``lora_A``/``lora_B`` names,
    which A1111 does not read at all).
    """
    if not isinstance(state, Mapping):
        raise LoraFormatError(f"{name}: not a dict of tensors (got {type(state).__name__})")
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise LoraFormatError(f"{name}: {key} holds NaN or infinite values")
    network = parse_state_dict(state, name, table=table, dora=dora, metadata=metadata)
    if not network.modules:
        example = f", e.g. {network.ignored_keys[0]}" if network.ignored_keys else ""
        raise LoraFormatError(f"{name}: no key names a module of the model ({len(network.ignored_keys)} keys "
                              f"ignored{example}); A1111 would apply nothing")
    return network


def read_file_for_checker(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a ``.safetensors`` or ``.pt``/``.ckpt`` LoRA file.

    For the shared parity checker and the intake sandbox ONLY: ``.pt`` files are unpickled (with
    ``torch.load(weights_only=True)``), which production code paths never do.
    """
    path = os.fspath(path)
    if path.lower().endswith(".safetensors"):
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(path), metadata
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise LoraFormatError(f"{_stem(path)}: not a dict of tensors (got {type(obj).__name__})")
    return obj, {}
