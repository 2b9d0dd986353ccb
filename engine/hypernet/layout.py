"""A1111 hypernetwork layout: metadata defaults, the activation table and the exact ``nn.Sequential`` A1111 builds.

Why a module of its own: the state-dict key numbers of a hypernetwork depend on every option (activation,
LayerNorm, ``activate_output``, the resolved dropout list), so the only safe way to read a file is to rebuild
A1111's module list exactly (``docs/hypernetwork-format.md`` §1.4-§1.6) and compare keys and shapes against the
file.  Modules are first built on the ``meta`` device, so a hostile ``layer_structure`` never allocates memory.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class HypernetFormatError(ValueError):
    """A hypernetwork A1111 could not use, or a corrupt/hostile file.  ``str(err)`` is one specific line."""


MAX_LAYERS = 64  # entries of layer_structure; real files have 3-5
MAX_TEXT = 65_536  # characters of a free-text metadata field
_DROPOUT_RATE = 0.3  # A1111's hard-coded rate for files that only say "use_dropout"

# Softmax-like activations built with dim=None normalise over dim 0 of a 3-D context, i.e. over the batch.
BATCH_DEPENDENT_ACTIVATIONS = frozenset({"softmax", "softmin", "logsoftmax", "softmax2d"})


def _activation_table() -> dict[str, type[nn.Module]]:
    """A1111's table: a few fixed names (``swish`` is Hardswish!) plus every torch activation class, lower-cased."""
    table: dict[str, type[nn.Module]] = {
        "linear": nn.Identity,
        "relu": nn.ReLU,
        "leakyrelu": nn.LeakyReLU,
        "elu": nn.ELU,
        "swish": nn.Hardswish,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    for cls_name, cls in inspect.getmembers(nn.modules.activation, inspect.isclass):
        if cls.__module__ == "torch.nn.modules.activation":
            table[cls_name.lower()] = cls
    return table


ACTIVATIONS: dict[str, type[nn.Module]] = _activation_table()


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def activation_problem(name: str) -> str | None:
    """Why A1111 cannot use activation ``name`` (None when it can).  Probed once per name."""
    cls = ACTIVATIONS.get(name)
    if cls is None:
        return (f"unsupported activation_func {_short(name)} (A1111 accepts lower-case torch.nn activation names "
                "such as 'relu', 'swish', 'gelu')")
    try:
        module = cls()
    except TypeError:
        return f"activation_func {name!r} needs constructor arguments; A1111 cannot build it"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out = module.eval()(torch.zeros(2, 3, 8))
    if not isinstance(out, torch.Tensor) or out.shape != (2, 3, 8):
        return f"activation_func {name!r} changes the layer width; A1111 fails on it when generating"
    return None


def _flag(obj: Mapping[Any, Any], key: str, default: bool) -> bool:
    """A1111 reads these with ``dict.get(key, default)`` and tests truthiness; accept bool, 0/1 and None."""
    if key not in obj:
        return default
    value = obj[key]
    if value is None or isinstance(value, bool) or (type(value) is int and value in (0, 1)):
        return bool(value)
    raise HypernetFormatError(f"metadata {key!r} must be true/false, got {type(value).__name__}")


def _text(obj: Mapping[Any, Any], key: str, default: str | None, limit: int = 4096) -> str | None:
    value = obj.get(key, default)
    if value is not None and not isinstance(value, str):
        raise HypernetFormatError(f"metadata {key!r} must be a string or empty, got {type(value).__name__}")
    if value is not None and len(value) > limit:
        raise HypernetFormatError(f"metadata {key!r} is too long ({len(value)} characters, limit {limit})")
    return value


def _numbers(value: object, key: str) -> list[int | float]:
    if not isinstance(value, (list, tuple)):
        raise HypernetFormatError(f"metadata {key!r} must be a list of numbers, got {type(value).__name__}")
    if len(value) > MAX_LAYERS:
        raise HypernetFormatError(f"metadata {key!r} has {len(value)} entries (limit {MAX_LAYERS})")
    out: list[int | float] = []
    for i, item in enumerate(value):
        if type(item) not in (int, float) or not math.isfinite(item):
            raise HypernetFormatError(f"metadata {key}[{i}] must be a finite number, got {_short(item)}")
        out.append(item)
    return out


def resolve_metadata(obj: Mapping[Any, Any], default_name: str) -> dict[str, Any]:
    """Return the options A1111 resolves on load (its defaults for old files included), validated.

    Keys use A1111's attribute names: ``add_layer_norm`` (file key ``is_layer_norm``) and ``weight_init``
    (file key ``weight_initialization``).  The activation name is only checked where a module is built.
    """
    for fork_key in ("skip_connection", "upsample_linear"):
        if obj.get(fork_key):
            raise HypernetFormatError(
                f"file made by a third-party extension ({fork_key!r} is set); stock A1111 cannot load it")
    layers = _numbers(obj.get("layer_structure", [1, 2, 1]), "layer_structure")
    if len(layers) < 2:
        raise HypernetFormatError(f"layer_structure needs at least 2 entries, got {layers}")
    if layers[0] != 1 or layers[-1] != 1:
        raise HypernetFormatError(f"layer_structure must start and end with 1, got {_short(layers)}")
    if any(x <= 0 for x in layers):
        raise HypernetFormatError(f"layer_structure entries must be positive, got {_short(layers)}")
    activation = obj.get("activation_func", None)
    if activation is not None and not isinstance(activation, str):
        raise HypernetFormatError(f"metadata 'activation_func' must be a string or empty, got {type(activation).__name__}")
    raw_dropout = obj.get("dropout_structure", None)
    dropout = None if raw_dropout is None else _numbers(raw_dropout, "dropout_structure")
    use_dropout = True if dropout is not None and any(dropout) else _flag(obj, "use_dropout", False)
    last_layer_dropout = _flag(obj, "last_layer_dropout", False)
    n = len(layers)
    if dropout is None:
        if not use_dropout:
            dropout = [0] * n
        else:
            dropout = [0] + [_DROPOUT_RATE] * (n - 3) + [_DROPOUT_RATE if last_layer_dropout else 0] + [0]
    if len(dropout) < n:
        raise HypernetFormatError(f"dropout_structure has {len(dropout)} entries, layer_structure needs {n}")
    for i in range(1, n):
        if dropout[i] > 0 and not dropout[i] < 1:
            raise HypernetFormatError(f"dropout_structure[{i}] = {dropout[i]}: dropout must be 0 or between 0 and 1")
    step = obj.get("step", 0)
    if step is not None and type(step) is not int:
        raise HypernetFormatError(f"metadata 'step' must be an integer, got {type(step).__name__}")
    return {
        "name": _text(obj, "name", default_name),
        "step": step,
        "layer_structure": layers,
        "activation_func": activation,
        "add_layer_norm": _flag(obj, "is_layer_norm", False),
        "weight_init": _text(obj, "weight_initialization", "Normal"),
        "sd_checkpoint": _text(obj, "sd_checkpoint", None),
        "sd_checkpoint_name": _text(obj, "sd_checkpoint_name", None),
        "activate_output": _flag(obj, "activate_output", True),
        "use_dropout": use_dropout,
        "dropout_structure": dropout,
        "last_layer_dropout": last_layer_dropout,
        "optional_info": _text(obj, "optional_info", None, limit=MAX_TEXT),
    }


# Resolved metadata key -> the key A1111's Hypernetwork.save writes (used by the canonical format).
FILE_KEYS = {
    "name": "name", "step": "step", "layer_structure": "layer_structure", "activation_func": "activation_func",
    "add_layer_norm": "is_layer_norm", "weight_init": "weight_initialization", "sd_checkpoint": "sd_checkpoint",
    "sd_checkpoint_name": "sd_checkpoint_name", "activate_output": "activate_output", "use_dropout": "use_dropout",
    "dropout_structure": "dropout_structure", "last_layer_dropout": "last_layer_dropout", "optional_info": "optional_info",
}


def build_sequential(dim: int, meta: Mapping[str, Any]) -> nn.Sequential:
    """A1111's module list for one size (§1.4), on the meta device: Linear -> activation -> LayerNorm -> Dropout."""
    layers = meta["layer_structure"]
    act, ln, ao = meta["activation_func"], meta["add_layer_norm"], meta["activate_output"]
    dropout = meta["dropout_structure"]
    widths = [int(dim * x) for x in layers]  # int() truncation, exactly like A1111
    if min(widths) < 1:
        raise HypernetFormatError(f"size {dim}: layer_structure {_short(layers)} gives a layer of width 0")
    n = len(layers)
    modules: list[nn.Module] = []
    with torch.device("meta"):
        for i in range(n - 1):
            modules.append(nn.Linear(widths[i], widths[i + 1]))
            last = i == n - 2
            if act is not None and act != "linear" and (not last or ao):
                problem = activation_problem(act)
                if problem:
                    raise HypernetFormatError(problem)
                modules.append(ACTIVATIONS[act]())
            if ln:
                modules.append(nn.LayerNorm(widths[i + 1]))
            if dropout[i + 1] > 0:
                modules.append(nn.Dropout(p=dropout[i + 1]))
    return nn.Sequential(*modules)


class HypernetModule(nn.Module):
    """One k or v transform: ``x + linear(x) * multiplier`` (A1111's HypernetworkModule in eval mode).

    ``linear`` is the exact Sequential of §1.4, so ``state_dict()`` keys are A1111's ``linear.<i>.weight``.
    """

    def __init__(self, linear: nn.Sequential, batch_dependent: bool = False) -> None:
        super().__init__()
        self.linear = linear
        self.batch_dependent = batch_dependent
        self.eval()
        self.requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch.  Softmax-like modules warn about the implicit dim on every call; silence that."""
        if self.batch_dependent:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self.linear(x)
        return self.linear(x)

    def forward(self, x: torch.Tensor, multiplier: float | torch.Tensor = 1.0) -> torch.Tensor:
        return x + self.delta(x) * multiplier
