"""A1111 hypernetworks, exactly: validated loading, the forward math and the parity seam.

The semantics are A1111's (``docs/hypernetwork-format.md`` in the shared docs): a hypernetwork is a dict of
sizes -> (k module, v module); each module maps the key/value *input* of an attention layer to
``x + mlp(x) * multiplier``; several hypernets chain in prompt order.

Why the split between :func:`load` and :func:`from_state_dict`: ``.pt`` files are pickles from users, so they are
only opened inside the intake sandbox (with ``weights_only=True``); intake hands the resulting dict to
:func:`from_state_dict`, which validates everything and rebuilds A1111's modules, and then stores the canonical
safetensors form (:mod:`engine.hypernet.canonical`).  The engine at runtime reads only canonical files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from engine.hypernet.layout import (
    BATCH_DEPENDENT_ACTIVATIONS,
    HypernetFormatError,
    HypernetModule,
    build_sequential,
    resolve_metadata,
)

__all__ = [
    "MAX_SIZES",
    "MAX_WEIGHT_BYTES",
    "HypernetFormatError",
    "HypernetModule",
    "Hypernetwork",
    "apply",
    "from_state_dict",
    "load",
]

MAX_WEIGHT_BYTES = 1 << 30  # real files are 20-170 MB; anything past 1 GiB is refused
MAX_SIZES = 32  # A1111's UI offers 5 sizes
MAX_SIZE = 16_384  # widest context any SD UNet feeds an attention layer is 2048
_OLD_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
             "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Hypernetwork:
    """One loaded hypernetwork.

    Attributes: ``name`` (the prompt name, i.e. the file stem, or the name stored in a canonical file),
    ``metadata`` (options as A1111 resolves them, see ``layout.resolve_metadata``), ``layers``
    (``{size: (k_module, v_module)}``, :class:`HypernetModule` in eval mode, no grad).  ``source`` keeps the
    tensors exactly as the file stored them (same dtype; shared with the modules when that is fp32) so the
    canonical file is bit-identical to the original.
    """

    def __init__(self, name: str, metadata: dict[str, Any], layers: dict[int, tuple[HypernetModule, HypernetModule]],
                 source: dict[str, torch.Tensor]) -> None:
        self.name = name
        self.metadata = metadata
        self.layers = layers
        self.source = source

    @property
    def sizes(self) -> list[int]:
        return sorted(self.layers)

    @property
    def nbytes(self) -> int:
        """Bytes held by the module parameters (in their current dtype/device)."""
        return sum(p.numel() * p.element_size() for pair in self.layers.values() for m in pair for p in m.parameters())

    @property
    def batch_dependent(self) -> bool:
        """True for softmax-like activations: A1111 normalises them over the batch, so rows influence each other."""
        return bool(self.layers) and self.metadata["activation_func"] in BATCH_DEPENDENT_ACTIVATIONS

    @property
    def device(self) -> torch.device:
        for k, _ in self.layers.values():
            return k.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for k, _ in self.layers.values():
            return k.dtype
        return torch.float32

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Hypernetwork:
        """Return a COPY on ``device`` in ``dtype``; ``self`` is never changed.

        Tensors that need no conversion are shared, not duplicated (weights are never modified in place).
        ``source`` is shared too, so a converted copy can still be saved canonically.
        """
        layers = {}
        for dim, pair in self.layers.items():
            new_pair = []
            for module in pair:
                seq = build_sequential(dim, self.metadata)
                state = {k: v.to(device=device, dtype=dtype) for k, v in module.linear.state_dict().items()}
                seq.load_state_dict(state, strict=True, assign=True)
                new_pair.append(HypernetModule(seq, module.batch_dependent))
            layers[dim] = (new_pair[0], new_pair[1])
        return Hypernetwork(self.name, self.metadata, layers, self.source)

    def __repr__(self) -> str:
        meta = self.metadata
        return (f"Hypernetwork({self.name!r}, sizes={self.sizes}, layer_structure={meta['layer_structure']}, "
                f"activation={meta['activation_func']!r}, {self.nbytes / 1e6:.1f} MB {self.dtype} on {self.device})")


def _tensor(t: object, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise HypernetFormatError(f"{where} is a {type(t).__name__}, expected a tensor")
    if t.layout != torch.strided or t.is_quantized or t.is_meta or t.dtype not in _FLOAT_DTYPES:
        raise HypernetFormatError(f"{where} has unsupported type {t.dtype}/{t.layout}; expected a float tensor")
    return t.detach().to("cpu")


def _state_dicts(obj: dict[Any, Any], sizes: list[int], max_bytes: int) -> dict[int, tuple[dict[str, torch.Tensor], ...]]:
    """Type-check every per-size entry, apply A1111's old-key renaming, and enforce the size budget."""
    out: dict[int, tuple[dict[str, torch.Tensor], ...]] = {}
    total = 0
    for dim in sizes:
        pair = obj[dim]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            got = f"{type(pair).__name__} of {len(pair)}" if isinstance(pair, (tuple, list)) else type(pair).__name__
            raise HypernetFormatError(f"size {dim}: expected a (k, v) pair of state dicts, got {got}")
        dicts = []
        for kv, sd in zip("kv", pair, strict=True):
            if not isinstance(sd, Mapping):
                raise HypernetFormatError(f"size {dim} {kv}: expected a state dict, got {type(sd).__name__}")
            if len(sd) > 1024:
                raise HypernetFormatError(f"size {dim} {kv}: {len(sd)} tensors is far too many for a hypernetwork")
            fixed: dict[str, torch.Tensor] = {}
            for key, t in sd.items():
                if not isinstance(key, str) or len(key) > 200:
                    raise HypernetFormatError(f"size {dim} {kv}: tensor key {key!r:.60} is not a short string")
                fixed[key] = _tensor(t, f"size {dim} {kv} tensor {key!r}")
                total += t.numel() * t.element_size()
                if total > max_bytes:
                    raise HypernetFormatError(f"hypernetwork too large: over {max_bytes / 2**20:.0f} MiB of weights")
            for old, new in _OLD_KEYS.items():  # NovelAI layout (A1111 fix_old_state_dict)
                if old in fixed:
                    fixed[new] = fixed.pop(old)
            dicts.append(fixed)
        out[dim] = tuple(dicts)
    return out


def _build_module(dim: int, kv: str, meta: dict[str, Any], sd: dict[str, torch.Tensor]) -> HypernetModule:
    """Rebuild A1111's module on meta, check keys/shapes/finiteness against the file, then adopt the tensors."""
    seq = build_sequential(dim, meta)
    expected = {f"linear.{k}": tuple(v.shape) for k, v in seq.state_dict(keep_vars=True).items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if unexpected or missing:
        what = f"unexpected tensor {unexpected[0]!r}" if unexpected else f"missing tensor {missing[0]!r}"
        raise HypernetFormatError(f"size {dim} {kv}: {what} for layer_structure {meta['layer_structure']}, "
                                  f"activation {meta['activation_func']!r} (A1111 cannot load this layout)")
    for key, shape in expected.items():
        got = tuple(sd[key].shape)
        if got != shape:
            raise HypernetFormatError(f"size {dim} {kv}: tensor {key!r} has shape {list(got)}, expected {list(shape)} "
                                      f"(layer_structure {meta['layer_structure']})")
    for key in expected:
        if not bool(torch.isfinite(sd[key]).all()):
            raise HypernetFormatError(f"size {dim} {kv}: tensor {key!r} contains NaN or Inf")
    # A1111 builds fp32 modules and copies the stored values in (fp16 files are upcast).
    seq.load_state_dict({k[len("linear."):]: sd[k].to(torch.float32) for k in expected}, strict=True, assign=True)
    return HypernetModule(seq, meta["activation_func"] in BATCH_DEPENDENT_ACTIVATIONS)


def from_state_dict(obj: object, name: str, *, max_bytes: int = MAX_WEIGHT_BYTES) -> Hypernetwork:
    """Validate the dict a hypernetwork file holds and build A1111's modules from it.

    ``name`` is the prompt name (file stem).  Raises :class:`HypernetFormatError` with a one-line reason for
    anything A1111 could not use and anything unsafe (bad sizes, shapes that do not chain, NaN/Inf, too big).
    Only keys of type exactly ``int`` are sizes, like A1111 (``"768"`` is ignored); unknown string keys are
    ignored; a dict without sizes is a valid no-op hypernetwork.
    """
    if not isinstance(obj, dict):
        raise HypernetFormatError(f"not a hypernetwork: the file holds a {type(obj).__name__}, expected a dict")
    sizes = sorted(k for k in obj if type(k) is int)
    if len(sizes) > MAX_SIZES:
        raise HypernetFormatError(f"hypernetwork has {len(sizes)} sizes (limit {MAX_SIZES})")
    for dim in sizes:
        if not 0 < dim <= MAX_SIZE:
            raise HypernetFormatError(f"size {dim} is not a context width between 1 and {MAX_SIZE}")
    meta = resolve_metadata(obj, name)
    state_dicts = _state_dicts(obj, sizes, max_bytes)
    layers: dict[int, tuple[HypernetModule, HypernetModule]] = {}
    source: dict[str, torch.Tensor] = {}
    for dim in sizes:
        pair = [_build_module(dim, kv, meta, sd) for kv, sd in zip("kv", state_dicts[dim], strict=True)]
        layers[dim] = (pair[0], pair[1])
        for kv, sd in zip("kv", state_dicts[dim], strict=True):
            for key, t in sd.items():
                source[f"{dim}.{kv}.{key}"] = t
    return Hypernetwork(name, meta, layers, source)


def load(path: str | os.PathLike[str]) -> Hypernetwork:
    """Read an A1111 ``.pt`` hypernetwork (safe unpickling only) and validate it; the name is the file stem.

    For the intake sandbox and the parity check only: the engine reads canonical files (:func:`load_canonical`).
    """
    name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # any failure of the restricted unpickler means "cannot use"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise HypernetFormatError(f"cannot read {name!r} safely as a torch file: {first}") from None
    return from_state_dict(obj, name)


def apply(hypernets: Sequence[tuple[Hypernetwork, float]], context: torch.Tensor, dim: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111's ``apply_hypernetworks`` with the upcast rule: returns ``(context_k, context_v)``.

    Hypernets apply in list order, the k chain and the v chain separately; one without a module for ``dim`` is
    skipped; multiplier 0 is skipped (A1111 computes ``x + y * 0``, which is ``x`` for finite ``y``).  Each
    hypernet computes in its modules' dtype (fp32 as loaded) and its result is cast back to ``context.dtype``.
    Stateless; ``context`` is not modified (it is returned as is when nothing applies).
    """
    if context.shape[-1] != dim:
        raise ValueError(f"dim {dim} does not match the context's last dimension {context.shape[-1]}")
    k = v = context
    with torch.no_grad():
        for hn, multiplier in hypernets:
            pair = hn.layers.get(dim)
            m = float(multiplier)
            if pair is None or m == 0.0:
                continue
            k_mod, v_mod = pair
            k = k_mod(k.to(k_mod.dtype), m).to(context.dtype)
            v = v_mod(v.to(v_mod.dtype), m).to(context.dtype)
    return k, v
