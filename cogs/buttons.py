"""Result and progress buttons as ``DynamicItem``s: their custom_id holds only ids, everything else is in SQLite.

Why DynamicItems: a button rebuilt from its custom_id (``hc:reroll:123``, ``hc:mul:123:0:+``) works on every old
message after the bot restarts, which the most common complaint about image bots ("This interaction failed") is
about.  Layout (Discord allows 5 rows of 5 buttons): row 0 = Reroll, Info, Set multiplier…; rows 1-4 = one row per
strength — each hypernet's multiplier, then each LoRA's weight (``RenderSettings.strengths``) — with − and +.
Strengths beyond the fourth are changed with the modal (which shows up to five).

A job started from a button belongs to whoever pressed it and is answered with a new message (the deferred
response to the click), whose first line points back at the job it came from.  A reroll is the parent's settings
with a new seed; a multiplier change keeps the seed, so only the multiplier changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import logging
import re
from typing import Any, ClassVar, Self

import discord
from PIL import Image

from bot.app import HypercordBot
from bot.checks import is_guild_manager
from bot.config import LimitSettings
from bot.errors import UserFacingError, answer_error, defer_public, send_ephemeral
from bot.jobs import derived_job
from bot.options import OptionError, check_multiplier, random_seed, step_multiplier
from bot.store import Job
from cogs.embeds import checkpoint_label, clip, infotext_for
from cogs.ui import ComponentInteraction as Interaction
from cogs.ui import hypercord
from engine.prompt import format_multiplier
from engine.render_settings import RenderSettings

__all__ = ["DYNAMIC_ITEMS", "progress_view", "result_view", "start_derived"]

log = logging.getLogger(__name__)
_ROWS_FOR_STRENGTHS = 4
_MODAL_INPUTS = 5


def _short(name: str, limit: int = 30) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


async def _load(interaction: Interaction, job_id: int) -> Job | None:
    job = await hypercord(interaction).store.jobs.get(job_id)
    if job is None:
        await send_ephemeral(interaction, f"Job #{job_id} no longer exists (its owner may have deleted their history).")
    return job


async def start_derived(interaction: Interaction, parent: Job, settings: RenderSettings, *, origin: str,
                        label: str) -> None:
    """Start a job from a button or modal: check, admit, defer (a new public message), store, submit, follow.

    Refusals before the deferral are plain private replies; one after it (the database locked, the engine refusing,
    a bug) goes through :func:`bot.errors.answer_error`, which turns the public placeholder into a neutral line and
    sends the reason privately.  Errors of item callbacks never reach the command tree's handler, hence the catch."""
    bot = hypercord(interaction)
    try:
        await bot.jobs.check_hypernets(settings, interaction.guild_id)
        bot.jobs.admit(interaction.user.id)
    except UserFacingError as refusal:
        await send_ephemeral(interaction, refusal.message)
        return
    message_id = await defer_public(interaction)
    new = derived_job(parent, settings, user_id=interaction.user.id,
                      channel_id=interaction.channel_id or parent.channel_id, guild_id=interaction.guild_id,
                      origin=origin, interaction_token=interaction.token,
                      interaction_created_at=interaction.created_at.timestamp())
    link = f"job #{parent.id}"
    if parent.message_id is not None and parent.guild_id is not None:
        link = f"[job #{parent.id}](https://discord.com/channels/{parent.guild_id}/{parent.channel_id}/{parent.message_id})"
    header = f"↪ {label} of {link} · {interaction.user.mention}\n"
    presenter = bot.presenters.for_interaction(interaction, message_id=message_id, header=header)
    try:
        await bot.jobs.start(new, presenter, message_id=message_id)
    except Exception as exc:
        await answer_error(interaction, exc, where=f"the {origin} button of job {parent.id}")


# ---- the buttons -----------------------------------------------------------------------------------------


class _JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"hc:(?!)"):
    """A row-0 button acting on one job, custom_id ``hc:<action>:<job id>``: a click loads the job, then
    :meth:`on_job` acts on it.  A subclass gives its action and look in its class line."""

    _action: ClassVar[str]
    _look: ClassVar[tuple[str, str, discord.ButtonStyle]]  # label, emoji, style

    def __init_subclass__(cls, *, action: str, label: str, emoji: str, style: discord.ButtonStyle) -> None:
        super().__init_subclass__(template=rf"hc:{action}:(?P<job>[0-9]{{1,19}})")
        cls._action, cls._look = action, (label, emoji, style)

    def __init__(self, job_id: int) -> None:
        label, emoji, style = self._look
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"hc:{self._action}:{job_id}",
                                           row=0))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> Self:
        return cls(int(match["job"]))

    async def callback(self, interaction: Interaction) -> None:
        job = await _load(interaction, self.job_id)
        if job is not None:
            await self.on_job(interaction, job)

    async def on_job(self, interaction: Interaction, job: Job) -> None:
        raise NotImplementedError


class RerollButton(_JobButton, action="reroll", label="Reroll", emoji="🎲", style=discord.ButtonStyle.primary):
    """Same settings (and multipliers), a new seed."""

    async def on_job(self, interaction: Interaction, job: Job) -> None:
        settings = dataclasses.replace(job.settings, seed=random_seed())
        await start_derived(interaction, job, settings, origin="reroll", label="Reroll")


class InfoButton(_JobButton, action="info", label="Info", emoji="ℹ️", style=discord.ButtonStyle.secondary):
    """The A1111 infotext, ephemeral, in a code block to copy into A1111's PNG Info."""

    async def on_job(self, interaction: Interaction, job: Job) -> None:
        bot = hypercord(interaction)
        text = (await asyncio.to_thread(_stored_infotext, bot, job)
                or infotext_for(job, checkpoint_label(bot, job.settings.checkpoint)))
        text = clip(text.replace("```", "ˋˋˋ"), 1900)
        await send_ephemeral(interaction, f"Parameters of job #{job.id} (paste into A1111's PNG Info):\n```\n{text}\n```")


def _stored_infotext(bot: HypercordBot, job: Job) -> str | None:
    """The ``parameters`` text of the job's first stored PNG, exactly as written by the engine."""
    if not job.image_paths:
        return None
    try:
        with Image.open(io.BytesIO(bot.jobs.images.read(job.image_paths[:1])[0])) as img:
            text = img.info.get("parameters")
    except (OSError, ValueError):
        return None
    return text if isinstance(text, str) else None


class MultiplierButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                       template=r"hc:mul:(?P<job>[0-9]{1,19}):(?P<index>[0-9]{1,2}):(?P<dir>[+-])"):
    """One strength (a hypernet's multiplier or a LoRA's weight) one step down or up; same seed, so only it changes."""

    def __init__(self, job_id: int, index: int, direction: str, *, label: str | None = None,
                 disabled: bool = False) -> None:
        sign = "−" if direction == "-" else "+"
        super().__init__(discord.ui.Button(label=label or sign, style=discord.ButtonStyle.secondary, disabled=disabled,
                                           custom_id=f"hc:mul:{job_id}:{index}:{direction}",
                                           row=1 + min(index, _ROWS_FOR_STRENGTHS - 1)))
        self.job_id, self.index, self.direction = job_id, index, direction

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> MultiplierButton:
        return cls(int(match["job"]), int(match["index"]), match["dir"])

    async def callback(self, interaction: Interaction) -> None:
        job = await _load(interaction, self.job_id)
        if job is None:
            return
        strengths = job.settings.strengths
        if self.index >= len(strengths):
            await send_ephemeral(interaction, f"Job #{job.id} has no hypernetwork or LoRA number {self.index + 1}.")
            return
        limits = hypercord(interaction).settings.limits
        picked = strengths[self.index]
        new = step_multiplier(picked.value, 1 if self.direction == "+" else -1, limits)
        if new is None:
            bound = limits.max_multiplier if self.direction == "+" else limits.min_multiplier
            await send_ephemeral(interaction, f"`{picked.name}` is already at {format_multiplier(bound)}, the configured "
                                              "limit.")
            return
        values = [new if i == self.index else x.value for i, x in enumerate(strengths)]
        await start_derived(interaction, job, job.settings.with_strengths(values), origin="multiplier",
                            label=f"`{picked.name}` {format_multiplier(picked.value)} → {format_multiplier(new)}")


class SetMultiplierButton(_JobButton, action="setmul", label="Set multiplier…", emoji="🎚️",
                          style=discord.ButtonStyle.secondary):
    """Opens a modal to type exact multipliers (modals are built at click time; they are not persistent)."""

    async def on_job(self, interaction: Interaction, job: Job) -> None:
        if not job.settings.strengths:
            await send_ephemeral(interaction, f"Job #{job.id} uses no hypernetwork or LoRA, so there is no multiplier to "
                                              "set.")
            return
        await interaction.response.send_modal(MultiplierModal(job))


class MultiplierModal(discord.ui.Modal):
    """One text input per strength (up to five: hypernets, then LoRAs), prefilled with the job's values."""

    def __init__(self, job: Job) -> None:
        super().__init__(title=clip(f"Multipliers — job #{job.id}", 45), timeout=900)
        self.job = job
        self.inputs: list[discord.ui.TextInput[MultiplierModal]] = []
        for i, strength in enumerate(job.settings.strengths[:_MODAL_INPUTS]):
            label = strength.name if strength.kind == "hypernet" else f"{strength.name} (LoRA)"
            field: discord.ui.TextInput[MultiplierModal] = discord.ui.TextInput(
                label=clip(label, 45), default=format_multiplier(strength.value), max_length=12, custom_id=f"m{i}",
                placeholder="e.g. 0.7")
            self.inputs.append(field)
            self.add_item(field)

    async def on_submit(self, interaction: Interaction, /) -> None:
        limits = hypercord(interaction).settings.limits
        strengths = self.job.settings.strengths
        try:
            typed = _typed_multipliers(self.inputs, [x.name for x in strengths], limits)
        except OptionError as exc:
            await send_ephemeral(interaction, str(exc))
            return
        values = typed + [x.value for x in strengths[len(typed):]]
        if values == [x.value for x in strengths]:
            await send_ephemeral(interaction, "Those are the multipliers the job already used; change one to render "
                                              "again.")
            return
        settings = self.job.settings.with_strengths(values)
        changes = ", ".join(f"`{x.name}` {format_multiplier(x.value)}" for x in settings.strengths)
        await start_derived(interaction, self.job, settings, origin="multiplier", label=f"Multipliers {changes}")


def _typed_multipliers(inputs: list[discord.ui.TextInput[MultiplierModal]], names: list[str],
                       limits: LimitSettings) -> list[float]:
    """The modal's values as checked multipliers (a comma is read as a decimal point); OptionError otherwise."""
    values = []
    for field, name in zip(inputs, names, strict=False):
        text = field.value.strip().replace(",", ".")
        try:
            value = float(text)
        except ValueError:
            raise OptionError(f"`{clip(text, 20)}` for `{name}` is not a number; write e.g. 0.7.") from None
        values.append(check_multiplier(value, limits, name))
    return values


class CancelButton(_JobButton, action="cancel", label="Cancel", emoji="✖️", style=discord.ButtonStyle.danger):
    """Cancel a queued or running job: its owner, or a member with Manage Server."""

    async def on_job(self, interaction: Interaction, job: Job) -> None:
        if interaction.user.id != job.user_id and not is_guild_manager(interaction):
            await send_ephemeral(interaction, "Only the person who started this job or a server admin (Manage Server) "
                                              "can cancel it.")
            return
        if job.finished:
            await send_ephemeral(interaction, f"Job #{job.id} has already finished ({job.status}).")
            return
        bot = hypercord(interaction)
        if await bot.jobs.cancel(job.id, interaction.user.mention, functools.partial(bot.presenters.resumed, bot)):
            await send_ephemeral(interaction, f"Cancelling job #{job.id}.")
        else:
            await send_ephemeral(interaction, f"Job #{job.id} has already finished.")


DYNAMIC_ITEMS = (RerollButton, InfoButton, MultiplierButton, SetMultiplierButton, CancelButton)


def progress_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job: Job, limits: LimitSettings) -> discord.ui.View:
    """Reroll, Info, Set multiplier… on row 0; − / + per strength on rows 1-4, disabled at the configured bounds."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job.id))
    view.add_item(InfoButton(job.id))
    strengths = job.settings.strengths
    if strengths:
        view.add_item(SetMultiplierButton(job.id))
    names = [x.name for x in strengths]
    for i, strength in enumerate(strengths[:_ROWS_FOR_STRENGTHS]):
        # A LoRA named like a hypernet of the same job says which one its buttons move.
        name = _short(strength.name if names.count(strength.name) == 1 else f"{strength.kind} {strength.name}")
        view.add_item(MultiplierButton(job.id, i, "-", label=f"− {name}",
                                       disabled=step_multiplier(strength.value, -1, limits) is None))
        view.add_item(MultiplierButton(job.id, i, "+", label=f"+ {name}",
                                       disabled=step_multiplier(strength.value, 1, limits) is None))
    return view
