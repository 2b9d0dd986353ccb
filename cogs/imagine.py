"""/imagine: validate, defer, store, submit, and hand the job to the JobService (progress, result, buttons).

Why the command is built in ``__init__``: its option ranges (steps, size, CFG, count, multiplier) come from
``settings.limits`` at runtime, and Discord should show them (min/max in the client).  The parameters are typed
with ``app_commands.Range`` built from the settings, and :func:`bot.options.build_plan` checks them again, because
a client can send anything.  Order of work in the callback: pure validation and one indexed registry read (names
usable in this guild), rate limit, then ``defer()`` — all well inside Discord's 3 seconds — and only then the
database write and the engine.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.autocomplete import hypernet_autocomplete
from bot.errors import UserFacingError
from bot.jobs import JobService
from bot.options import MAX_SEED, SAMPLER_NAMES, OptionError, build_plan, size_choices
from bot.store import JobHypernet, NewJob

if TYPE_CHECKING:
    from bot.app import HypercordBot

log = logging.getLogger(__name__)

DESCRIPTIONS = {
    "prompt": "What to draw; add hypernetworks with <hypernet:NAME:0.8> or hypernet:NAME:0.8",
    "negative_prompt": "What to avoid",
    "seed": "Seed for the noise (-1 or empty = random)",
    "steps": "Sampling steps",
    "cfg_scale": "How closely to follow the prompt (CFG scale)",
    "sampler": "Sampler (A1111 names)",
    "size": "Image size preset (width x height)",
    "width": "Width in pixels (multiple of 8; overrides size)",
    "height": "Height in pixels (multiple of 8; overrides size)",
    "count": "How many images (seeds seed, seed+1, ...)",
    "hypernet": "A hypernetwork to apply (instead of typing a tag)",
    "multiplier": "Strength of that hypernetwork (default: its default multiplier)",
}


def build_imagine_command(cog: ImagineCog) -> app_commands.Command[Any, ..., None]:
    """The /imagine command with ranges and choices taken from the bot's settings."""
    lim = cog.bot.settings.limits

    async def imagine(interaction: discord.Interaction, prompt: str, negative_prompt: Optional[str] = None,  # noqa: UP045
                      seed: Optional[int] = None, steps: Optional[int] = None,  # noqa: UP045
                      cfg_scale: Optional[float] = None, sampler: Optional[str] = None,  # noqa: UP045
                      size: Optional[str] = None, width: Optional[int] = None,  # noqa: UP045
                      height: Optional[int] = None, count: Optional[int] = None,  # noqa: UP045
                      hypernet: Optional[str] = None, multiplier: Optional[float] = None) -> None:  # noqa: UP045
        await cog.run_imagine(interaction, prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps,
                              cfg_scale=cfg_scale, sampler=sampler, size=size, width=width, height=height, count=count,
                              hypernet=hypernet, multiplier=multiplier)

    # Real objects instead of strings: discord.py reads these to declare option types and ranges to Discord.
    imagine.__annotations__ = {
        "interaction": discord.Interaction, "prompt": app_commands.Range[str, 1, min(6000, lim.max_prompt_length + 400)],
        "negative_prompt": Optional[app_commands.Range[str, 0, lim.max_prompt_length]],  # noqa: UP045
        "seed": Optional[app_commands.Range[int, -1, MAX_SEED]],  # noqa: UP045
        "steps": Optional[app_commands.Range[int, lim.min_steps, lim.max_steps]],  # noqa: UP045
        "cfg_scale": Optional[app_commands.Range[float, lim.min_cfg_scale, lim.max_cfg_scale]],  # noqa: UP045
        "sampler": Optional[str], "size": Optional[str],  # noqa: UP045
        "width": Optional[app_commands.Range[int, lim.min_size, lim.max_size]],  # noqa: UP045
        "height": Optional[app_commands.Range[int, lim.min_size, lim.max_size]],  # noqa: UP045
        "count": Optional[app_commands.Range[int, 1, lim.max_count]],  # noqa: UP045
        "hypernet": Optional[str],  # noqa: UP045
        "multiplier": Optional[app_commands.Range[float, lim.min_multiplier, lim.max_multiplier]],  # noqa: UP045
        "return": None,
    }
    samplers = list(dict.fromkeys([lim.default_sampler, *SAMPLER_NAMES]))[:25]
    func: Any = app_commands.describe(**DESCRIPTIONS)(imagine)
    func = app_commands.choices(sampler=[app_commands.Choice(name=s, value=s) for s in samplers],
                                size=[app_commands.Choice(name=s, value=s) for s in size_choices(lim)])(func)
    func = app_commands.autocomplete(hypernet=hypernet_autocomplete)(func)
    func = app_commands.guild_only()(func)
    return app_commands.Command(name="imagine", description="Render an image with Stable Diffusion (+ hypernetworks)",
                                callback=func)


class ImagineCog(commands.Cog, name="Imagine"):
    """Owns the JobService and the /imagine command."""

    def __init__(self, bot: HypercordBot) -> None:
        self.bot = bot
        self.jobs = JobService(bot)
        self.command = build_imagine_command(self)
        self._reconcile_task: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command)
        self._reconcile_task = asyncio.create_task(self._reconcile_when_ready(), name="reconcile-jobs")

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)
        if self._reconcile_task is not None:
            self._reconcile_task.cancel()
        await self.jobs.drain(timeout=15.0)

    async def _reconcile_when_ready(self) -> None:
        await self.bot.wait_until_ready()  # the engine is started and the HTTP session open by then
        await self.jobs.reconcile()

    async def run_imagine(self, interaction: discord.Interaction, *, prompt: str, **options: Any) -> None:
        lim = self.bot.settings.limits
        if not self.bot.accepting_jobs:
            raise UserFacingError("The bot is shutting down and not taking new jobs; try again in a minute.")
        guild_id = interaction.guild_id
        names = set(await self.bot.store.hypernets.visible_names(guild_id))
        hypernet = (options.get("hypernet") or "").strip()
        defaults = {}
        if hypernet in names:
            row = await self.bot.store.hypernets.by_name(hypernet, guild_id)
            if row is not None:
                defaults[row.name] = row.default_multiplier
        try:
            plan = build_plan(prompt=prompt, limits=lim, available=names, default_multipliers=defaults, **options)
        except OptionError as exc:
            raise UserFacingError(str(exc)) from None
        self.bot.engine.check_capacity(interaction.user.id)  # a full queue is answered privately, before deferring
        decision = self.bot.ratelimiter.consume(interaction.user.id)
        if not decision.allowed:
            raise UserFacingError(f"You are generating quickly: try again in {max(1, round(decision.retry_after))} s.")
        response = await interaction.response.defer(thinking=True)
        message_id = getattr(response, "message_id", None)
        nets = []
        for tag in plan.tags:
            row = await self.bot.store.hypernets.by_name(tag.name, guild_id)
            if row is None or not row.enabled:  # removed between validation and now
                await interaction.edit_original_response(content=f"⚠️ The hypernetwork `{tag.name}` was just removed "
                                                         "or disabled; pick another one.")
                return
            nets.append(JobHypernet(row.name, row.sha256, tag.multiplier))
        new = NewJob(user_id=interaction.user.id, guild_id=guild_id, channel_id=interaction.channel_id or 0,
                     prompt=plan.prompt_line, seed=plan.seed, steps=plan.steps, cfg_scale=plan.cfg_scale,
                     sampler=plan.sampler, width=plan.width, height=plan.height,
                     checkpoint=self.bot.settings.models.checkpoint, negative_prompt=plan.negative_prompt,
                     hypernets=tuple(nets), count=plan.count, origin="command", interaction_token=interaction.token,
                     interaction_created_at=interaction.created_at.timestamp())
        await self.jobs.start(interaction, new, message_id=message_id)


async def setup(bot: HypercordBot) -> None:
    from cogs.views import DYNAMIC_ITEMS

    bot.add_dynamic_items(*DYNAMIC_ITEMS)
    await bot.add_cog(ImagineCog(bot))
