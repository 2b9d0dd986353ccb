"""Per-sample A1111 hypernetworks inside a diffusers UNet, without global patching.

Why this shape: one UNet batch mixes requests from different users, each with its own hypernet chain, so the
chains travel per call through ``cross_attention_kwargs={"hypernets": ...}`` to a processor installed once on
every UNet attention layer.  Switching hypernets never touches the base model.

A1111 semantics (``docs/hypernetwork-format.md`` §2): only the key/value *inputs* are transformed (never the
query), on self-attention (context = hidden states, 320/640/1280) and cross-attention (context = text, 768/1024),
for the unconditional rows too.

What travels in ``hypernets`` is anything with ``transform(context, dim, cacheable) -> (context_k, context_v)``:
:class:`PerSampleHypernets` (eager, one per batch; its own stacked slots) or
:class:`engine.hypernet.slot_pool.StaticHypernets` (fixed slots of a compiled batch-size bucket).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from engine.hypernet.layout import HypernetModule
from engine.hypernet.model import Hypernetwork
from engine.hypernet.slot_plan import ExactGroup, StagePlan, plan_dim
from engine.hypernet.slots import StageBuffers

__all__ = ["HypernetAttnProcessor", "HypernetTransform", "PerSampleHypernets", "install_hypernet_processors"]


class HypernetTransform(Protocol):
    """What the processor calls: the per-row k/v inputs for one attention layer's context."""

    def transform(self, context: torch.Tensor, dim: int, cacheable: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]: ...


_Entry = StageBuffers | ExactGroup


class PerSampleHypernets:
    """The hypernet chains of one UNet batch, one chain per batch row; built once per batch (eager use).

    ``chains[i]`` is the ``[(hypernetwork, multiplier), ...]`` of row ``i`` in prompt order (the pipeline passes
    each request's chain for both its unconditional and conditional rows).  ``compute_dtype=None`` computes in
    the context's dtype on GPU and in fp32 on CPU; each chain position's result is cast back to the context dtype.

    At each chain position, the rows' nets of one family (same layers and activation: :mod:`engine.hypernet.slots`)
    are stacked and applied with one set of batched matmuls, so the kernel count does not grow with the number of
    distinct nets.  Softmax-like hypernets (``Hypernetwork.batch_dependent``) and PReLU ones take the exact
    per-net path: the rows sharing such a net are computed together and normalise over each other, as A1111 does
    over its whole batch.  ``batched=False`` computes every net that way (the reference the slots are tested against).

    Plans are made here (plain Python); tensors are built on the first ``transform`` for a device and dtype, or by
    :meth:`prepare` — which a compiled UNet needs, since nothing may be built inside its graph.

    ``compute_counts[dim]`` counts the hypernet computations per context width and ``cache_hits`` the reuses of
    cached cross-attention results; they exist for tests and benchmarks.
    """

    def __init__(self, chains: Sequence[Sequence[tuple[Hypernetwork, float]]], compute_dtype: torch.dtype | None = None,
                 max_cache_entries: int = 4, *, batched: bool = True) -> None:
        self.chains = [tuple((hn, float(m)) for hn, m in chain) for chain in chains]
        self.rows = len(self.chains)
        self.compute_dtype = compute_dtype
        self.max_cache_entries = max_cache_entries
        self.batched = batched
        self.compute_counts: collections.Counter[int] = collections.Counter()
        self.cache_hits = 0
        dims = sorted({dim for chain in self.chains for hn, _ in chain for dim in hn.layers})
        self._plans = {dim: plan for dim in dims if (plan := plan_dim(self.chains, dim, batched=batched))}
        self._built: dict[tuple[int, torch.device, torch.dtype], list[list[_Entry]]] = {}
        self._cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._converted: dict[tuple[int, torch.device, torch.dtype], tuple[Hypernetwork, Hypernetwork]] = {}
        self._index: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}

    def work_dtype(self, context_dtype: torch.dtype, device: torch.device) -> torch.dtype:
        return self.compute_dtype or (torch.float32 if device.type == "cpu" else context_dtype)

    def prepare(self, device: torch.device | str, context_dtype: torch.dtype, dims: Iterable[int] | None = None) -> None:
        """Build the tensors for contexts of ``context_dtype`` on ``device`` now (for ``dims``, default all)."""
        device = torch.device(device)
        work = self.work_dtype(context_dtype, device)
        for dim in self._plans if dims is None else dims:
            if dim in self._plans:
                self._entries(dim, device, work)

    def _entries(self, dim: int, device: torch.device, work: torch.dtype) -> list[list[_Entry]]:
        key = (dim, device, work)
        built = self._built.get(key)
        if built is None:
            if torch.compiler.is_compiling():
                raise RuntimeError("PerSampleHypernets must be prepared (prepare()) before a compiled UNet call")
            built = self._built[key] = [[self._build(entry, dim, device, work) for entry in position]
                                        for position in self._plans[dim]]
        return built

    def _build(self, entry: StagePlan | ExactGroup, dim: int, device: torch.device, work: torch.dtype) -> _Entry:
        if isinstance(entry, ExactGroup):
            return entry
        rows = [row for row, _, _ in entry.members]
        index = None if rows == list(range(self.rows)) else self._rows_index([*rows, *(r + self.rows for r in rows)], device)
        stage = StageBuffers(entry.spec.family, dim, entry.spec.hidden, len(rows), device, work, rows_index=index)
        for slot, (_, hn, m) in enumerate(entry.members):
            stage.load_row(slot, hn.layers[dim], m)
        return stage

    def _modules(self, hn: Hypernetwork, dim: int, device: torch.device, dtype: torch.dtype
                 ) -> tuple[HypernetModule, HypernetModule]:
        """The (k, v) modules on ``device`` in ``dtype``; converted at most once per batch when the cache holds
        them elsewhere (the worker should hand over hypernets already on the GPU in the compute dtype)."""
        pair = hn.layers[dim]
        if pair[0].device == device and pair[0].dtype == dtype:
            return pair
        key = (id(hn), device, dtype)
        if key not in self._converted:
            self._converted[key] = (hn, hn.to(device, dtype))  # keep hn alive so its id stays unique
        return self._converted[key][1].layers[dim]

    def _rows_index(self, rows: Sequence[int], device: torch.device) -> torch.Tensor:
        key = (tuple(rows), device)
        idx = self._index.get(key)
        if idx is None:
            idx = self._index[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return idx

    def _exact(self, group: ExactGroup, kv: torch.Tensor, dim: int, work: torch.dtype) -> torch.Tensor:
        """Today's per-net computation for the group's rows of stacked ``kv`` (k rows, then v rows)."""
        out_dtype = kv.dtype
        k_mod, v_mod = self._modules(group.hn, dim, kv.device, work)
        m0 = group.multipliers[0]
        mult: float | torch.Tensor = m0
        if any(m != m0 for m in group.multipliers):
            mult = torch.tensor(group.multipliers, dtype=torch.float32, device=kv.device).view(-1, 1, 1)
        k_rows = self._rows_index(group.rows, kv.device)
        v_rows = self._rows_index([r + self.rows for r in group.rows], kv.device)
        new_k = k_mod(kv.index_select(0, k_rows).to(work), mult).to(out_dtype)
        new_v = v_mod(kv.index_select(0, v_rows).to(work), mult).to(out_dtype)
        return kv.index_copy(0, self._rows_index([*group.rows, *(r + self.rows for r in group.rows)], kv.device),
                             torch.cat([new_k, new_v]))

    def _run(self, context: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        work = self.work_dtype(context.dtype, context.device)
        kv = torch.cat([context, context])  # k rows, then v rows: one batched matmul serves both
        for position in self._entries(dim, context.device, work):
            for entry in position:
                kv = self._exact(entry, kv, dim, work) if isinstance(entry, ExactGroup) else entry.apply(kv, context.dtype)
        if not torch.compiler.is_compiling():
            self.compute_counts[dim] += 1
        return kv[:self.rows], kv[self.rows:]

    def transform(self, context: torch.Tensor, dim: int, cacheable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(context_k, context_v)`` for a ``(rows, tokens, dim)`` context.

        Rows with no applicable hypernet come back unchanged; when nothing applies at all, ``context`` itself is
        returned twice (no copy).  ``cacheable=True`` (cross-attention: the text context is the same tensor in
        every layer and step) reuses the result computed for the same tensor in eager runs; compiled graphs never
        consult that cache (it is keyed on tensor addresses) — they get the text result prepared outside the graph
        (``StaticHypernets.prepare_text``).
        """
        if context.shape[0] != self.rows:
            raise ValueError(f"context has {context.shape[0]} rows but {self.rows} hypernet chains were given")
        if context.shape[-1] != dim:
            raise ValueError(f"dim {dim} does not match the context's last dimension {context.shape[-1]}")
        if dim not in self._plans:
            return context, context
        if not cacheable or torch.compiler.is_compiling():
            return self._run(context, dim)
        key = (context.data_ptr(), tuple(context.shape), context.stride(), context.dtype, context.device,
               _version(context), dim)
        hit = self._cache.get(key)
        if hit is not None:
            self.cache_hits += 1
            return hit[1], hit[2]
        k, v = self._run(context, dim)
        if len(self._cache) >= self.max_cache_entries:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (context, k, v)  # holding `context` keeps its memory from being reused
        return k, v


def _version(t: torch.Tensor) -> int:
    """In-place writes bump a tensor's version, so a modified context misses the cache.  Inference-mode tensors
    have no version counter; they are only written inside inference mode, which pipelines do not do to prompt
    embeddings between steps."""
    try:
        return t._version
    except RuntimeError:
        return -1


class HypernetAttnProcessor:
    """diffusers attention processor = ``AttnProcessor2_0``'s computation with hypernets on the k/v inputs.

    ``hypernets=None`` gives exactly the stock result.  ``hypernets`` must be a keyword parameter of
    ``__call__``: ``Attention.forward`` drops any ``cross_attention_kwargs`` entry its processor does not name.
    """

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 hypernets: HypernetTransform | None = None, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        is_cross = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states
        if hypernets is None:
            context_k = context_v = context
        else:
            context_k, context_v = hypernets.transform(context, context.shape[-1], cacheable=is_cross)
        key = attn.to_k(context_k)
        value = attn.to_v(context_v)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                       is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_hypernet_processors(unet: torch.nn.Module) -> int:
    """Put one :class:`HypernetAttnProcessor` on every attention layer of ``unet`` (self and cross); return how many.

    Call once after building the UNet (before ``torch.compile``: the processor is traced into the graph).  Only
    UNets: A1111 never applies hypernets to the VAE's attention, so a VAE is refused.
    """
    if "Autoencoder" in type(unet).__name__ or not hasattr(unet, "set_attn_processor"):
        raise TypeError(f"install_hypernet_processors needs a diffusers UNet, got {type(unet).__name__}")
    count = len(unet.attn_processors)
    unet.set_attn_processor(HypernetAttnProcessor())
    return count


def apply_stacked(hypernets: Sequence[tuple[Hypernetwork, float]], context: torch.Tensor, dim: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The parity interface's ``apply`` computed through the stacked slots, every row of ``context`` with the chain.

    For the shared checker (``check_parity.py engine.hypernet --apply engine.hypernet.attention:apply_stacked``), so
    the batched path is held to A1111's outputs as well; the engine calls :class:`PerSampleHypernets`.
    """
    if context.shape[-1] != dim:
        raise ValueError(f"dim {dim} does not match the context's last dimension {context.shape[-1]}")
    with torch.no_grad():
        return PerSampleHypernets([hypernets] * context.shape[0]).transform(context, dim)
