"""The update of one module for each LoRA-family type (docs/a1111-lora.md §4), written from the spec.

Why one class per type: each type has its own raw update ``U`` and its own notion of rank (``dim``), but
they all end the same way — ``ΔW = reshape(U, W.shape) * scale * multiplier`` and, for LyCORIS full and
norm, ``Δb = B * multiplier``.  :func:`unit_delta` is that common end (at multiplier 1, so a caller can
scale per batch row); the low-rank types also hand out their factors so a batch row can apply
``x @ downᵀ @ upᵀ`` without ever forming ``ΔW``.

An update whose element count differs from the weight's gives None: A1111 fails to add it and skips that
module (the rest of the file still applies).

DoRA (``dora_scale``, the magnitude vector ``M``): applied as the weight decomposition it is trained as,
``W' = M ⊙ (W + s·U) / ‖W + s·U‖`` with the norm taken per output row when ``M`` is shaped
``[out, 1, …]`` (LyCORIS' default, PEFT) and per input column when shaped ``[1, in, …]``; the unit update
is ``W' − W`` and a multiplier ``m`` gives ``W + m·(W' − W)`` like every other network (``m = 0`` is
exactly no change).  A1111 1.8 ignores ``M``; the parser drops it in that mode.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "FullModule",
    "HadaModule",
    "Ia3Module",
    "LokrModule",
    "LoraModule",
    "LowRankModule",
    "NormModule",
    "dora_delta",
    "unit_delta",
]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _fit(update: torch.Tensor, shape: Sequence[int]) -> torch.Tensor | None:
    """reshape(U, W.shape) when the element counts agree; None (A1111 skips the module) when they do not."""
    return update.reshape(tuple(shape)) if update.numel() == math.prod(shape) else None


def _product(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
    """``a @ b`` of a factor pair the parser guarantees (a LoKr side without its full matrix has both)."""
    if a is None or b is None:
        raise ValueError("a LoKr factor pair is incomplete")
    return a @ b


def _tucker(core: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``A[p,q,k,l] = Σ_a Σ_b core[a,b,k,l] · left[a,p] · right[b,q]`` (LoHa / LoKr Tucker cores)."""
    return torch.einsum("abkl,ap,bq->pqkl", core, _flat(left), _flat(right))


@dataclass(frozen=True, eq=False)
class LoraModule:
    """One module's weight set from a LoRA file, typed and resolved to a module of the model.

    ``key`` is A1111's layer name (for messages), ``target`` our module name, ``kind`` the target module's
    kind (``linear``, ``conv``, ``group_norm``, ``layer_norm``), ``scale`` the resolved
    ``scale`` / ``alpha / dim`` / 1.0, ``dora_scale`` the DoRA magnitude when it is to be applied.
    """

    key: str
    target: str
    kind: str
    scale: float
    dora_scale: torch.Tensor | None

    type_name = "?"

    @property
    def needs_weight(self) -> bool:
        """True when the update depends on the module's own weight ((IA)³, DoRA); the others use its shape."""
        return self.dora_scale is not None

    @property
    def device(self) -> torch.device:
        """Where this module's tensors live (and its update is computed)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                return value.device
        return torch.device("cpu")

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: v for f in dataclasses.fields(self) if isinstance(v := getattr(self, f.name), torch.Tensor)}

    @property
    def nbytes(self) -> int:
        """Bytes its tensors hold (the worker's cache is bounded in bytes)."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def to(self, device: torch.device | str) -> LoraModule:
        """The same module with its tensors on ``device`` (dtypes kept: the precision rules decided them)."""
        return dataclasses.replace(self, **{k: t.to(device) for k, t in self._tensors().items()})

    def update(self, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor | None:
        """``reshape(U, W.shape)`` before scale and multiplier, or None when it does not fit the weight."""
        raise NotImplementedError

    def bias_update(self, out_features: int | None = None) -> torch.Tensor | None:
        """``B`` (added to the bias times the multiplier, no scale); None for the types without one."""
        return None

    def factors(self, weight_shape: Sequence[int], dyn: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(down, up)`` with ``reshape(U, W.shape) == conv/linear(down) then up`` exactly, or None when the
        update is not low-rank in that form (then it must be materialised)."""
        return None


def _check_bias(bias: torch.Tensor | None, out_features: int | None) -> torch.Tensor | None:
    if bias is None or out_features is None or bias.numel() == out_features:
        return None if bias is None else bias.reshape(-1)
    return None


@dataclass(frozen=True, eq=False)
class LowRankModule(LoraModule):
    """kohya LoRA / LoCon, LyCORIS LoCon with a Tucker ``lora_mid``: ``U = flat(up) @ flat(down)``."""

    up: torch.Tensor
    down: torch.Tensor
    mid: torch.Tensor | None = None
    bias: torch.Tensor | None = None  # the rare weight-shaped ``bias`` PART, added to U before scaling

    type_name = "lora"

    def _up_down(self, dyn: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        up, down = _flat(self.up), _flat(self.down)
        if dyn is not None and self.mid is None:
            up, down = up[:, :dyn], down[:dyn]
        return up, down

    def update(self, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor | None:
        up, down = self._up_down(dyn)
        if self.mid is None:
            if up.shape[1] != down.shape[0]:
                return None
            u = up @ down
        else:
            if up.shape[1] != self.mid.shape[0] or self.mid.shape[1] != down.shape[0] or self.mid.ndim != 4:
                return None
            u = torch.einsum("in,npkl,pj->ijkl", up, self.mid, down)
        if self.bias is not None:
            if self.bias.numel() != u.numel():
                return None
            u = u.reshape(self.bias.shape) + self.bias
        return _fit(u, weight.shape)

    def factors(self, weight_shape: Sequence[int], dyn: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.bias is not None or self.dora_scale is not None:
            return None
        shape = tuple(weight_shape)
        up, down = self._up_down(dyn)
        if up.shape[0] != shape[0]:
            return None
        if self.mid is None:
            if up.shape[1] != down.shape[0] or down.shape[1] != math.prod(shape[1:]):
                return None
            return down.reshape(down.shape[0], *shape[1:]), up
        mid = self.mid
        if (len(shape) != 4 or mid.ndim != 4 or tuple(mid.shape[2:]) != shape[2:] or up.shape[1] != mid.shape[0]
                or mid.shape[1] != down.shape[0] or down.shape[1] != shape[1]):
            return None
        # conv(x, U) == up(conv(x, mid ∘ down)): fold the 1x1 down into the core's kernel
        return torch.einsum("npkl,pj->njkl", mid, down), up


@dataclass(frozen=True, eq=False)
class HadaModule(LoraModule):
    """LyCORIS LoHa: ``U = (w1_a @ w1_b) ⊙ (w2_a @ w2_b)``, each factor optionally through a Tucker core."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    type_name = "loha"

    def update(self, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor | None:
        a1 = _flat(self.w1_a) @ _flat(self.w1_b) if self.t1 is None else _tucker(self.t1, self.w1_a, self.w1_b)
        a2 = _flat(self.w2_a) @ _flat(self.w2_b) if self.t2 is None else _tucker(self.t2, self.w2_a, self.w2_b)
        if a1.shape != a2.shape:
            return None
        return _fit(a1 * a2, weight.shape)


@dataclass(frozen=True, eq=False)
class LokrModule(LoraModule):
    """LyCORIS LoKr: ``U = kron(w1, w2)``, each of ``w1``/``w2`` full or a product of two factors (``w2``
    optionally through a Tucker core)."""

    w1: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    type_name = "lokr"

    def update(self, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor | None:
        w1 = self.w1 if self.w1 is not None else _product(self.w1_a, self.w1_b)
        if self.w2 is not None:
            w2 = self.w2
        elif self.t2 is not None:
            w2 = _tucker(self.t2, self.w2_a, self.w2_b)
        else:
            w2 = self.w2_a @ _flat(self.w2_b)
        if w2.ndim == 4:
            w1 = w1.reshape(*w1.shape, 1, 1)
        if w1.ndim != w2.ndim:
            return None
        return _fit(torch.kron(w1.contiguous(), w2.contiguous()), weight.shape)


@dataclass(frozen=True, eq=False)
class Ia3Module(LoraModule):
    """(IA)³: ``U = W ⊙ w``, ``w`` broadcast along the input dim (``on_input``) or the output dim."""

    w: torch.Tensor
    on_input: bool

    type_name = "ia3"

    @property
    def needs_weight(self) -> bool:
        return True

    def update(self, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor | None:
        w = self.w[None, :] if self.on_input else self.w[:, None]
        try:
            u = weight.to(w.dtype) * w if w.is_floating_point() else weight * w
        except RuntimeError:  # the vector does not broadcast against this weight: A1111 fails, skips the module
            return None
        return u if u.shape == weight.shape else None


@dataclass(frozen=True, eq=False)
class FullModule(LoraModule):
    """LyCORIS full: ``U = diff``, ``B = diff_b``."""

    diff: torch.Tensor
    diff_b: torch.Tensor | None = None

    type_name = "full"

    def update(self, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor | None:
        return _fit(self.diff, weight.shape)

    def bias_update(self, out_features: int | None = None) -> torch.Tensor | None:
        return _check_bias(self.diff_b, out_features)


@dataclass(frozen=True, eq=False)
class NormModule(LoraModule):
    """LyCORIS norm (GroupNorm / LayerNorm affine parameters): ``U = w_norm``, ``B = b_norm``."""

    w_norm: torch.Tensor
    b_norm: torch.Tensor

    type_name = "norm"

    def update(self, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor | None:
        return _fit(self.w_norm, weight.shape)

    def bias_update(self, out_features: int | None = None) -> torch.Tensor | None:
        return _check_bias(self.b_norm, out_features)


def dora_delta(weight: torch.Tensor, scaled_update: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor | None:
    """``M ⊙ (W + ΔW) / ‖W + ΔW‖ − W`` in float32 (module docstring); None when ``M`` fits neither axis."""
    if weight.ndim < 2:
        return None
    out_dim, in_dim, rest = weight.shape[0], weight.shape[1], weight.ndim - 2
    merged = weight.float() + scaled_update.float()
    mag = magnitude.float()
    trailing_ones = all(d == 1 for d in mag.shape[1:])
    if (mag.ndim >= 2 and mag.shape[0] == out_dim and trailing_ones) or (mag.ndim == 1 and mag.numel() == out_dim):
        norm = merged.reshape(out_dim, -1).norm(dim=1).reshape(out_dim, 1, *[1] * rest)
        mag = mag.reshape(out_dim, 1, *[1] * rest)
    elif ((mag.ndim >= 2 and mag.shape[0] == 1 and mag.shape[1] == in_dim and all(d == 1 for d in mag.shape[2:]))
          or (mag.ndim == 1 and mag.numel() == in_dim)):
        norm = merged.transpose(0, 1).reshape(in_dim, -1).norm(dim=1).reshape(1, in_dim, *[1] * rest)
        mag = mag.reshape(1, in_dim, *[1] * rest)
    else:
        return None
    norm = norm.clamp_min(torch.finfo(torch.float32).tiny)
    return (merged * (mag / norm) - weight.float()).to(scaled_update.dtype)


def unit_delta(module: LoraModule, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor | None:
    """``reshape(U, W.shape) * scale`` (DoRA applied when the module carries a magnitude): the update at
    multiplier 1.  Multiplying it by ``m`` gives A1111's update bit for bit (same operations, same order)."""
    u = module.update(weight, dyn)
    if u is None:
        return None
    unit = u * module.scale
    if module.dora_scale is not None:
        return dora_delta(weight, unit, module.dora_scale)
    return unit
