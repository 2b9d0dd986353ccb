"""The UNet call of a batch: eager as today, or compiled per batch-size bucket with static hypernet slots.

Why one object: compiling needs several things to agree on every call — the rows padded to a bucket, the hypernets
loaded into that bucket's fixed tensors (:mod:`engine.hypernet.slot_pool`), the text side prepared outside the
graph, the same grad mode as at warm-up — and a call that cannot use a compiled graph (a net that needs the exact
path, a layout not compiled yet, an unexpected recompile) must still render, eagerly and correctly.  Callers hand
over ``(x, t, context, chains)`` and get the UNet's output for exactly those rows.

Policy for layouts met after warm-up: run eager (correct, slower) and queue the layout; the worker compiles queued
layouts when it is idle (:meth:`UNetRunner.compile_pending`), so no request waits ~40 s for a compile.  With
``compile_on_first_use`` it compiles at once instead (benchmarks, tests).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from engine.hypernet.attention import PerSampleHypernets
from engine.hypernet.model import Hypernetwork
from engine.hypernet.slot_plan import Layout, standard_layout
from engine.hypernet.slot_pool import HypernetSlotPool, StaticHypernets
from engine.worker.compile import CompileSettings, RowBuckets, compiled_unet, configure_compile_cache

__all__ = ["RunnerStats", "UNetRunner", "attention_dims"]

log = logging.getLogger("engine.worker.compile")

Chain = Sequence[tuple[Hypernetwork, float]]
ShapeKey = tuple[tuple[int, ...], int, torch.dtype]  # sample shape without rows, context tokens, dtype
GraphKey = tuple[int, Layout, ShapeKey]  # bucket rows, hypernet layout, shapes

_EAGER_CACHE = 8


def attention_dims(unet: torch.nn.Module) -> frozenset[int]:
    """The context widths the UNet's attention layers see: self-attention widths and the text width."""
    dims = {int(m.to_k.in_features) for m in unet.modules() if hasattr(m, "to_k") and hasattr(m, "is_cross_attention")}
    return frozenset(dims)


@dataclass
class RunnerStats:
    """What the runner did (tests, benchmarks, the worker's status)."""

    compiled_calls: int = 0
    eager_calls: int = 0
    exact_path_calls: int = 0  # a net needed the exact per-net path
    pending_calls: int = 0  # ran eager while their layout waits for an idle compile
    recompile_fallbacks: int = 0
    padded_rows: int = 0
    compiles: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds)
    compile_failure: str = ""  # why compiling was turned off for good (a compiler that fails on this machine)


class UNetRunner:
    """``runner(x, t, context, chains) -> UNet output`` for ``x.shape[0]`` rows, ``chains[i]`` row ``i``'s hypernets.

    ``dtype`` is the UNet's, ``hypernet_dtype`` what hypernets compute in.  Compiled only when
    ``settings.enabled``; then call :meth:`warm_up` before serving, under the grad mode the renderer uses
    (``torch.no_grad()``), and :meth:`compile_pending` when idle.
    """

    def __init__(self, unet: torch.nn.Module, *, device: torch.device | str, hypernet_dtype: torch.dtype,
                 settings: CompileSettings | None = None, dims: Iterable[int] | None = None) -> None:
        self.unet = unet
        self.device = torch.device(device)
        self.hypernet_dtype = hypernet_dtype
        self.settings = settings or CompileSettings()
        self.buckets = RowBuckets(self.settings.buckets)
        self.dims = frozenset(dims) if dims is not None else attention_dims(unet)
        self.text_dim = int(unet.config.cross_attention_dim)
        self.pool = HypernetSlotPool(self.device, hypernet_dtype, dims=self.dims, text_dim=self.text_dim,
                                     min_hidden_ratio=self.settings.min_hidden_ratio,
                                     max_layouts=self.settings.max_layouts_per_bucket,
                                     static_rows=self.settings.cudagraph_rows)
        self.stats = RunnerStats()
        self.pending: OrderedDict[GraphKey, None] = OrderedDict()
        self._ready: set[GraphKey] = set()
        self._compiled: dict[bool, Callable[..., Any]] = {}
        self._eager_hypernets: OrderedDict[tuple[Any, ...], tuple[PerSampleHypernets, list[Chain]]] = OrderedDict()
        self._padded: tuple[torch.Tensor, int, int, torch.Tensor] | None = None
        self._prepared: tuple[int, int, torch.Tensor] | None = None
        if self.settings.enabled:
            configure_compile_cache(self.settings.cache_dir)

    # ---- the call -----------------------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, chains: Sequence[Chain], *,
                 eager: bool = False) -> torch.Tensor:
        """The UNet's output for these rows; ``eager`` forces the eager path (a call with per-call module hooks)."""
        rows = x.shape[0]
        if len(chains) != rows or context.shape[0] != rows or t.shape[0] != rows:
            raise ValueError(f"{rows} sample rows need as many timesteps, contexts and chains "
                             f"(got {t.shape[0]}, {context.shape[0]}, {len(chains)})")
        if eager or not self.settings.enabled:
            return self._eager(x, t, context, chains)
        bucket = self.buckets.bucket_for(rows)
        if bucket is None:
            parts = [self(x[a:b], t[a:b], context[a:b], chains[a:b]) for a, b in self.buckets.chunks(rows)]
            return torch.cat(parts)
        shape: ShapeKey = (tuple(x.shape[1:]), int(context.shape[1]), x.dtype)
        slots = self.pool.acquire(bucket, chains, ready=lambda s: (bucket, s.layout, shape) in self._ready)
        if slots is None:
            self.stats.exact_path_calls += 1
            return self._eager(x, t, context, chains)
        key: GraphKey = (bucket, slots.layout, shape)
        self.stats.padded_rows += bucket - rows
        xp, tp, cp = _pad(x, bucket), _pad(t, bucket), self._pad_context(context, bucket)
        self._prepare_text(slots, cp)
        if key not in self._ready and self.settings.compile_on_first_use:
            self._compile(key, slots, xp, tp, cp)
        if key in self._ready:
            out = self._run_compiled(key, slots, xp, tp, cp)
            if out is not None:
                self.stats.compiled_calls += 1
                return out[:rows]
        elif self.settings.enabled:  # (not when the compile just attempted failed)
            self.pending[key] = None
            self.stats.pending_calls += 1
        return self._unet(self.unet, xp, tp, cp, slots)[:rows]

    def _turn_off(self, what: str, exc: BaseException) -> None:
        """Stop compiling for good: this machine's compiler (Triton, a driver, a torch bug) cannot do it, and an
        eager UNet renders the same images.  Logged once with the error; ``/status`` then shows no compiled calls."""
        log.error("%s; the UNet runs eager from now on (set engine.compile = \"off\" to skip the attempt): %s",
                  what, (str(exc).splitlines() or [type(exc).__name__])[0][:500], exc_info=exc)
        self.settings = replace(self.settings, enabled=False)
        self.stats.compile_failure = f"{what}: {type(exc).__name__}"
        self.pending.clear()
        self._ready.clear()
        self._compiled.clear()

    def _eager(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, chains: Sequence[Chain]) -> torch.Tensor:
        """Today's path: one PerSampleHypernets per distinct chain set (reused across steps, so the text cache hits)."""
        self.stats.eager_calls += 1
        key = tuple(tuple((id(hn), float(m)) for hn, m in chain) for chain in chains)
        found = self._eager_hypernets.get(key)
        if found is None:
            found = (PerSampleHypernets(chains, compute_dtype=self.hypernet_dtype), list(chains))  # chains keep ids
            self._eager_hypernets[key] = found
            if len(self._eager_hypernets) > _EAGER_CACHE:
                self._eager_hypernets.popitem(last=False)
        self._eager_hypernets.move_to_end(key)
        return self._unet(self.unet, x, t, context, found[0])

    @staticmethod
    def _unet(fn: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, hypernets: Any
              ) -> torch.Tensor:
        return fn(x, t, encoder_hidden_states=context, cross_attention_kwargs={"hypernets": hypernets}).sample

    def _pad_context(self, context: torch.Tensor, rows: int) -> torch.Tensor:
        """Padded context, reused while the caller passes the same unchanged tensor (so text results stay prepared)."""
        version = _version(context)
        if self._padded is not None:
            source, old_version, old_rows, padded = self._padded
            if source is context and old_version == version and old_rows == rows:
                return padded
        padded = _pad(context, rows)
        self._padded = (context, version, rows, padded)
        return padded

    def _prepare_text(self, slots: StaticHypernets, context: torch.Tensor) -> None:
        mark = (id(slots), slots.generation, context)
        if self._prepared is not None and self._prepared[0] == mark[0] and self._prepared[1] == mark[1] \
                and self._prepared[2] is context and slots.text_tokens == context.shape[1]:
            return
        slots.prepare_text(context)
        self._prepared = mark

    def _run_compiled(self, key: GraphKey, slots: StaticHypernets, x: torch.Tensor, t: torch.Tensor,
                      context: torch.Tensor) -> torch.Tensor | None:
        cudagraphs = self._uses_cudagraphs(key[0])
        fn = self._compiled_fn(cudagraphs)
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                if cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                out = self._unet(fn, x, t, context, slots)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            if "Detected recompile" not in str(exc):
                self._turn_off(f"the compiled UNet failed for {_describe(key)}", exc)
                return None
            log.warning("compiled UNet would recompile for %s; running eager and queueing it: %s",
                        _describe(key), str(exc).splitlines()[0])
            self._ready.discard(key)
            self.pending[key] = None
            self.stats.recompile_fallbacks += 1
            return None
        return out.clone() if cudagraphs else out  # a CUDA graph's output is overwritten by its next replay

    # ---- compiling -------------------------------------------------------------------------------------------

    def _uses_cudagraphs(self, bucket: int) -> bool:
        return self.device.type == "cuda" and bucket <= self.settings.cudagraph_rows

    def _compiled_fn(self, cudagraphs: bool) -> Callable[..., Any]:
        fn = self._compiled.get(cudagraphs)
        if fn is None:
            fn = self._compiled[cudagraphs] = compiled_unet(self.unet, self.settings, cudagraphs=cudagraphs)
        return fn

    def _compile(self, key: GraphKey, slots: StaticHypernets, x: torch.Tensor, t: torch.Tensor,
                 context: torch.Tensor) -> float:
        """Compile (and for CUDA graphs record) the graph of ``key`` with these inputs; seconds taken."""
        started = time.perf_counter()
        cudagraphs = self._uses_cudagraphs(key[0])
        try:
            fn = self._compiled_fn(cudagraphs)
            for _ in range(3 if cudagraphs else 1):  # CUDA graph trees warm up, then record
                if cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                self._unet(fn, x, t, context, slots)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # any compiler failure: render eager rather than not at all
            self._turn_off(f"compiling the UNet for {_describe(key)} failed", exc)
            return 0.0
        seconds = time.perf_counter() - started
        self._ready.add(key)
        self.pending.pop(key, None)
        self.stats.compiles.append((_describe(key), round(seconds, 3)))
        log.info("compiled the UNet for %s in %.1f s", _describe(key), seconds)
        return seconds

    def _compile_key(self, key: GraphKey) -> float:
        bucket, layout, (sample_shape, tokens, dtype) = key
        slots = self.pool.get(bucket, layout)
        x = torch.zeros(bucket, *sample_shape, device=self.device, dtype=dtype)
        t = torch.full((bucket,), 500.0, device=self.device)
        context = torch.zeros(bucket, tokens, self.text_dim, device=self.device, dtype=dtype)
        slots.prepare_text(context)
        self._prepared = None
        return self._compile(key, slots, x, t, context)

    def default_layouts(self) -> list[Layout]:
        """What warm-up compiles: no hypernets, and one ``[1, 2, 1]`` stage per activation of the settings."""
        return [(), *(standard_layout(self.dims, activation, min_hidden_ratio=self.settings.min_hidden_ratio)
                      for activation in self.settings.warm_activations)]

    def layout_of(self, chains: Sequence[Chain]) -> Layout | None:
        """The minimal layout of a batch (to warm up for batches like it); None when it takes the exact path."""
        return self.pool.minimal_layout(chains)

    def warm_up(self, latent_sizes: Sequence[tuple[int, int]], *, dtype: torch.dtype, tokens: Sequence[int] = (77,),
                buckets: Sequence[int] | None = None, layouts: Sequence[Layout] | None = None
                ) -> list[tuple[str, float]]:
        """Compile every bucket (default: all) for each latent size (``(height, width)`` in latent pixels, e.g.
        ``(64, 64)`` for 512x512), token count and hypernet layout (default: :meth:`default_layouts`).  Returns
        ``(what, seconds)`` per graph compiled; nothing when compilation is off.

        Call under the grad mode generation uses (``torch.no_grad()``), before the worker reports ready.
        """
        if not self.settings.enabled:
            return []
        channels = int(self.unet.config.in_channels)
        layouts = self.default_layouts() if layouts is None else list(layouts)
        done = []
        for bucket in buckets or self.buckets.sizes:
            for height, width in latent_sizes:
                for count in tokens:
                    for layout in layouts:
                        key: GraphKey = (bucket, layout, ((channels, height, width), count, dtype))
                        if not self.settings.enabled:  # a compile failed: no point in trying the others
                            return done
                        if key not in self._ready:
                            seconds = self._compile_key(key)
                            if key in self._ready:
                                done.append((_describe(key), round(seconds, 3)))
        return done

    def compile_pending(self, limit: int = 1) -> int:
        """Compile up to ``limit`` layouts that ran eager for want of a graph (call when idle); how many were done."""
        done = 0
        while self.pending and done < limit and self.settings.enabled:
            key = next(iter(self.pending))
            self._compile_key(key)
            done += 1
        return done

    def release(self) -> None:
        """Give back the device memory this runner holds beyond the UNet (the model is being parked in CPU memory):
        slot tensors, cached eager plans, compiled callables.  Graphs that were ready are queued again, so an idle
        worker recompiles them once the model is back (from the persistent cache when there is one)."""
        self.pending.update(dict.fromkeys(sorted(self._ready, key=_describe)))
        self._ready.clear()
        self._compiled.clear()
        self._eager_hypernets.clear()
        self._padded = self._prepared = None
        self.pool.clear()

    @property
    def ready(self) -> frozenset[GraphKey]:
        return frozenset(self._ready)


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with rows appended up to ``rows``, repeating its first row (finite inputs; their outputs are dropped)."""
    missing = rows - t.shape[0]
    if missing <= 0:
        return t
    return torch.cat([t, t[:1].expand(missing, *t.shape[1:])])


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return -1


def _describe(key: GraphKey) -> str:
    bucket, layout, (shape, tokens, dtype) = key
    stages = ", ".join(f"{dim}: {'+'.join(str(s.family) for s in specs)}" for dim, specs in layout) or "no hypernets"
    return f"{bucket} rows, latent {shape[1]}x{shape[2]}, {tokens} tokens, {str(dtype).removeprefix('torch.')}, {stages}"
