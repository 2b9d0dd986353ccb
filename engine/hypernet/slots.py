"""Hypernets as stacked per-row tensors ("slots"): one set of batched matmuls per stage, whatever the nets.

Why: a UNet batch mixes users, each with their own hypernet chain.  Looping over the distinct nets makes the
kernel count of every attention layer grow with the number of nets (and puts Python decisions inside the step
loop, which ``torch.compile`` and CUDA graphs cannot keep).  Instead, the nets of one *family* (same layer
sequence and activation) are stacked row by row into fixed tensors, and one stage applies them all:

    h = x;  for each layer: h = baddbmm(bias[row], h, weightᵀ[row]) -> activation -> LayerNorm
    x' = x + (h * multiplier[row])

k rows and v rows are stacked too (``2·rows`` batch entries), so one ``bmm`` serves both.  Exactness:

* a row outside the stage has zero weights and multiplier 0: ``x + act(0)·0·… * 0`` is ``x`` exactly (every
  allowed activation is finite at 0);
* a net narrower than the stage's hidden capacity is zero-padded: padded units get pre-activation 0, and their
  outgoing weights are 0, so they add exact zeros (the sums are the same up to the matmul's reduction order);
* LayerNorm normalises over the hidden width, so padding would change it: LayerNorm families carry their exact
  widths in the family key and are never padded;
* dropout is the identity in eval mode (A1111 generates in eval mode), so it is left out.

Not foldable (the caller keeps today's exact per-group path): softmax-family activations (A1111 normalises them
over the batch, so a row depends on which rows it is computed with) and activations with parameters (PReLU).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.hypernet.layout import HypernetModule, build_sequential

__all__ = [
    "ELEMENTWISE_ACTIVATIONS",
    "SlotFamily",
    "StageBuffers",
    "family_for_metadata",
    "family_of",
    "module_widths",
    "widens",
]

#: Parameter-free activations that act element by element (so padding and stacking rows are exact).
ELEMENTWISE_ACTIVATIONS = frozenset({
    "Identity", "ReLU", "ReLU6", "LeakyReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish", "Hardswish",
    "Hardsigmoid", "Hardtanh", "Hardshrink", "Softshrink", "Tanhshrink", "Softsign", "Softplus", "Sigmoid",
    "LogSigmoid", "Tanh", "RReLU",
})

Op = tuple[Any, ...]  # ("linear",) | ("act", class name, extra_repr) | ("norm", width, eps)


@dataclass(frozen=True, slots=True)
class SlotFamily:
    """What nets must share to be stacked in one stage at one size: the sequence of operations.

    ``ops`` holds ``("linear",)``, ``("act", class_name, extra_repr)`` and ``("norm", width, eps)`` in A1111's order
    (Linear -> activation -> LayerNorm per layer; dropout left out).  Linear widths are not part of the key (they are
    padded to the stage's capacity) except where a LayerNorm pins them.
    """

    ops: tuple[Op, ...]

    @property
    def linear_count(self) -> int:
        return sum(1 for op in self.ops if op[0] == "linear")

    def pinned_widths(self) -> dict[int, int]:
        """Hidden layer index -> the width a LayerNorm after it requires."""
        out, layer = {}, -1
        for op in self.ops:
            if op[0] == "linear":
                layer += 1
            elif op[0] == "norm":
                out[layer] = int(op[1])
        return out

    def __str__(self) -> str:
        names = [op[1] if op[0] == "act" else ("LN" if op[0] == "norm" else "Linear") for op in self.ops]
        return "-".join(names)


def family_of(module: HypernetModule) -> SlotFamily | None:
    """The family of one k or v module, or None when it cannot be stacked exactly (see the module docstring)."""
    if module.batch_dependent:
        return None
    ops: list[Op] = []
    for layer in module.linear:
        if isinstance(layer, nn.Linear):
            if layer.bias is None:
                return None
            ops.append(("linear",))
        elif isinstance(layer, nn.LayerNorm):
            if layer.weight is None or layer.bias is None or len(layer.normalized_shape) != 1:
                return None
            ops.append(("norm", int(layer.normalized_shape[0]), float(layer.eps)))
        elif isinstance(layer, nn.Dropout):
            continue  # identity in eval mode
        elif _stock_activation(layer):
            ops.append(("act", type(layer).__name__, layer.extra_repr()))
        else:
            return None
    return SlotFamily(tuple(ops))


def family_for_metadata(meta: Mapping[str, Any], dim: int) -> SlotFamily | None:
    """The family a net with A1111 metadata ``meta`` would have at ``dim`` (built on the meta device, no weights):
    for warming up compiled graphs before any such net was loaded."""
    return family_of(HypernetModule(build_sequential(dim, meta)))


def module_widths(module: HypernetModule) -> tuple[int, ...]:
    """The hidden widths of a module (output widths of every Linear but the last)."""
    outs = [layer.out_features for layer in module.linear if isinstance(layer, nn.Linear)]
    return tuple(outs[:-1])


def widens(work: torch.dtype, out: torch.dtype) -> bool:
    """True when every ``out`` value is exactly representable in ``work`` (the round trip out -> work -> out is exact)."""
    if work == out:
        return True
    if not (work.is_floating_point and out.is_floating_point):
        return False
    w, o = torch.finfo(work), torch.finfo(out)
    return w.bits >= o.bits and w.eps <= o.eps and w.max >= o.max


def _stock_activation(layer: nn.Module) -> bool:
    """An element-wise, parameter-free activation built with its defaults (as A1111 builds every activation)."""
    name = type(layer).__name__
    if name not in ELEMENTWISE_ACTIVATIONS or any(True for _ in layer.parameters()) or layer.training:
        return False
    return _activation(name).extra_repr() == layer.extra_repr()


@functools.cache
def _activation(name: str) -> nn.Module:
    """One shared, stateless (eval-mode) instance per activation: a stable identity for compiled graphs."""
    return getattr(nn, name)().eval()


class StageBuffers:
    """One stage at one size: the stacked weights of ``rows`` rows (k rows first, then v rows), fixed tensors.

    ``hidden`` are the hidden-layer capacities.  Rows start empty (zeros, multiplier 0 = identity).  ``load_row``
    copies a net's k/v modules into a row (``copy_``: the tensors keep their addresses), ``clear_row`` empties it.
    ``rows_index`` (eager use only) restricts the stage to some rows of the batch: ``apply`` then gathers them.
    """

    def __init__(self, family: SlotFamily, dim: int, hidden: Sequence[int], rows: int, device: torch.device | str,
                 dtype: torch.dtype, rows_index: torch.Tensor | None = None) -> None:
        if len(hidden) != family.linear_count - 1:
            raise ValueError(f"family {family} needs {family.linear_count - 1} hidden widths, got {list(hidden)}")
        for layer, width in family.pinned_widths().items():
            if layer < len(hidden) and hidden[layer] != width:
                raise ValueError(f"family {family}: hidden layer {layer} must be {width} wide, got {hidden[layer]}")
        self.family = family
        self.dim = dim
        self.hidden = tuple(int(h) for h in hidden)
        self.rows = rows
        self.dtype = dtype
        self.rows_index = rows_index
        widths = [dim, *self.hidden, dim]
        entries = 2 * rows
        # [entries, out, in], as nn.Linear stores it: baddbmm over its transposed view matches F.linear row by row
        self.weights = [torch.zeros(entries, widths[i + 1], widths[i], device=device, dtype=dtype)
                        for i in range(len(widths) - 1)]
        self.biases = [torch.zeros(entries, 1, widths[i + 1], device=device, dtype=dtype) for i in range(len(widths) - 1)]
        self.norms = [(torch.zeros(entries, 1, op[1], device=device, dtype=dtype),
                       torch.zeros(entries, 1, op[1], device=device, dtype=dtype)) for op in family.ops if op[0] == "norm"]
        self.activations = [_activation(op[1]) for op in family.ops if op[0] == "act"]
        self.mult = torch.zeros(entries, 1, 1, device=device, dtype=torch.float32)
        self.active = torch.zeros(entries, 1, 1, device=device, dtype=torch.bool)

    def tensors(self) -> list[torch.Tensor]:
        """Every buffer (to mark static addresses for CUDA graphs)."""
        return [*self.weights, *self.biases, *(t for pair in self.norms for t in pair), self.mult, self.active]

    def fits(self, module: HypernetModule) -> bool:
        """Whether ``module`` (of this stage's family) fits the hidden capacities."""
        return all(w <= c for w, c in zip(module_widths(module), self.hidden, strict=True))

    def load_row(self, row: int, pair: tuple[HypernetModule, HypernetModule], multiplier: float) -> None:
        """Copy a net's (k, v) modules into ``row``; padding stays zero."""
        for entry, module in ((row, pair[0]), (self.rows + row, pair[1])):
            linears = [layer for layer in module.linear if isinstance(layer, nn.Linear)]
            norms = [layer for layer in module.linear if isinstance(layer, nn.LayerNorm)]
            for i, layer in enumerate(linears):
                w, b = self.weights[i][entry], self.biases[i][entry]
                w.zero_()
                b.zero_()
                w[:layer.out_features, :layer.in_features].copy_(layer.weight.detach())
                b[0, :layer.out_features].copy_(layer.bias.detach())
            for (nw, nb), layer in zip(self.norms, norms, strict=True):
                nw[entry, 0].copy_(layer.weight.detach())
                nb[entry, 0].copy_(layer.bias.detach())
        self.set_multiplier(row, multiplier)

    def set_multiplier(self, row: int, multiplier: float) -> None:
        self.mult[row].fill_(multiplier)
        self.mult[self.rows + row].fill_(multiplier)
        self.active[row].fill_(multiplier != 0.0)
        self.active[self.rows + row].fill_(multiplier != 0.0)

    def clear_row(self, row: int) -> None:
        for entry in (row, self.rows + row):
            for t in (*self.weights, *self.biases, *(t for pair in self.norms for t in pair)):
                t[entry].zero_()
        self.set_multiplier(row, 0.0)

    def delta(self, kv: torch.Tensor) -> torch.Tensor:
        """The residual branch for stacked ``kv`` (``[2·rows, tokens, dim]`` in the stage dtype)."""
        h = kv
        linear = act = norm = 0
        for op in self.family.ops:
            if op[0] == "linear":
                h = torch.baddbmm(self.biases[linear], h, self.weights[linear].transpose(1, 2))
                linear += 1
            elif op[0] == "act":
                h = self.activations[act](h)
                act += 1
            else:
                weight, bias = self.norms[norm]
                h = torch.addcmul(bias, F.layer_norm(h, (op[1],), None, None, op[2]), weight)
                norm += 1
        return h

    def apply(self, kv: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """``kv + delta(kv) * multiplier`` per row, computed in the stage dtype and returned in ``out_dtype``.

        Rows outside the stage come back exactly as they went in: multiplier 0 where the round trip through the
        stage dtype is exact, an explicit selection where it is not (a stage narrower than the context).
        """
        x = kv if self.rows_index is None else kv.index_select(0, self.rows_index)
        work = x.to(self.dtype)
        new = (work + (self.delta(work) * self.mult).to(self.dtype)).to(out_dtype)
        if not widens(self.dtype, out_dtype):
            new = torch.where(self.active, new, x)
        if self.rows_index is None:
            return new
        return kv.index_copy(0, self.rows_index, new)
