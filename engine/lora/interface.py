"""The functions the shared parity checker calls (shared/tools/check_lora.py), as A1111 1.8 computes them.

Why a separate module: these answer "what update does A1111 put on this one weight", module by module,
which is what parity is checked on; the engine itself never merges and uses ``batch``/``hooks`` instead.  They are
exact for A1111 at the fixture commit, so ``load`` ignores DoRA magnitudes (A1111 1.8 has no DoRA) and
computes non-LoRA types in the file's dtype; the engine's loader applies DoRA and computes in float32.
"""

from __future__ import annotations

import os

import torch

from engine.lora.loaders import read_file_for_checker
from engine.lora.modules import unit_delta
from engine.lora.names import normalize_name
from engine.lora.network import DoraMode, LoraNetwork, Precision
from engine.lora.parse import parse_state_dict

__all__ = ["bias_delta", "layer_delta", "load", "multiplier_for", "targets"]


def load(path: str | os.PathLike[str], *, dora: DoraMode = "ignore", precision: Precision = "a1111") -> LoraNetwork:
    """Read one LoRA file (``.safetensors``, or ``.pt``/``.ckpt`` through ``torch.load(weights_only=True)``).

    For the checker and the intake sandbox only — the engine reads safetensors with
    ``loaders.load_lora_safetensors``.  Defaults are A1111 1.8's behaviour (DoRA ignored); raises
    ``LoraFormatError`` where A1111 refuses the file.
    """
    state, metadata = read_file_for_checker(path)
    name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return parse_state_dict(state, name, dora=dora, precision=precision, metadata=metadata)


def targets(obj: LoraNetwork) -> set[str]:
    """Our names of the modules the file updates (a module it skips for a wrong shape may be listed)."""
    return obj.targets()


def multiplier_for(module_name: str, multiplier: float, te_multiplier: float | None = None) -> float:
    """The text-encoder multiplier for text-encoder modules (``multiplier`` when it is None), else ``multiplier``."""
    if normalize_name(module_name).startswith("text_encoder.") and te_multiplier is not None:
        return te_multiplier
    return multiplier


def layer_delta(obj: LoraNetwork, module_name: str, weight: torch.Tensor, multiplier: float,
                te_multiplier: float | None = None, dyn_dim: int | None = None) -> torch.Tensor | None:
    """A1111's additive update of ``module_name``'s weight (``weight``'s shape), or None when the file does not
    touch the module or A1111 skips it (an update that does not fit the weight).  ``weight`` is not modified."""
    module = obj.modules.get(normalize_name(module_name))
    if module is None:
        return None
    unit = unit_delta(module, weight, dyn_dim)
    return None if unit is None else unit * multiplier_for(module_name, multiplier, te_multiplier)


def bias_delta(obj: LoraNetwork, module_name: str, bias: torch.Tensor | None, multiplier: float,
               te_multiplier: float | None = None) -> torch.Tensor | None:
    """A1111's additive update of the module's bias (LyCORIS full ``diff_b``, norm ``b_norm``; no scale), or None."""
    module = obj.modules.get(normalize_name(module_name))
    if module is None:
        return None
    update = module.bias_update(None if bias is None else bias.numel())
    return None if update is None else update * multiplier_for(module_name, multiplier, te_multiplier)
