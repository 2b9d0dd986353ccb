"""A1111's LoRA family (LoRA, LoCon, LyCORIS LoHa / LoKr / (IA)³ / full / norm) for Hypercord's worker.

Why a package of our own: diffusers+PEFT is exact only for plain kohya LoRA and merges per model, while
one of our UNet batches mixes users with different LoRA lists.  Here files are parsed by A1111's rules
(``parse``), each module's update is A1111's (``modules``), and ``batch`` + ``hooks`` apply every batch row's own
list through removable forward hooks without touching the base weights.  docs/lora.md has the details.

The module-level ``load`` / ``targets`` / ``layer_delta`` / ``bias_delta`` are the shared parity checker's
interface (A1111 1.8 behaviour); the engine uses ``load_lora_safetensors``, ``build_lora_batch`` and
``lora_batch_active``.

``import engine.lora`` is torch-free: the pure "what is this file" classifier (:mod:`engine.lora.detect`) and the
error type are imported at once, so the bot's intake can name a LoRA file's format and model family without torch;
the torch-backed names are loaded on first access (PEP 562 ``__getattr__``), as :mod:`engine.conditioning` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from engine.lora.detect import LoraFileInfo, compatibility_problem, describe_shapes, read_safetensors_shapes
from engine.lora.errors import LoraFormatError

if TYPE_CHECKING:  # what the lazy names below are, for the type checker (importing them needs torch)
    from engine.lora.batch import LoraBatch, LoraUse, build_lora_batch, te_lora_key
    from engine.lora.hooks import activate, deactivate, lora_batch_active, table_for_models
    from engine.lora.interface import bias_delta, layer_delta, load, multiplier_for, targets
    from engine.lora.loaders import load_lora_safetensors, lora_from_state_dict
    from engine.lora.network import DORA_APPLIED_WARNING, DORA_IGNORED_WARNING, LoraNetwork
    from engine.lora.parse import parse_state_dict

_TORCH_BACKED = {
    "LoraBatch": "batch", "LoraUse": "batch", "build_lora_batch": "batch", "te_lora_key": "batch",
    "activate": "hooks", "deactivate": "hooks", "lora_batch_active": "hooks", "table_for_models": "hooks",
    "bias_delta": "interface", "layer_delta": "interface", "load": "interface", "multiplier_for": "interface",
    "targets": "interface",
    "load_lora_safetensors": "loaders", "lora_from_state_dict": "loaders",
    "DORA_APPLIED_WARNING": "network", "DORA_IGNORED_WARNING": "network", "LoraNetwork": "network",
    "parse_state_dict": "parse",
}

__all__ = [
    "DORA_APPLIED_WARNING",
    "DORA_IGNORED_WARNING",
    "LoraBatch",
    "LoraFileInfo",
    "LoraFormatError",
    "LoraNetwork",
    "LoraUse",
    "activate",
    "bias_delta",
    "build_lora_batch",
    "compatibility_problem",
    "deactivate",
    "describe_shapes",
    "layer_delta",
    "load",
    "load_lora_safetensors",
    "lora_batch_active",
    "lora_from_state_dict",
    "multiplier_for",
    "parse_state_dict",
    "read_safetensors_shapes",
    "table_for_models",
    "targets",
    "te_lora_key",
]


def __getattr__(name: str) -> object:
    if name not in _TORCH_BACKED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_TORCH_BACKED[name]}"), name)
    globals()[name] = value
    return value
