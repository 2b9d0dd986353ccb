"""/imagine: validate, defer, and hand the job to the job service with a presenter for its message.

Why the command is built in ``__init__``: its option ranges (steps, size, CFG, count, multiplier) come from
``settings.limits`` at runtime, and Discord should show them (min/max in the client).  The parameters are typed
with ``app_commands.Range`` built from the settings, and :func:`bot.options.build_settings` checks them again,
because a client can send anything.  Order of work in the callback: one indexed registry read (the models usable in
this guild), pure validation, admission (shutdown, queue caps, rate limit), then ``defer()`` — all well inside
Discord's 3 seconds — and only then the database write and the engine.  Refusals before the deferral are private
(the tree's error handler answers them ephemerally) and create nothing.  The deferral is public (the job's message
is for everyone), so a refusal after it goes through :func:`bot.errors.defer_public`'s rule: the placeholder becomes
a neutral line and the reason is sent privately.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.advanced_options import AdvancedOptions
from bot.errors import UserFacingError, answer_error, defer_public
from bot.jobs.checkpoint_choice import CheckpointProblem, available, choose
from bot.options import (
    MAX_SEED,
    SAMPLER_NAMES,
    OptionError,
    build_settings,
    embedding_hints,
    size_choices,
    with_checkpoint_defaults,
)
from bot.paste import PastedOptions, PasteError, paste_notes, pasted_options
from bot.store import NewJob, prompt_names
from cogs.autocomplete import hypernet_autocomplete
from cogs.buttons import DYNAMIC_ITEMS
from cogs.models import checkpoint_autocomplete
from engine.render_settings import MAX_CLIP_SKIP, RenderSettings
from engine.samplers import SAMPLER_NAMES as ALL_SAMPLERS
from engine.samplers import SCHEDULE_TYPES

if TYPE_CHECKING:
    from bot.app import HypercordBot

log = logging.getLogger(__name__)

DESCRIPTIONS = {
    "prompt": "What to draw; add hypernetworks with <hypernet:NAME:0.8> or hypernet:NAME:0.8",
    "negative_prompt": "What to avoid",
    "seed": "Seed for the noise (-1 or empty = random)",
    "steps": "Sampling steps",
    "cfg_scale": "How closely to follow the prompt (CFG scale)",
    "sampler": "Sampler (any A1111 name, e.g. DPM++ 2M Karras)",
    "schedule": "Schedule type (A1111's; Automatic = the one the sampler name implies)",
    "clip_skip": "Clip skip (2 for most anime checkpoints)",
    "variation_seed": "Variation seed (-1 or empty = random); blended in at variation_strength",
    "variation_strength": "How much of the variation seed's noise to blend in (0-1)",
    "size": "Image size preset (width x height)",
    "width": "Width in pixels (multiple of 8; overrides size)",
    "height": "Height in pixels (multiple of 8; overrides size)",
    "count": "How many images (seeds seed, seed+1, ...)",
    "hypernet": "A hypernetwork to apply (instead of typing a tag)",
    "multiplier": "Strength of that hypernetwork (default: its default multiplier)",
    "model": "The model (checkpoint); default: the one the hypernetwork was trained on, else this server's",
}


def build_imagine_command(cog: ImagineCog) -> app_commands.Command[Any, ..., None]:
    """The /imagine command with ranges and choices taken from the bot's settings."""
    lim = cog.bot.settings.limits

    async def imagine(interaction: discord.Interaction[HypercordBot], prompt: str, negative_prompt: Optional[str] = None,  # noqa: UP045
                      seed: Optional[int] = None, steps: Optional[int] = None,  # noqa: UP045
                      cfg_scale: Optional[float] = None, sampler: Optional[str] = None,  # noqa: UP045
                      size: Optional[str] = None, width: Optional[int] = None,  # noqa: UP045
                      height: Optional[int] = None, count: Optional[int] = None,  # noqa: UP045
                      hypernet: Optional[str] = None, multiplier: Optional[float] = None,  # noqa: UP045
                      schedule: Optional[str] = None, clip_skip: Optional[int] = None,  # noqa: UP045
                      variation_seed: Optional[int] = None,  # noqa: UP045
                      variation_strength: Optional[float] = None,  # noqa: UP045
                      model: Optional[str] = None) -> None:  # noqa: UP045
        advanced = AdvancedOptions(schedule=schedule, clip_skip=clip_skip, variation_seed=variation_seed,
                                   variation_strength=variation_strength)
        await cog.run_imagine(interaction, prompt=prompt, model=model, negative_prompt=negative_prompt, seed=seed,
                              steps=steps, cfg_scale=cfg_scale, sampler=sampler, size=size, width=width, height=height,
                              count=count, hypernet=hypernet, multiplier=multiplier, advanced=advanced)

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
        "schedule": Optional[str],  # noqa: UP045
        "clip_skip": Optional[app_commands.Range[int, 1, MAX_CLIP_SKIP]],  # noqa: UP045
        "variation_seed": Optional[app_commands.Range[int, -1, MAX_SEED]],  # noqa: UP045
        "variation_strength": Optional[app_commands.Range[float, 0.0, 1.0]],  # noqa: UP045
        "model": Optional[str],  # noqa: UP045
        "return": None,
    }
    samplers = list(dict.fromkeys([lim.default_sampler, *SAMPLER_NAMES, *ALL_SAMPLERS]))

    async def sampler_autocomplete(interaction: discord.Interaction[HypercordBot], current: str,
                                   ) -> list[app_commands.Choice[str]]:
        """Every A1111 name containing the typed text, the common ones first (Discord shows at most 25)."""
        folded = current.strip().casefold()
        return [app_commands.Choice(name=s, value=s) for s in samplers if folded in s.casefold()][:25]

    func: Any = app_commands.describe(**DESCRIPTIONS)(imagine)
    func = app_commands.choices(size=[app_commands.Choice(name=s, value=s) for s in size_choices(lim)],
                                schedule=[app_commands.Choice(name=s, value=s) for s in SCHEDULE_TYPES])(func)
    func = app_commands.autocomplete(hypernet=hypernet_autocomplete, sampler=sampler_autocomplete,
                                     model=checkpoint_autocomplete)(func)
    func = app_commands.guild_only()(func)
    return app_commands.Command(name="imagine", description="Render an image with Stable Diffusion (+ hypernetworks)",
                                callback=func)


class ImagineCog(commands.Cog, name="Imagine"):
    """The /imagine command (its result buttons are registered with it, in :func:`setup`)."""

    def __init__(self, bot: HypercordBot) -> None:
        self.bot = bot
        self.command = build_imagine_command(self)
        self.context_menu = app_commands.ContextMenu(name="Render these parameters", callback=self.render_message)
        self.context_menu.guild_only = True

    @app_commands.command(name="paste", description="Render an A1111 parameters block (PNG Info, a model page)")
    @app_commands.guild_only()
    async def paste(self, interaction: discord.Interaction[HypercordBot]) -> None:
        """Opens a form with one multi-line field: a block keeps its line breaks there."""
        await interaction.response.send_modal(PasteModal(self))

    async def render_message(self, interaction: discord.Interaction[HypercordBot], message: discord.Message) -> None:
        """The "Render these parameters" message command: the message's text as a pasted block."""
        await self.run_paste(interaction, message.content, origin="paste")

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command)
        self.bot.tree.add_command(self.context_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)
        self.bot.tree.remove_command(self.context_menu.name, type=self.context_menu.type)

    async def installed(self, guild_id: int | None) -> dict[str, Any]:
        """What prompts of this guild may name: hypernets, LoRAs (names and aliases) and embeddings, by name."""
        store = self.bot.store
        return {"models": await store.hypernets.usable(guild_id),
                "loras": prompt_names((await store.loras.usable(guild_id)).values()),
                "embeddings": await store.embeddings.usable(guild_id)}

    async def run_imagine(self, interaction: discord.Interaction[HypercordBot], *, prompt: str, model: str | None = None,
                          **options: Any) -> None:
        """/imagine's callback: the options as typed, checked by :func:`bot.options.build_settings`."""
        installed = await self.installed(interaction.guild_id)
        try:
            settings, why = await self.settings_on_checkpoint(interaction.guild_id, installed, model,
                                                              {"prompt": prompt, **options})
        except OptionError as exc:
            raise UserFacingError(str(exc)) from None
        await self.start_job(interaction, settings, origin="command", notes=why + _hints(settings, installed))

    async def run_paste(self, interaction: discord.Interaction[HypercordBot], text: str, *, origin: str) -> None:
        """A pasted A1111 parameters block rendered as a job; fields it cannot render are noted on the result.

        The pasted ``Model`` / ``Model hash`` is used when that checkpoint is installed and offered here."""
        try:
            pasted = pasted_options(text)
            installed = await self.installed(interaction.guild_id)
            settings, why = await self.settings_on_checkpoint(interaction.guild_id, installed,
                                                              await self.pasted_model(interaction.guild_id, pasted),
                                                              pasted.build_options())
        except (PasteError, OptionError) as exc:
            raise UserFacingError(str(exc)) from None
        catalog = self.bot.jobs.catalog
        entry = catalog.get(settings.checkpoint) if catalog else None
        label = entry.label if entry else self.bot.settings.models.model_name or settings.checkpoint
        await self.start_job(interaction, settings, origin=origin,
                             notes=paste_notes(pasted, label) + why + _hints(settings, installed))

    async def pasted_model(self, guild_id: int | None, pasted: PastedOptions) -> str | None:
        """The installed checkpoint a pasted block names (its hash, else its name), if this server offers it."""
        catalog = self.bot.jobs.catalog
        if catalog is None or not (pasted.model or pasted.model_hash):
            return None
        entry = catalog.trained_on(pasted.model_hash, pasted.model)
        offered = {e.name for e in available(catalog, await self.bot.store.checkpoints.get(guild_id))}
        return entry.name if entry is not None and entry.name in offered else None

    async def settings_on_checkpoint(self, guild_id: int | None, installed: dict[str, Any], model: str | None,
                                     options: dict[str, Any]) -> tuple[RenderSettings, tuple[str, ...]]:
        """The job's settings on its checkpoint (:func:`bot.jobs.checkpoint_choice.choose`), with that checkpoint's
        defaults for options left empty; and the note saying which model and why (when it was not named)."""
        bot = self.bot
        limits, catalog = bot.settings.limits, bot.jobs.catalog
        if catalog is None:
            return build_settings(limits=limits, checkpoint=bot.settings.models.checkpoint, **installed, **options), ()
        first = build_settings(limits=limits, checkpoint=catalog.default, **installed, **options)
        try:
            choice = choose(catalog, await bot.store.checkpoints.get(guild_id), named=model, settings=first,
                            hypernets=installed["models"])
        except CheckpointProblem as exc:
            raise UserFacingError(str(exc)) from None
        filled = with_checkpoint_defaults(options, choice.entry.defaults)
        settings = build_settings(limits=limits, checkpoint=choice.entry.name, **installed, **filled)
        return settings, (choice.note,) if choice.note else ()

    async def start_job(self, interaction: discord.Interaction[HypercordBot], settings: RenderSettings, *,
                        origin: str, notes: tuple[str, ...] = ()) -> None:
        """Admit, defer publicly, store and submit; refusals go privately to the member (see the module docstring)."""
        bot = self.bot
        bot.jobs.admit(interaction.user.id)  # a full queue or the rate limit is answered privately, before deferring
        message_id = await defer_public(interaction)
        new = NewJob(user_id=interaction.user.id, guild_id=interaction.guild_id, channel_id=interaction.channel_id or 0,
                     settings=settings, origin=origin, interaction_token=interaction.token,
                     interaction_created_at=interaction.created_at.timestamp(), notes=notes)
        presenter = bot.presenters.for_interaction(interaction, message_id=message_id)
        # A refusal from here on (a model removed meanwhile, the database locked, the engine refusing) reaches the
        # tree's error handler, which replaces the public placeholder with a neutral line and answers privately.
        await bot.jobs.start(new, presenter, message_id=message_id)


def _hints(settings: RenderSettings, installed: dict[str, Any]) -> tuple[str, ...]:
    """Did-you-mean notes for words one edit away from an installed embedding (shown with the result)."""
    return embedding_hints(f"{settings.encoder_prompt} {settings.negative_prompt}", installed["embeddings"])


class PasteModal(discord.ui.Modal, title="Render A1111 parameters"):
    """One multi-line field for a parameters block (slash options cannot hold line breaks)."""

    parameters: discord.ui.TextInput[PasteModal] = discord.ui.TextInput(
        label="Parameters (from PNG Info or a model page)", style=discord.TextStyle.paragraph, max_length=4000,
        custom_id="parameters", placeholder="a lighthouse at dusk\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, "
                                            "CFG scale: 7, Seed: 1234, Size: 512x512")

    def __init__(self, cog: ImagineCog) -> None:
        super().__init__(timeout=900)
        self.cog = cog

    async def on_submit(self, interaction: discord.Interaction[HypercordBot], /) -> None:  # type: ignore[override]
        try:
            await self.cog.run_paste(interaction, self.parameters.value, origin="paste")
        except Exception as exc:  # a modal's errors never reach the tree's handler
            await answer_error(interaction, exc, where="/paste")


async def setup(bot: HypercordBot) -> None:
    bot.add_dynamic_items(*DYNAMIC_ITEMS)
    await bot.add_cog(ImagineCog(bot))
