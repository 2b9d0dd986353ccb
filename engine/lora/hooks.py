"""Applying a :class:`LoraBatch` to a model through removable forward hooks; the base weights stay untouched.

Why hooks: a forward hook sees a module's input and output, so each hooked module returns
``output + update(rows)`` for exactly the rows that carry an update there — other rows come back bit for
bit as without LoRA — and removing the hooks restores the plain model with nothing to undo.  Hooks exist
only while a batch is active (``lora_batch_active``), so a model without LoRA runs hook-free.

Per module kind (``x`` = the active rows of the input):

* Linear: per row ``((x @ downᵀ) * col_scale) @ up_t`` over the row's own rank columns (one batched matmul
  of gathered factors) + ``Σ_k dense_mult[:, k] · (x @ dense_kᵀ)`` + bias rows;
* Conv2d: the same with ``down`` as a conv of the module's stride/padding/dilation (one grouped conv, a
  group per row) and ``up`` a 1x1 mix (``conv(x, up·down) == up(conv(x, down))``); dense slots as one conv
  with ``K·out`` output channels;
* GroupNorm / LayerNorm: ``x̂ · Δw_row + Δb_row`` with ``x̂`` the normalised input (``norm(x; w, b) =
  x̂·w + b``, so the merged ``w + Δw`` gives exactly this extra term).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.lora.batch import LoraBatch, ModulePlan, module_kind
from engine.lora.names import CONV, GROUP_NORM, LAYER_NORM, LINEAR, ModuleTable

__all__ = ["HOOK_ATTRIBUTE", "ActiveLoras", "activate", "deactivate", "lora_batch_active", "module_update",
           "table_for_models"]

HOOK_ATTRIBUTE = "_hypercord_lora_hooks"


def _per_row(values: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    """``values [n, C…]`` viewed to broadcast against an ``ndim``-dim tensor whose channels sit at ``channel_dim``."""
    shape = [values.shape[0]] + [1] * (ndim - 1)
    tail = list(values.shape[1:])
    shape[channel_dim:channel_dim + len(tail)] = tail
    return values.reshape(shape)


def _linear_update(plan: ModulePlan, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor | None = None
    if (low := plan.low_rank) is not None:
        n, features = x.shape[0], x.shape[-1]
        h = torch.bmm(x.reshape(n, -1, features), low.down[low.col_index].transpose(1, 2))
        h = torch.bmm(h * low.col_scale.unsqueeze(1), low.up_t[low.col_index])
        out = h.reshape(*x.shape[:-1], h.shape[-1])
    if (dense := plan.dense) is not None:
        k, rows_out = dense.delta.shape[0], dense.delta.shape[1]
        h = F.linear(x, dense.delta.reshape(k * rows_out, -1)).unflatten(-1, (k, rows_out))
        h = (h * _per_row(dense.mult, x.ndim + 1, x.ndim - 1)).sum(-2)
        out = h if out is None else out + h
    return _add_bias(plan, out, x.ndim, x.ndim - 1)


def _conv_update(plan: ModulePlan, module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor | None = None
    if (low := plan.low_rank) is not None:  # only for plain convs (groups 1, zero padding): batch._plain_conv
        n, cols = low.col_index.shape
        down = low.down[low.col_index].flatten(0, 1)  # [n·C, in, kh, kw]: one group per row
        h = F.conv2d(x.reshape(1, -1, *x.shape[2:]), down, None, module.stride, module.padding, module.dilation, n)
        spatial = h.shape[2:]
        h = h.reshape(n, cols, -1) * low.col_scale.unsqueeze(-1)
        h = torch.bmm(low.up_t[low.col_index].transpose(1, 2), h)  # [n, out, H'·W']
        out = h.reshape(n, -1, *spatial)
    if (dense := plan.dense) is not None:
        k, rows_out = dense.delta.shape[0], dense.delta.shape[1]
        if module.groups == 1 and module.padding_mode == "zeros":
            h = F.conv2d(x, dense.delta.reshape(k * rows_out, *dense.delta.shape[2:]), None, module.stride,
                         module.padding, module.dilation)
            h = h.unflatten(1, (k, rows_out)) * _per_row(dense.mult, h.ndim + 1, 1)
            h = h.sum(1)
        else:  # grouped or padded-by-mode convs: one conv per slot, the module's own conv arithmetic
            h = sum(module._conv_forward(x, dense.delta[i], None) * _per_row(dense.mult[:, i:i + 1], x.ndim, 1)
                    for i in range(k))
        out = h if out is None else out + h
    return _add_bias(plan, out, x.ndim, 1)


def _norm_update(plan: ModulePlan, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dense = plan.dense
    assert dense is not None, "norm updates are always materialised"
    if isinstance(module, nn.GroupNorm):
        normed, channel_dim = F.group_norm(x, module.num_groups, None, None, module.eps), 1
    else:
        shape = tuple(module.normalized_shape)
        normed, channel_dim = F.layer_norm(x, shape, None, None, module.eps), x.ndim - len(shape)
    dw = dense.mult @ dense.delta.reshape(dense.delta.shape[0], -1)
    out = normed * _per_row(dw.reshape(-1, *dense.delta.shape[1:]), x.ndim, channel_dim)
    return _add_bias(plan, out, x.ndim, channel_dim)


def _add_bias(plan: ModulePlan, out: torch.Tensor | None, ndim: int, channel_dim: int) -> torch.Tensor:
    if plan.dense is None or plan.dense.bias is None:
        assert out is not None
        return out
    db = _per_row(plan.dense.mult @ plan.dense.bias, ndim, channel_dim)
    return db if out is None else out + db


def module_update(plan: ModulePlan, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The additive output update of ``module`` for the plan's active rows of input ``x`` (already selected)."""
    if plan.kind == LINEAR:
        return _linear_update(plan, x)
    if plan.kind == CONV:
        return _conv_update(plan, module, x)
    if plan.kind in (GROUP_NORM, LAYER_NORM):
        return _norm_update(plan, module, x)
    raise ValueError(f"no LoRA update for module kind {plan.kind!r}")


def _hook(plan: ModulePlan, rows: int):
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0] if args[0].dtype == plan.dtype else args[0].to(plan.dtype)
        if x.shape[0] != rows:
            raise RuntimeError(f"LoRA batch was built for {rows} rows, {type(module).__name__} got {x.shape[0]}")
        if plan.rows is None:
            return output + module_update(plan, module, x).to(output.dtype)
        update = module_update(plan, module, x.index_select(0, plan.rows))
        return output.index_add(0, plan.rows, update.to(output.dtype))
    return hook


class ActiveLoras:
    """The forward hooks of one active :class:`LoraBatch` on one model, by module path; ``remove()`` undoes it."""

    def __init__(self, model: nn.Module, batch: LoraBatch) -> None:
        if getattr(model, HOOK_ATTRIBUTE, None) is not None:
            raise RuntimeError("a LoRA batch is already active on this model; deactivate it first")
        modules = dict(model.named_modules())
        self.model = model
        self.batch = batch
        self.handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        for path, plan in batch.plans.items():
            module = modules.get(path)
            if module is None:
                module = modules["text_model." + path]
            self.handles[path] = module.register_forward_hook(_hook(plan, batch.rows))
        setattr(model, HOOK_ATTRIBUTE, self)

    def remove(self) -> None:
        for handle in self.handles.values():
            handle.remove()
        self.handles.clear()
        if getattr(self.model, HOOK_ATTRIBUTE, None) is self:
            delattr(self.model, HOOK_ATTRIBUTE)


def activate(model: nn.Module, batch: LoraBatch) -> ActiveLoras:
    """Install ``batch``'s hooks on ``model`` (one batch per model at a time)."""
    return ActiveLoras(model, batch)


def deactivate(model: nn.Module) -> None:
    """Remove whatever LoRA batch is active on ``model`` (nothing when none is)."""
    active = getattr(model, HOOK_ATTRIBUTE, None)
    if active is not None:
        active.remove()


@contextlib.contextmanager
def lora_batch_active(model: nn.Module, batch: LoraBatch | None) -> Iterator[None]:
    """``with lora_batch_active(unet, batch): unet(...)`` — ``batch=None`` (or one without plans) runs plain."""
    if batch is None or not batch.plans:
        yield
        return
    active = activate(model, batch)
    try:
        yield
    finally:
        active.remove()


def table_for_models(unet: nn.Module | None = None, text_encoder: nn.Module | None = None) -> ModuleTable:
    """The module table of a real model, to resolve LoRA keys against exactly its modules."""
    entries: list[tuple[str, str]] = []
    for prefix, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is not None:
            entries.extend((f"{prefix}.{name}", module_kind(module)) for name, module in model.named_modules() if name)
    return ModuleTable(entries)
