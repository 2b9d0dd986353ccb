"""Latents to pictures: the VAE decode in chunks, and the PNG with A1111's ``parameters`` text.

Why chunks: one VAE call per image wastes the GPU (a decode is a large convolution stack that batches well), one
call for a whole batch of eight 512x512 images needs several GB of activations; a chunk of a few images is both fast
and bounded.  Each chunk is checked for non-finite pixels once (one host sync per chunk, not per image): some VAEs
overflow in half precision, and then the VAE is upcast to float32 for good and the chunk decoded again — what A1111
does with its "upcast VAE" fallback.

Why PNGs on threads: encoding is zlib work of ~40 ms per 512x512 image, so 8 images in a row cost about a third of
a second of GPU idle time per batch; Pillow's encoder releases the GIL, so a few threads share the batch
(``PngEncoder``; figures in ``docs/performance.md``, ``bench/png_threads.py``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image, PngImagePlugin

__all__ = ["PngEncoder", "decode_latents", "png_bytes"]


def _decode_chunk(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    cfg = vae.config
    z = latents / cfg.scaling_factor
    if getattr(cfg, "shift_factor", None):
        z = z + cfg.shift_factor
    pixels = vae.decode(z.to(vae.dtype)).sample.float()
    if vae.dtype != torch.float32 and not bool(torch.isfinite(pixels).all()):
        vae.to(torch.float32)
        pixels = vae.decode(z.float()).sample
    return ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, *, chunk: int = 4) -> list[Image.Image]:
    """RGB images of ``latents`` (N, C, h, w), decoded ``chunk`` at a time (one device-to-host copy per chunk)."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    images: list[Image.Image] = []
    for start in range(0, latents.shape[0], chunk):
        array = _decode_chunk(vae, latents[start:start + chunk]).permute(0, 2, 3, 1).cpu().numpy()
        images += [Image.fromarray(a, mode="RGB") for a in array]
    return images


def png_bytes(image: Image.Image, parameters: str) -> bytes:
    """The PNG of ``image`` carrying A1111's ``parameters`` text chunk (what A1111's PNG Info reads)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


class PngEncoder:
    """A batch's PNGs encoded on up to ``threads`` threads (default: the CPU count, at most 8), in order."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = max(1, threads if threads is not None else min(8, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None

    def encode(self, items: Sequence[tuple[Image.Image, str]]) -> list[bytes]:
        """``png_bytes(image, parameters)`` of every item, in the items' order."""
        if len(items) <= 1 or self.threads == 1:
            return [png_bytes(image, text) for image, text in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="png")
        return list(self._pool.map(lambda item: png_bytes(*item), items))
