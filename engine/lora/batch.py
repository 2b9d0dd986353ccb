"""Per-batch LoRA state: every batch row's LoRA list turned into per-module stacked tensors, once per batch.

Why this shape: one UNet (or text-encoder) batch mixes requests with different LoRA lists, and the base
weights stay untouched.  For each module some row's LoRAs touch, the batch keeps

* the low-rank LoRAs (LoRA, LoCon, Tucker LoCon folded into its conv) as one stacked ``down [R, in(,kh,kw)]``
  and ``up_t [R, out]`` of all their rank columns, plus per row the columns it uses, ``col_index [n, C]``,
  and their ``col_scale [n, C]`` = scale × that row's multiplier (padding columns: scale 0).  A row's
  update is ``((x @ down[cols]ᵀ) * col_scale) @ up_t[cols]`` — its own ranks only, so a batch of rows with
  different LoRAs costs per row what one LoRA costs (the gathered-factors, "BGMV" form);
* the others (LoHa, LoKr, full, (IA)³, norm, DoRA) as their deltas at multiplier 1, materialised once,
  stacked ``dense [K, *W.shape]`` with ``dense_mult [n, K]`` (and ``bias [K, out]`` for full/norm biases);
* ``rows``: the indices of the rows with any update there, so the other rows are left exactly as they were.

Every shape is fixed for the batch and no Python loop depends on its content at apply time (``hooks``), so
the GPU work can pad these to static slot counts.  Rows sharing a LoRA share its stacked slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from engine.lora.modules import LoraModule, LowRankModule, unit_delta
from engine.lora.names import CONV, GROUP_NORM, LAYER_NORM, LINEAR, OTHER
from engine.lora.network import LoraNetwork

__all__ = ["LoraBatch", "LoraUse", "ModulePlan", "RowLoras", "as_use", "build_lora_batch", "module_kind", "te_lora_key"]

PARTS = ("unet", "text_encoder")


@dataclass(frozen=True, slots=True)
class LoraUse:
    """One LoRA of a row: ``<lora:NAME:TE:UNET:DYN>`` as numbers.  ``te=None`` means the text encoder uses
    ``unet`` too (``<lora:NAME:MULT>``); ``dyn`` keeps only the first ``dyn`` ranks of plain LoRA modules."""

    lora: LoraNetwork
    unet: float = 1.0
    te: float | None = None
    dyn: int | None = None

    def multiplier(self, part: str) -> float:
        return self.unet if part == "unet" or self.te is None else self.te


RowLoras = Sequence["LoraUse | tuple"]


def as_use(item: LoraUse | tuple) -> LoraUse:
    """``LoraUse`` or a tuple ``(lora, unet_multiplier[, te_multiplier[, dyn]])``."""
    if isinstance(item, LoraUse):
        return item
    lora, unet, *rest = item
    te = rest[0] if rest else None
    dyn = rest[1] if len(rest) > 1 else None
    return LoraUse(lora, float(unet), None if te is None else float(te), None if dyn is None else int(dyn))


def te_lora_key(row: RowLoras) -> tuple[tuple[str, float, int | None], ...]:
    """A stable, hashable key of what a row's LoRAs do to the text encoder, for the conditioning cache.

    Rows with equal keys get bit-identical text-encoder outputs; ``()`` means the plain text encoder (no
    LoRA with text-encoder modules, or all at multiplier 0).  Prompt order is kept (it fixes the order
    updates are summed in).  Uses ``LoraNetwork.key`` — pass the file's content hash when loading.
    """
    uses = (as_use(item) for item in row)
    return tuple((u.lora.key, u.multiplier("text_encoder"), u.dyn) for u in uses
                 if u.lora.has_text_encoder and u.multiplier("text_encoder") != 0.0)


def module_kind(module: nn.Module) -> str:
    """The kind A1111 patches the module as (``names`` constants); ``other`` when it patches nothing."""
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.Conv2d):
        return CONV
    if isinstance(module, nn.GroupNorm) and module.weight is not None:
        return GROUP_NORM
    if isinstance(module, nn.LayerNorm) and module.weight is not None:
        return LAYER_NORM
    return OTHER


@dataclass(frozen=True, slots=True)
class LowRankSlots:
    """Stacked low-rank factors of a batch's LoRAs on one module; per active row, its rank columns and scales."""

    down: torch.Tensor  # [R, in, ...]: every slot's down factor, rank rows stacked
    up_t: torch.Tensor  # [R, out]: the up factors, transposed the same way
    col_index: torch.Tensor  # [rows, width]: which of the R columns a row uses (padding points at column 0 ...)
    col_scale: torch.Tensor  # [rows, width]: ... with scale 0, so padding adds exactly nothing


@dataclass(frozen=True, slots=True)
class DenseSlots:
    """Materialised deltas of a batch's LoRAs on one module and, per active row, each slot's multiplier."""

    delta: torch.Tensor  # [K, *weight.shape]
    mult: torch.Tensor  # [rows, K]
    bias: torch.Tensor | None = None  # [K, out]: bias updates (zeros for slots without one), when any slot has one


@dataclass
class ModulePlan:
    """The stacked tensors of one module for one batch (module docstring); built by :func:`build_lora_batch`."""

    kind: str
    rows: torch.Tensor | None  # active row indices; None when every row is active
    n_active: int
    low_rank: LowRankSlots | None = None
    dense: DenseSlots | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (inputs of another dtype, e.g. under autocast, are cast to it)."""
        if self.low_rank is not None:
            return self.low_rank.down.dtype
        assert self.dense is not None, "a plan holds low-rank or dense slots"
        return self.dense.delta.dtype


@dataclass
class LoraBatch:
    """All module plans of one model part for one batch; activate it with ``hooks.lora_batch_active``."""

    part: str
    rows: int
    plans: dict[str, ModulePlan] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (LoRA name, module) whose update does not fit

    @property
    def warnings(self) -> list[str]:
        """One line per LoRA with skipped modules, as A1111's "Networks with errors" (for the result)."""
        counts: dict[str, int] = {}
        for lora, _ in self.skipped:
            counts[lora] = counts.get(lora, 0) + 1
        return [f"LoRA {lora}: {n} module(s) skipped, their update does not fit this model" for lora, n in counts.items()]


@dataclass
class _Slot:
    """One (network module, dyn) in one model module, with the multiplier of each row using it.

    ``prefix``: for a module whose update depends on the weight ((IA)³, DoRA), the row's earlier networks on
    the same model module — A1111 merges networks one after another, so such an update is computed from the
    weight as the earlier ones left it.  Rows share a slot only when they share that prefix too.
    """

    lora: LoraNetwork
    module: LoraModule
    dyn: int | None
    prefix: tuple[tuple[LoraModule, float, int | None], ...] = ()
    mult: dict[int, float] = field(default_factory=dict)


def _collect(part: str, rows: Sequence[RowLoras]) -> dict[str, dict[tuple, _Slot]]:
    """model-module path -> its slots; rows sharing a LoRA (and dyn) share a slot, repeated uses add up."""
    lists: dict[tuple, tuple[list[tuple[LoraUse, float]], list[int]]] = {}
    for r, row in enumerate(rows):
        uses = [(use, use.multiplier(part)) for use in map(as_use, row)]
        uses = [(use, m) for use, m in uses if m != 0.0]
        signature = tuple((id(use.lora), m, use.dyn) for use, m in uses)
        lists.setdefault(signature, (uses, []))[1].append(r)
    parts: dict[int, dict[str, LoraModule]] = {}
    slots: dict[str, dict[tuple, _Slot]] = {}
    for uses, row_ids in lists.values():
        earlier: dict[str, list[tuple[LoraModule, float, int | None]]] = {}
        for use, m in uses:
            modules = parts.setdefault(id(use.lora), use.lora.part_modules(part))
            for path, module in modules.items():
                dyn = use.dyn if isinstance(module, LowRankModule) and module.mid is None else None
                before = earlier.setdefault(path, [])
                prefix = tuple(before) if module.needs_weight else ()
                key = (id(module), dyn, tuple((id(e[0]), e[1], e[2]) for e in prefix))
                slot = slots.setdefault(path, {}).setdefault(key, _Slot(use.lora, module, dyn, prefix))
                for r in row_ids:
                    slot.mult[r] = slot.mult.get(r, 0.0) + m
                before.append((module, m, dyn))
    return slots


def _weight_before(slot: _Slot, weight: torch.Tensor) -> torch.Tensor:
    """The weight a slot's update is computed from: for (IA)³ / DoRA, the model's weight after the row's
    earlier networks, merged one after another as A1111 does (float32, on the network's device); the other
    types only read its shape."""
    if not slot.module.needs_weight:
        return weight
    merged = weight.detach().to(device=slot.module.device, dtype=torch.float32)
    for module, m, dyn in slot.prefix:
        delta = unit_delta(module, merged, dyn)
        if delta is not None:
            merged = merged + delta.float() * m
    return merged


def _find(modules: dict[str, nn.Module], path: str) -> nn.Module | None:
    module = modules.get(path)
    return modules.get("text_model." + path) if module is None else module


def _plain_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def _split(kind: str, module: nn.Module, slots: Sequence[_Slot], skipped: list[tuple[str, str]]
           ) -> tuple[list[tuple[_Slot, torch.Tensor, torch.Tensor]], list[tuple[_Slot, torch.Tensor, torch.Tensor | None]]]:
    """The slots as (slot, down, up) factors where the update is exactly low-rank for this module, else as
    (slot, delta at multiplier 1, bias update); updates that do not fit the weight go to ``skipped``."""
    weight = module.weight
    low, dense = [], []
    for slot in slots:
        fac = None
        if kind == LINEAR or (kind == CONV and _plain_conv(module)):
            fac = slot.module.factors(weight.shape, slot.dyn)
        if fac is not None:
            if fac[0].shape[0] > 0:  # dyn 0 keeps no rank: no update
                low.append((slot, *fac))
            continue
        delta = unit_delta(slot.module, _weight_before(slot, weight), slot.dyn)
        if delta is None:
            skipped.append((slot.lora.name, slot.module.target))
        else:
            dense.append((slot, delta, slot.module.bias_update(weight.shape[0])))
    return low, dense


def _low_rank(low: Sequence[tuple[_Slot, torch.Tensor, torch.Tensor]], position: dict[int, int],
              put: dict[str, Any]) -> LowRankSlots:
    """Stack the factors; per active row, the rank columns it uses and their scale × multiplier."""
    down_all = torch.cat([down for _, down, _ in low]).to(**put)
    up_t = torch.cat([up for _, _, up in low], dim=1).t().contiguous().to(**put)
    columns: list[list[tuple[int, float]]] = [[] for _ in position]
    start = 0
    for slot, down, _ in low:
        for r, m in slot.mult.items():
            columns[position[r]].extend((start + c, m * slot.module.scale) for c in range(down.shape[0]))
        start += down.shape[0]
    width = max(len(cols) for cols in columns)
    index = torch.zeros(len(columns), width, dtype=torch.long)
    scale = torch.zeros(len(columns), width, dtype=torch.float64)
    for i, cols in enumerate(columns):
        if cols:
            index[i, :len(cols)] = torch.tensor([c for c, _ in cols])
            scale[i, :len(cols)] = torch.tensor([v for _, v in cols], dtype=torch.float64)
    return LowRankSlots(down_all, up_t, index.to(put["device"]), scale.to(**put))


def _materialised(dense: Sequence[tuple[_Slot, torch.Tensor, torch.Tensor | None]], position: dict[int, int],
                  out_features: int, put: dict[str, Any]) -> DenseSlots:
    """Stack the deltas (and bias updates, zeros where a slot has none); per active row, each slot's multiplier."""
    delta = torch.stack([d for _, d, _ in dense]).to(**put)
    mult = torch.zeros(len(position), len(dense), dtype=torch.float64)
    for k, (slot, _, _) in enumerate(dense):
        for r, m in slot.mult.items():
            mult[position[r], k] = m
    bias = None
    if any(b is not None for _, _, b in dense):
        zeros = torch.zeros(out_features, dtype=torch.float32)
        bias = torch.stack([zeros if b is None else b.float().cpu() for _, _, b in dense]).to(**put)
    return DenseSlots(delta, mult.to(**put), bias)


def _plan(kind: str, module: nn.Module, slots: Sequence[_Slot], n_rows: int, dtype: torch.dtype,
          skipped: list[tuple[str, str]]) -> ModulePlan | None:
    low, dense = _split(kind, module, slots, skipped)
    active = sorted({r for slot, *_ in [*low, *dense] for r in slot.mult})
    if not active:
        return None
    device = module.weight.device
    rows = None if len(active) == n_rows else torch.tensor(active, dtype=torch.long, device=device)
    plan = ModulePlan(kind=kind, rows=rows, n_active=len(active))
    position = {r: i for i, r in enumerate(active)}
    put = {"device": device, "dtype": dtype}
    if low:
        plan.low_rank = _low_rank(low, position, put)
    if dense:
        plan.dense = _materialised(dense, position, module.weight.shape[0], put)
    return plan


def build_lora_batch(model: nn.Module, part: str, rows: Sequence[RowLoras], *,
                     compute_dtype: torch.dtype | None = None) -> LoraBatch:
    """The :class:`LoraBatch` of ``model`` (the UNet for ``part="unet"``, the CLIP text encoder for
    ``part="text_encoder"``) for a batch whose row ``i`` carries ``rows[i]`` (``[LoraUse | (lora, unet, te), …]``,
    prompt order).  Tensors go to each module's device, in ``compute_dtype`` (default: the module's dtype).
    Modules the model lacks are ignored, as A1111 does; updates that do not fit a weight are skipped.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    batch = LoraBatch(part=part, rows=len(rows))
    modules = dict(model.named_modules())
    for path, slots in _collect(part, rows).items():
        module = _find(modules, path)
        if module is None:
            continue
        kind = module_kind(module)
        if kind == OTHER:
            continue
        dtype = compute_dtype or module.weight.dtype
        plan = _plan(kind, module, list(slots.values()), len(rows), dtype, batch.skipped)
        if plan is not None:
            batch.plans[path] = plan
    return batch
