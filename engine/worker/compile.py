"""Compiling the UNet: the settings, the batch-size buckets, the persistent cache, the compiled callables.

Why buckets: a compiled graph is specialised on its input shapes, and compiling one costs 35-47 s on an H200
(``shared/docs/design.md``).  So model rows are padded up to a few fixed counts — by default 2/4/8/16 rows, i.e. 1/2/4/8
images with CFG (each image is a cond and an uncond row; AND prompts add rows) — and each bucket is compiled once, at
start-up (:meth:`engine.worker.unet_runner.UNetRunner.warm_up`).  Padded rows repeat the first row's input and carry
no hypernet; their outputs are dropped.  More rows than the largest bucket run in chunks of the largest bucket.

Why ``fullgraph``: a graph break is a Python round trip in every step and, under CUDA graphs, splits the graph; the
hypernet processor is written so the whole UNet is one graph (``tests/engine/worker/test_compile.py``).

CUDA graphs (``mode="reduce-overhead"``) remove the launch overhead that dominates at 1-2 images; they stay valid
only while every input keeps its address, which the static hypernet slots guarantee (``copy_`` into fixed tensors).
They are used for buckets of at most ``cudagraph_rows`` rows.

Compilation is off by default on the CPU (the tests' tiny model gains nothing and the first compile costs far more
than it saves) and on by default on CUDA; ``HYPERCORD_COMPILE=off`` (or the setting) turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEFAULT_BUCKETS", "CompileSettings", "RowBuckets", "auto_max_batch", "compiled_unet",
           "configure_compile_cache"]

DEFAULT_BUCKETS = (2, 4, 8, 16)  # model rows: 1/2/4/8 images with CFG
_OPTIONS = ("auto", "on", "off", "cudagraphs")


@dataclass(frozen=True, slots=True)
class CompileSettings:
    """How the worker runs its UNet.

    ``enabled``: compile at all (off: eager, exactly today's path).  ``backend``/``mode``: ``torch.compile``'s (tests
    use ``backend="eager"`` or ``"aot_eager"``).  ``cudagraph_rows``: buckets of at most this many rows use CUDA graphs
    (0 = never).  ``buckets``: model-row counts compiled.  ``cache_dir``: the persistent compile cache (inductor FX
    graphs and Triton kernels survive restarts there).  ``compile_on_first_use``: a bucket/hypernet layout met for
    the first time compiles right away (benchmarks, tests) instead of running eager and waiting for an idle moment
    (``UNetRunner.compile_pending``).  ``min_hidden_ratio``: the smallest hidden capacity of a hypernet stage, in
    units of the layer's width (2.0 = A1111's default ``[1, 2, 1]``; smaller nets are zero-padded into it).
    ``warm_activations``: hypernet families ``[1, 2, 1]`` with these activations are compiled at warm-up.
    """

    enabled: bool = False
    backend: str = "inductor"
    mode: str | None = None
    cudagraph_rows: int = 0
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    cache_dir: str | None = None
    compile_on_first_use: bool = False
    min_hidden_ratio: float = 2.0
    max_layouts_per_bucket: int = 4
    warm_activations: tuple[str, ...] = ("relu",)
    recompile_limit: int = 64

    def __post_init__(self) -> None:
        if not self.buckets or any(b < 1 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"compile buckets must be increasing positive row counts, got {list(self.buckets)}")
        if self.cudagraph_rows < 0:
            raise ValueError(f"cudagraph_rows must be 0 or more, got {self.cudagraph_rows}")

    @classmethod
    def from_option(cls, option: str, device: torch.device | str, **overrides: Any) -> CompileSettings:
        """``auto`` (on for CUDA, off elsewhere), ``on``, ``off`` or ``cudagraphs`` (on, with CUDA graphs for buckets
        of up to 4 rows = 2 images); ``HYPERCORD_COMPILE`` in the environment overrides ``option``."""
        option = os.environ.get("HYPERCORD_COMPILE", option).strip().lower() or "auto"
        if option not in _OPTIONS:
            raise ValueError(f"compile option must be one of {', '.join(_OPTIONS)}, got {option!r}")
        cuda = torch.device(device).type == "cuda"
        enabled = option in ("on", "cudagraphs") or (option == "auto" and cuda)
        settings = cls(enabled=enabled, cudagraph_rows=4 if option == "cudagraphs" and cuda else 0)
        return replace(settings, **overrides)


def auto_max_batch(max_batch: int, device: torch.device | str) -> int:
    """Images per batch: the configured number, or for 0 (auto) 8 on CUDA — with CFG that fills the largest bucket,
    16 rows, where a GPU's throughput per image is best — and 4 elsewhere (a CPU gains nothing from bigger batches)."""
    if max_batch > 0:
        return max_batch
    return DEFAULT_BUCKETS[-1] // 2 if torch.device(device).type == "cuda" else 4


class RowBuckets:
    """Model-row counts padded up to fixed sizes (see the module docstring)."""

    def __init__(self, sizes: Sequence[int] = DEFAULT_BUCKETS) -> None:
        self.sizes = tuple(sizes)

    def bucket_for(self, rows: int) -> int | None:
        """The smallest bucket holding ``rows``; None when it exceeds the largest (split with :meth:`chunks`)."""
        return next((size for size in self.sizes if size >= rows), None)

    def chunks(self, rows: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` slices of at most the largest bucket covering ``rows``."""
        largest = self.sizes[-1]
        for start in range(0, rows, largest):
            yield start, min(rows, start + largest)


def configure_compile_cache(cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """Point inductor's and Triton's caches at ``cache_dir`` (created) so compiled kernels survive restarts.

    Environment variables already set by the operator win.  Call before the first compile.
    """
    if cache_dir is None:
        return None
    path = Path(cache_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(path / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return path


def compiled_unet(unet: torch.nn.Module, settings: CompileSettings, *, cudagraphs: bool) -> Callable[..., Any]:
    """``torch.compile`` of the UNet with the settings' backend: fullgraph, static shapes, CUDA graphs if asked.

    Dynamo's recompile limit is raised (one graph per bucket × hypernet layout × latent size × token count).
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, settings.recompile_limit)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           4 * settings.recompile_limit)
    mode = "reduce-overhead" if cudagraphs else settings.mode
    if settings.backend != "inductor":
        return torch.compile(unet, backend=settings.backend, fullgraph=True, dynamic=False)
    return torch.compile(unet, mode=mode, fullgraph=True, dynamic=False)
