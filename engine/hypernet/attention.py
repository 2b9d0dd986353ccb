"""Per-sample A1111 hypernetworks inside a diffusers UNet, without global patching.

Why this shape: one UNet batch mixes requests from different users, each with its own hypernet chain, so the
chains travel per call through ``cross_attention_kwargs={"hypernets": PerSampleHypernets(...)}`` to a processor
installed once on every UNet attention layer.  Switching hypernets never touches the base model.

A1111 semantics (``docs/hypernetwork-format.md`` §2): only the key/value *inputs* are transformed (never the
query), on self-attention (context = hidden states, 320/640/1280) and cross-attention (context = text, 768/1024),
for the unconditional rows too.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from engine.hypernet.layout import HypernetModule
from engine.hypernet.model import Hypernetwork

__all__ = ["HypernetAttnProcessor", "PerSampleHypernets", "install_hypernet_processors"]


@dataclass
class _Group:
    """Rows that apply the same hypernet at one chain position (their multipliers may differ)."""

    hn: Hypernetwork
    rows: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


class PerSampleHypernets:
    """The hypernet chains of one UNet batch, one chain per batch row; built once per ``generate()`` call.

    ``chains[i]`` is the ``[(hypernetwork, multiplier), ...]`` of row ``i`` in prompt order (the pipeline passes
    each request's chain for both its unconditional and conditional rows).  ``compute_dtype=None`` computes in
    the context's dtype on GPU and in fp32 on CPU; each hypernet's result is cast back to the context dtype.

    Rows that apply the same hypernet object at the same chain position are computed together.  Softmax-like
    hypernets (``Hypernetwork.batch_dependent``) normalise over the rows computed together, as A1111 does over
    its whole batch, so their results depend on the batch composition.

    ``compute_counts[dim]`` counts the hypernet computations per context width and ``cache_hits`` the reuses of
    cached cross-attention results; they exist for tests and benchmarks.
    """

    def __init__(self, chains: Sequence[Sequence[tuple[Hypernetwork, float]]], compute_dtype: torch.dtype | None = None,
                 max_cache_entries: int = 4) -> None:
        self.chains = [tuple((hn, float(m)) for hn, m in chain) for chain in chains]
        self.rows = len(self.chains)
        self.compute_dtype = compute_dtype
        self.max_cache_entries = max_cache_entries
        self.compute_counts: collections.Counter[int] = collections.Counter()
        self.cache_hits = 0
        self._plans: dict[int, list[list[_Group]]] = {}
        self._cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._converted: dict[tuple[int, torch.device, torch.dtype], tuple[Hypernetwork, Hypernetwork]] = {}
        self._index: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}

    def _plan(self, dim: int) -> list[list[_Group]]:
        """Per chain position, the groups of rows sharing a hypernet (those without ``dim`` or with mult 0 skipped)."""
        plan = self._plans.get(dim)
        if plan is None:
            effective = [[(hn, m) for hn, m in chain if dim in hn.layers and m != 0.0] for chain in self.chains]
            plan = []
            for pos in range(max((len(c) for c in effective), default=0)):
                groups: dict[int, _Group] = {}
                for row, chain in enumerate(effective):
                    if pos < len(chain):
                        hn, m = chain[pos]
                        group = groups.setdefault(id(hn), _Group(hn))
                        group.rows.append(row)
                        group.multipliers.append(m)
                plan.append(list(groups.values()))
            self._plans[dim] = plan
        return plan

    def _modules(self, hn: Hypernetwork, dim: int, device: torch.device, dtype: torch.dtype
                 ) -> tuple[HypernetModule, HypernetModule]:
        """The (k, v) modules on ``device`` in ``dtype``; converted at most once per call when the cache holds
        them elsewhere (the worker should hand over hypernets already on the GPU in the compute dtype)."""
        pair = hn.layers[dim]
        if pair[0].device == device and pair[0].dtype == dtype:
            return pair
        key = (id(hn), device, dtype)
        if key not in self._converted:
            self._converted[key] = (hn, hn.to(device, dtype))  # keep hn alive so its id stays unique
        return self._converted[key][1].layers[dim]

    def _rows_index(self, pos: int, group_no: int, group: _Group, device: torch.device, dim: int) -> torch.Tensor:
        key = (dim, pos, group_no, device)
        idx = self._index.get(key)
        if idx is None:
            idx = self._index[key] = torch.tensor(group.rows, dtype=torch.long, device=device)
        return idx

    def _run(self, plan: list[list[_Group]], context: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        out_dtype = context.dtype
        work = self.compute_dtype or (torch.float32 if context.device.type == "cpu" else context.dtype)
        k = v = context
        owned = False  # k and v are private copies we may write into
        for pos, groups in enumerate(plan):
            for group_no, group in enumerate(groups):
                k_mod, v_mod = self._modules(group.hn, dim, context.device, work)
                m0 = group.multipliers[0]
                mult: float | torch.Tensor = m0
                if any(m != m0 for m in group.multipliers):
                    mult = torch.tensor(group.multipliers, dtype=torch.float32, device=context.device).view(-1, 1, 1)
                if len(group.rows) == self.rows:
                    k = k_mod(k.to(work), mult).to(out_dtype)
                    v = v_mod(v.to(work), mult).to(out_dtype)
                    owned = True
                    continue
                idx = self._rows_index(pos, group_no, group, context.device, dim)
                new_k = k_mod(k.index_select(0, idx).to(work), mult).to(out_dtype)
                new_v = v_mod(v.index_select(0, idx).to(work), mult).to(out_dtype)
                if not owned:
                    k, v, owned = k.clone(), v.clone(), True
                k.index_copy_(0, idx, new_k)
                v.index_copy_(0, idx, new_v)
        self.compute_counts[dim] += 1
        return k, v

    def transform(self, context: torch.Tensor, dim: int, cacheable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(context_k, context_v)`` for a ``(rows, tokens, dim)`` context.

        Rows with no applicable hypernet come back unchanged; when nothing applies at all, ``context`` itself is
        returned twice (no copy).  ``cacheable=True`` (cross-attention: the text context is the same tensor in
        every layer and step) reuses the result computed for the same tensor; self-attention never caches.
        """
        if context.shape[0] != self.rows:
            raise ValueError(f"context has {context.shape[0]} rows but {self.rows} hypernet chains were given")
        if context.shape[-1] != dim:
            raise ValueError(f"dim {dim} does not match the context's last dimension {context.shape[-1]}")
        plan = self._plan(dim)
        if not plan:
            return context, context
        key = None
        if cacheable:
            key = (context.data_ptr(), tuple(context.shape), context.stride(), context.dtype, context.device,
                   _version(context), dim)
            hit = self._cache.get(key)
            if hit is not None:
                self.cache_hits += 1
                return hit[1], hit[2]
        k, v = self._run(plan, context, dim)
        if key is not None:
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
                 hypernets: PerSampleHypernets | None = None, **kwargs: Any) -> torch.Tensor:
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

    Call once after building the UNet (before ``torch.compile``).  Only UNets: A1111 never applies hypernets to
    the VAE's attention, so a VAE is refused.
    """
    if "Autoencoder" in type(unet).__name__ or not hasattr(unet, "set_attn_processor"):
        raise TypeError(f"install_hypernet_processors needs a diffusers UNet, got {type(unet).__name__}")
    count = len(unet.attn_processors)
    unet.set_attn_processor(HypernetAttnProcessor())
    return count
