"""Pasting an A1111 parameters block: every pixel-deciding field carries over, the rest is named back.

The round trips render with the real engine (tiny model, CPU): a job's own PNG text, pasted, must give the same
settings and so the same pixels; and a block written the way A1111 writes it must render as the settings it names.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.config import LimitSettings
from bot.options import build_settings
from bot.paste import PasteError, paste_notes, pasted_options
from engine.protocol import GenerateRequest
from engine.worker.renderer import Renderer
from tests.requests import settings as make_settings

LIMITS = LimitSettings(min_size=64, max_size=768, default_width=64, default_height=64)
CIVITAI = """masterpiece, best quality, 1girl, (water elemental:1.2), <hypernet:waterElemental_10:0.7>
Negative prompt: (worst quality, low quality:1.4), EasyNegative
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 2516941211, Size: 512x768, \
Model hash: 6ce0161689, Model: anything-v3, Denoising strength: 0.55, Clip skip: 2, ENSD: 31337, \
Hires upscale: 2, Hires upscaler: Latent, TI hashes: "EasyNegative: c74b4e810b03", Version: v1.8.0"""


def test_a_civitai_block_gives_every_pixel_deciding_field_and_names_the_rest():
    pasted = pasted_options(CIVITAI)
    assert pasted.prompt.startswith("masterpiece") and pasted.prompt.endswith("<hypernet:waterElemental_10:0.7>")
    assert pasted.negative_prompt == "(worst quality, low quality:1.4), EasyNegative"
    assert (pasted.steps, pasted.sampler, pasted.cfg_scale, pasted.seed, pasted.width, pasted.height) == (
        28, "DPM++ 2M", 7.5, 2516941211, 512, 768)
    a = pasted.advanced
    assert (a.schedule, a.clip_skip, a.ensd, a.rng, a.variation_strength) == ("Karras", 2, 31337, "GPU", None)
    assert (pasted.model, pasted.model_hash) == ("anything-v3", "6ce0161689")
    assert pasted.ignored == ("Denoising strength", "Hires upscale", "Hires upscaler")


@pytest.mark.parametrize(("text", "message"), [
    ("just a prompt", "That does not look like A1111 parameters"),
    ("Steps: 20, Sampler: Euler a, Seed: 1, Size: 512x512", "no prompt line"),
    ("a cat\nSteps: lots, Sampler: Euler a, Seed: 1", "`Steps: lots` is not a whole number."),
    ("a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Size: big", "`Size: big` is not of the form WIDTHxHEIGHT."),
    ("a cat\nSteps: 20, CFG scale: nan, Seed: 1", "`CFG scale: nan` is not a finite number."),
])
def test_what_cannot_be_read_says_what_to_paste(text, message):
    with pytest.raises(PasteError, match=message):
        pasted_options(text)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer.load("tiny", device="cpu")


def render(renderer: Renderer, settings) -> tuple[np.ndarray, str]:
    [out] = renderer.generate([GenerateRequest(job_id=1, user_id=1, settings=settings)], {})
    return np.asarray(out.images[0]), Image.open(io.BytesIO(out.pngs[0])).text["parameters"]


def test_our_own_png_text_pasted_back_renders_the_same_image(renderer):
    original = make_settings("a (cat:1.3) in [snow:rain:0.5]", negative_prompt="blurry", seed=77, steps=3,
                             sampler="Euler a", schedule="Karras", cfg_scale=6.5, width=64, height=64, clip_skip=2,
                             subseed=5, subseed_strength=0.3, seed_resize_from=(48, 64), rng="CPU",
                             eta_noise_seed_delta=31337)
    pixels, text = render(renderer, original)
    pasted = build_settings(limits=LIMITS, checkpoint="tiny", models={}, **pasted_options(text).build_options())
    assert pasted == original
    again, again_text = render(renderer, pasted)
    assert np.array_equal(again, pixels) and again_text == text


def test_a1111s_own_block_renders_as_the_settings_it_names(renderer):
    # As A1111 1.9 writes it: no RNG field (the GPU generator, drawn as NV without CUDA), base name + schedule type.
    block = ("a lighthouse at dusk\nNegative prompt: fog\nSteps: 3, Sampler: Euler a, Schedule type: Karras, "
             "CFG scale: 7, Seed: 1234, Size: 64x64, Model: tiny, ENSD: 31337, Version: v1.9.4")
    pasted = build_settings(limits=LIMITS, checkpoint="tiny", models={}, **pasted_options(block).build_options())
    named = make_settings("a lighthouse at dusk", negative_prompt="fog", steps=3, sampler="Euler a", schedule="Karras",
                          cfg_scale=7.0, seed=1234, width=64, height=64, eta_noise_seed_delta=31337, rng="NV")
    from_paste, _ = render(renderer, pasted)
    assert pasted.rng == "GPU" and np.array_equal(from_paste, render(renderer, named)[0])


def test_notes_name_what_is_not_rendered_and_another_model():
    pasted = pasted_options(CIVITAI)
    assert paste_notes(pasted, "tiny") == (
        "Not rendered from the pasted parameters: Denoising strength, Hires upscale, Hires upscaler (Hypercord renders "
        "txt2img without hires fix or extensions).",
        "The pasted image was made with the model `anything-v3` [6ce0161689]; this render used `tiny`.")
    assert paste_notes(pasted_options("a cat\nSteps: 20, Seed: 1, Size: 64x64, Model: Tiny"), "tiny") == ()
