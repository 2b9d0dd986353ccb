"""Pure parts of the Discord side: embed limits, image fitting."""

from __future__ import annotations

import io
import random

from PIL import Image

from bot.store import Job
from cogs.delivery import fit_image
from cogs.embeds import EMBED_TOTAL, embed_chars, result_embed
from engine.render_settings import HypernetRef
from tests.requests import settings


def test_result_embed_stays_within_discord_limits_for_huge_inputs() -> None:
    nets = tuple(HypernetRef("n" * 64, "0" * 64, 1.0) for _ in range(16))
    render = settings("p" * 6000, hypernets=nets, negative_prompt="n" * 6000, seed=1, steps=1, sampler="s" * 300,
                      width=64, height=64, count=4, checkpoint="c" * 500)
    job = Job(id=1, user_id=1, guild_id=1, channel_id=1, parent_job_id=None, origin="command", settings=render,
              status="done", error_kind=None, error_message=None, attempts=0,
              created_at=0.0, started_at=None, finished_at=None, duration_s=1.0, interaction_token=None,
              interaction_created_at=None, message_id=None, image_paths=(), warnings=("w" * 3000,))
    embed = result_embed(job, model_name="m" * 500)
    assert embed_chars(embed) <= EMBED_TOTAL and len(embed.description) <= 4096
    assert all(len(f.value) <= 1024 for f in embed.fields)


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
