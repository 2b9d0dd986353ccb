"""Latents to PNGs: chunked VAE decodes give the images one call gives; PNGs encoded on threads are the same bytes, in
order, with A1111's parameters text."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from engine.worker.images import PngEncoder, decode_latents, png_bytes
from engine.worker.tiny import build_tiny


def test_chunked_decodes_equal_one_decode() -> None:
    vae = build_tiny().vae.eval()
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = decode_latents(vae, latents, chunk=5)
        chunked = decode_latents(vae, latents, chunk=2)
    assert [np.asarray(a).tobytes() for a in whole] == [np.asarray(b).tobytes() for b in chunked]
    assert [im.size for im in chunked] == [(64, 64)] * 5


def test_threaded_pngs_are_the_serial_bytes_in_order_with_their_parameters() -> None:
    rng = np.random.default_rng(7)
    items = [(Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)), f"image {k}, Seed: {k}")
             for k in range(6)]
    threaded = PngEncoder(threads=3).encode(items)
    assert threaded == [png_bytes(image, text) for image, text in items]
    for (image, text), data in zip(items, threaded, strict=True):
        back = Image.open(io.BytesIO(data))
        assert back.info["parameters"] == text and np.array_equal(np.asarray(back), np.asarray(image))
    assert PngEncoder(threads=1).encode(items[:2]) == threaded[:2]
