"""Pure parts of the Discord side: embed limits, image fitting."""

from __future__ import annotations

import io
import random

from PIL import Image

from bot.store import Job
from cogs.delivery import fit_image
from cogs.embeds import EMBED_TOTAL, embed_chars, infotext_for, result_embed, seed_label
from engine.render_settings import HypernetRef, RenderSettings
from tests.requests import settings


def done_job(render: RenderSettings, warnings: tuple[str, ...] = ()) -> Job:
    return Job(id=1, user_id=1, guild_id=1, channel_id=1, parent_job_id=None, origin="command", settings=render,
               status="done", error_kind=None, error_message=None, attempts=0, created_at=0.0, started_at=None,
               finished_at=None, duration_s=1.0, interaction_token=None, interaction_created_at=None, message_id=None,
               image_paths=(), warnings=warnings)


def test_result_embed_stays_within_discord_limits_for_huge_inputs() -> None:
    nets = tuple(HypernetRef("n" * 64, "0" * 64, 1.0) for _ in range(16))
    render = settings("p" * 6000, hypernets=nets, negative_prompt="n" * 6000, seed=1, steps=1, sampler="s" * 300,
                      width=64, height=64, count=4, checkpoint="c" * 500)
    job = done_job(render, warnings=("w" * 3000,))
    embed = result_embed(job, model_name="m" * 500)
    assert embed_chars(embed) <= EMBED_TOTAL and len(embed.description) <= 4096
    assert all(len(f.value) <= 1024 for f in embed.fields)


def test_seed_label_says_how_a1111_numbered_the_images_and_what_else_decides_the_noise() -> None:
    assert seed_label(settings(seed=7, count=3)) == "7–9"
    varied = settings(seed=7, count=3, subseed=40, subseed_strength=0.25, eta_noise_seed_delta=31337, rng="CPU",
                      clip_skip=2, seed_resize_from=(512, 768))
    assert seed_label(varied) == ("7 · variation 40–42 at 0.25 · resized from 512×768 · ENSD 31337 · CPU noise · "
                                  "clip skip 2")


def test_the_info_fallback_writes_the_same_fields_the_worker_does() -> None:
    render = settings("a cat", seed=7, count=2, subseed=40, subseed_strength=0.25, clip_skip=2, rng="NV")
    job = done_job(render)
    assert infotext_for(job, "tiny", 1) == ("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 7, Size: 512x512, "
                                            "Model: tiny, Variation seed: 41, Variation seed strength: 0.25, "
                                            "Clip skip: 2, RNG: NV")


def test_fit_image_re_encodes_and_downscales_until_it_fits() -> None:
    rng = random.Random(0)
    img = Image.frombytes("RGB", (256, 256), bytes(rng.randrange(256) for _ in range(256 * 256 * 3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = buf.getvalue()
    same, changed = fit_image(png, len(png), "x")
    assert same.data == png and not changed and same.filename == "x.png"
    small, changed = fit_image(png, 2000, "x")
    assert changed and len(small.data) <= 2000 and not small.filename.endswith(".png")
