"""Pure parts behind the cogs: option rules, sampler list, multiplier steps, embed limits, image fitting."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from bot.config import LimitSettings
from bot.delivery import fit_image
from bot.embeds import EMBED_TOTAL, embed_chars, result_embed
from bot.options import SAMPLER_NAMES, OptionError, build_plan, size_choices, step_multiplier
from bot.store import Job, JobHypernet

LIMITS = LimitSettings(max_size=768, max_steps=50)


def test_bot_sampler_names_are_known_to_the_engine() -> None:
    from engine.samplers import SAMPLER_NAMES as ENGINE_NAMES

    assert set(SAMPLER_NAMES) <= set(ENGINE_NAMES) and len(SAMPLER_NAMES) <= 25


def test_size_choices_follow_the_limits() -> None:
    assert size_choices(LIMITS)[0] == "512x512"
    assert "1024x1024" not in size_choices(LIMITS) and "768x512" in size_choices(LIMITS)


def test_plan_defaults_and_tags() -> None:
    plan = build_plan(prompt="a cat <hypernet:foo:0.5>", limits=LIMITS, available={"foo"}, hypernet="foo",
                      multiplier=1.25, seed=3)
    assert plan.prompt_line == "a cat <hypernet:foo:0.5> <hypernet:foo:1.25>"
    assert (plan.steps, plan.width, plan.height, plan.seed, plan.sampler) == (20, 512, 512, 3, "Euler a")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cfg_scale": 31.0}, "CFG scale must be between 1 and 30"),
    ({"size": "big"}, "is not of the form WIDTHxHEIGHT"),
    ({"seed": 2**40}, "Seed must be between 0 and 4294967295"),
    ({"sampler": "Nope"}, "Unknown sampler `Nope`"),
    ({"hypernet": "foo", "multiplier": float("nan")}, "must be between -1 and 2"),
])
def test_plan_refusals(kwargs, message) -> None:
    with pytest.raises(OptionError, match=message):
        build_plan(prompt="a cat", limits=LIMITS, available={"foo"}, **kwargs)


def test_multiplier_steps_clamp_and_stop_at_bounds() -> None:
    assert step_multiplier(0.7, 1, LIMITS) == 0.8
    assert step_multiplier(1.95, 1, LIMITS) == 2.0
    assert step_multiplier(2.0, 1, LIMITS) is None and step_multiplier(-1.0, -1, LIMITS) is None


def test_result_embed_stays_within_discord_limits_for_huge_inputs() -> None:
    nets = tuple(JobHypernet("n" * 100, "0" * 64, 1.0) for _ in range(16))
    job = Job(id=1, user_id=1, guild_id=1, channel_id=1, parent_job_id=None, origin="command", prompt="p" * 6000,
              negative_prompt="n" * 6000, hypernets=nets, seed=1, steps=1, cfg_scale=7.0, sampler="s" * 300, width=64,
              height=64, count=4, checkpoint="c" * 500, status="done", error_kind=None, error_message=None, attempts=0,
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
