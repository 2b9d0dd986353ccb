"""Static hypernet slots for a compiled UNet: fixed tensors per batch-size bucket, refilled in place per batch.

Why: a compiled graph (and even more a CUDA graph) is specialised on the *structure* of what it reads — how many
stages, their shapes — and a CUDA graph on the *addresses* of its inputs.  So the hypernets of a bucket live in
:class:`StaticHypernets`: a fixed :data:`~engine.hypernet.slot_plan.Layout` (stages per size), its tensors allocated
once, and each new batch copied into them (``copy_``).  Changing which user has which hypernet, or a multiplier,
then changes only tensor *contents*: no recompile, no re-record.

:class:`HypernetSlotPool` keeps a few layouts per bucket (least recently used out) and picks, for each batch, the
cheapest layout that is ready (compiled) and fits, else the batch's minimal layout.  Nets that cannot be stacked
exactly (softmax family, PReLU) make ``acquire`` return None: the caller then runs the eager exact path.

The text side (cross-attention, the context width) is the same tensor in every layer and step of a call, so
:meth:`StaticHypernets.prepare_text` computes it once, outside the graph, into fixed buffers the graph reads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import torch

from engine.hypernet.slot_plan import Chain, Layout, Member, assign, layout_cost, minimal_layout
from engine.hypernet.slots import StageBuffers

__all__ = ["HypernetSlotPool", "StaticHypernets"]

_Holding = tuple[int, float] | None  # (id of the net, multiplier) a row of a stage holds; None = empty


class StaticHypernets:
    """One bucket's hypernets in a fixed layout: ``rows`` rows, tensors at fixed addresses (see the module docstring).

    Implements the processor's ``transform(context, dim, cacheable)``.  ``generation`` changes whenever the contents
    change (``load`` with different chains), so callers can tell when prepared text results are stale.
    ``model_dims`` are the sizes the model has (modules of other sizes are never called); None means every size a
    loaded net has must have a stage.  ``static_addresses`` marks every tensor as a static input (CUDA graphs then
    read them in place instead of copying them in before each replay).
    """

    def __init__(self, layout: Layout, rows: int, device: torch.device | str, dtype: torch.dtype, *,
                 text_dim: int | None = None, model_dims: Iterable[int] | None = None,
                 static_addresses: bool = False) -> None:
        self.layout = layout
        self.rows = rows
        self.dtype = dtype
        self.text_dim = text_dim
        self.cost = layout_cost(layout)
        self.stages = {dim: [StageBuffers(spec.family, dim, spec.hidden, rows, device, dtype) for spec in specs]
                       for dim, specs in layout}
        self.dims = frozenset(self.stages)
        self.model_dims = None if model_dims is None else frozenset(model_dims)
        self.generation = 0
        self._holding: dict[tuple[int, int], list[_Holding]] = {
            (dim, i): [None] * rows for dim, specs in layout for i in range(len(specs))}
        self._nets: dict[int, object] = {}  # keeps loaded nets alive so their ids stay unique
        self._chains_key: tuple[tuple[tuple[int, float], ...], ...] | None = None
        self._text: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.text_tokens: int | None = None  # token count of the prepared text result (None: not prepared)
        self._text_source: torch.Tensor | None = None
        self.static_addresses = static_addresses
        if static_addresses:
            _mark_static(self.tensors())

    def tensors(self) -> list[torch.Tensor]:
        """Every fixed tensor (stages and prepared text), e.g. to mark static addresses for CUDA graphs."""
        out = [t for stages in self.stages.values() for stage in stages for t in stage.tensors()]
        return out + [t for pair in self._text.values() for t in pair]

    def fits(self, chains: Sequence[Chain]) -> bool:
        return len(chains) <= self.rows and assign(self.layout, chains, self._dims_for(chains)) is not None

    def _dims_for(self, chains: Sequence[Chain]) -> set[int]:
        """The sizes whose modules must find a stage: the model's sizes, or (none given) every size a net has."""
        if self.model_dims is not None:
            return set(self.model_dims)
        return set(self.dims) | {dim for chain in chains for hn, _ in chain for dim in hn.layers}

    def load(self, chains: Sequence[Chain]) -> None:
        """Copy the batch's chains (padded with empty rows up to ``rows``) into the fixed tensors; only rows whose
        content changes are written.  Raises ValueError when the chains do not fit this layout."""
        if len(chains) > self.rows:
            raise ValueError(f"{len(chains)} hypernet chains do not fit {self.rows} slot rows")
        chains = list(chains) + [()] * (self.rows - len(chains))
        key = tuple(tuple((id(hn), float(m)) for hn, m in chain) for chain in chains)
        if key == self._chains_key:
            return
        plan = assign(self.layout, chains, self._dims_for(chains))
        if plan is None:
            raise ValueError("these hypernet chains do not fit this slot layout")
        for dim, stage_members in plan.items():
            for index, members in enumerate(stage_members):
                self._fill(dim, index, members)
        self._nets = {id(hn): hn for chain in chains for hn, _ in chain}
        self._chains_key = key
        self.generation += 1
        self.text_tokens = None
        self._text_source = None

    def _fill(self, dim: int, index: int, members: Sequence[Member]) -> None:
        stage = self.stages[dim][index]
        holding = self._holding[(dim, index)]
        wanted: list[_Holding] = [None] * self.rows
        nets = {}
        for row, hn, m in members:
            wanted[row] = (id(hn), float(m))
            nets[row] = hn
        for row in range(self.rows):
            now, want = holding[row], wanted[row]
            if now == want:
                continue
            if want is None:
                stage.clear_row(row)
            elif now is not None and now[0] == want[0]:
                stage.set_multiplier(row, want[1])
            else:
                stage.load_row(row, nets[row].layers[dim], want[1])
            holding[row] = want

    def _compute(self, context: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        stages = self.stages.get(dim)
        if not stages:
            return context, context
        kv = torch.cat([context, context])
        for stage in stages:
            kv = stage.apply(kv, context.dtype)
        return kv[:self.rows], kv[self.rows:]

    def transform(self, context: torch.Tensor, dim: int, cacheable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context_k, context_v)`` for a ``(rows, tokens, dim)`` context; the prepared text result for the text
        context when :meth:`prepare_text` was called for it."""
        if context.shape[0] != self.rows:
            raise ValueError(f"context has {context.shape[0]} rows but the hypernet slots hold {self.rows}")
        tokens = self.text_tokens
        prepared = cacheable and dim == self.text_dim and tokens == context.shape[1] and dim in self.stages
        if prepared and tokens is not None and (torch.compiler.is_compiling() or context is self._text_source):
            return self._text[tokens]
        return self._compute(context, dim)

    def prepare_text(self, context: torch.Tensor) -> None:
        """Compute the text context's hypernet result once (outside any graph) into fixed buffers.

        The compiled graph then reads those buffers in every cross-attention layer instead of recomputing them; the
        caller must call this again whenever the context or the loaded chains change (``UNetRunner`` does).
        """
        dim = context.shape[-1]
        if dim != self.text_dim or dim not in self.stages:
            return
        tokens = context.shape[1]
        k, v = self._compute(context, dim)
        buffers = self._text.get(tokens)
        if buffers is None or buffers[0].dtype != k.dtype:
            buffers = self._text[tokens] = (torch.empty_like(k), torch.empty_like(v))
            if self.static_addresses:
                _mark_static(buffers)
        buffers[0].copy_(k)
        buffers[1].copy_(v)
        self.text_tokens = tokens
        self._text_source = context


def _mark_static(tensors: Iterable[torch.Tensor]) -> None:
    for t in tensors:
        torch._dynamo.mark_static_address(t)


class HypernetSlotPool:
    """Static slots per bucket (row count): a few layouts each, least recently used out.

    ``dims`` are the model's attention widths (self-attention widths and the text context width): stages are built
    only for them.  ``min_hidden_ratio`` sets the smallest hidden capacity of a padded stage (2.0 = A1111's default
    ``[1, 2, 1]``), so most nets share a layout instead of each width compiling its own.  Buckets of at most
    ``static_rows`` rows get static-address tensors (for CUDA graphs).
    """

    def __init__(self, device: torch.device | str, dtype: torch.dtype, *, dims: Iterable[int], text_dim: int | None,
                 min_hidden_ratio: float = 2.0, max_layouts: int = 4, static_rows: int = 0) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.dims = frozenset(dims)
        self.text_dim = text_dim
        self.min_hidden_ratio = min_hidden_ratio
        self.max_layouts = max_layouts
        self.static_rows = static_rows
        self._buckets: dict[int, OrderedDict[Layout, StaticHypernets]] = {}

    def minimal_layout(self, chains: Sequence[Chain]) -> Layout | None:
        return minimal_layout(chains, self.dims, min_hidden_ratio=self.min_hidden_ratio)

    def clear(self) -> None:
        """Drop every bucket's slot tensors (their device memory); they are rebuilt on next use."""
        self._buckets.clear()

    def get(self, rows: int, layout: Layout) -> StaticHypernets:
        """The slots of ``layout`` for ``rows`` rows, created on first use (evicting the least recently used)."""
        bucket = self._buckets.setdefault(rows, OrderedDict())
        found = bucket.get(layout)
        if found is None:
            while len(bucket) >= self.max_layouts:
                bucket.popitem(last=False)
            found = bucket[layout] = StaticHypernets(layout, rows, self.device, self.dtype, text_dim=self.text_dim,
                                                     model_dims=self.dims, static_addresses=rows <= self.static_rows)
        bucket.move_to_end(layout)
        return found

    def acquire(self, rows: int, chains: Sequence[Chain], ready: Callable[[StaticHypernets], bool] = lambda _: False
                ) -> StaticHypernets | None:
        """Slots holding ``chains`` (padded to ``rows``): the cheapest ready layout that fits, else the batch's minimal
        layout; None when a net needs the exact path."""
        minimal = self.minimal_layout(chains)
        if minimal is None:
            return None
        bucket = self._buckets.setdefault(rows, OrderedDict())
        fitting = [slots for slots in bucket.values() if ready(slots) and slots.fits(chains)]
        chosen = min(fitting, key=lambda s: s.cost) if fitting else self.get(rows, minimal)
        chosen.load(chains)
        bucket.move_to_end(chosen.layout)
        return chosen


def apply_static(hypernets: Chain, context: torch.Tensor, dim: int, *, min_hidden_ratio: float = 2.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The parity interface's ``apply`` through static, padded slots (hidden layers padded to ``min_hidden_ratio ·
    dim``), every row of ``context`` with the chain; nets that need the exact path go through it.

    For the shared checker (``check_parity.py engine.hypernet --apply engine.hypernet.slot_pool:apply_static``).
    """
    from engine.hypernet.attention import PerSampleHypernets  # the exact path; attention imports nothing of ours here

    if context.shape[-1] != dim:
        raise ValueError(f"dim {dim} does not match the context's last dimension {context.shape[-1]}")
    rows = context.shape[0]
    chains = [hypernets] * rows
    with torch.no_grad():
        layout = minimal_layout(chains, [dim], min_hidden_ratio=min_hidden_ratio)
        if layout is None:
            return PerSampleHypernets(chains).transform(context, dim)
        slots = StaticHypernets(layout, rows, context.device, torch.float32, model_dims=[dim])
        slots.load(chains)
        return slots.transform(context, dim)
