"""Result and progress buttons as ``DynamicItem``s: their custom_id holds only ids, everything else is in SQLite.

Why DynamicItems: a button rebuilt from its custom_id (``hc:reroll:123``, ``hc:mul:123:0:+``) works on every old
message after the bot restarts, which the most common complaint about image bots ("This interaction failed") is
about.  Layout (Discord allows 5 rows of 5 buttons): row 0 = Reroll, Info, Set multiplier…; rows 1-4 = one row per
hypernet with − and +.  Hypernets beyond the fourth are changed with the modal (which shows up to five).

A job started from a button belongs to whoever pressed it and is answered with a new message (the deferred
response to the click), whose first line points back at the job it came from.
"""

from __future__ import annotations

import io
import logging
from typing import Any, ClassVar, Self

import discord
from PIL import Image

from bot.embeds import clip, infotext_for
from bot.jobs import derive_job, job_service
from bot.options import OptionError, check_multiplier, random_seed, step_multiplier
from bot.store import Job, JobHypernet
from engine.prompt import format_multiplier

__all__ = ["DYNAMIC_ITEMS", "progress_view", "result_view", "start_derived"]

log = logging.getLogger(__name__)
_ROWS_FOR_HYPERNETS = 4
_MODAL_INPUTS = 5


def _short(name: str, limit: int = 30) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


async def _reply(interaction: discord.Interaction, text: str) -> None:
    if interaction.response.is_done():
        await interaction.followup.send(text[:2000], ephemeral=True)
    else:
        await interaction.response.send_message(text[:2000], ephemeral=True)


async def _load(interaction: discord.Interaction, job_id: int) -> Job | None:
    job = await job_service(interaction.client).store.jobs.get(job_id)
    if job is None:
        await _reply(interaction, f"Job #{job_id} no longer exists (its owner may have deleted their history).")
    return job


async def start_derived(interaction: discord.Interaction, parent: Job, *, origin: str, seed: int,
                        hypernets: tuple[JobHypernet, ...] | None = None, label: str) -> None:
    """Start a job from a button or modal: rate limit, defer (a new message), store, submit, follow."""
    bot: Any = interaction.client
    if not getattr(bot, "accepting_jobs", True):
        await _reply(interaction, "The bot is shutting down and not taking new jobs; try again in a minute.")
        return
    decision = bot.ratelimiter.consume(interaction.user.id)
    if not decision.allowed:
        await _reply(interaction, f"You are generating quickly: try again in {max(1, round(decision.retry_after))} s.")
        return
    response = await interaction.response.defer(thinking=True)
    message_id = getattr(response, "message_id", None)
    new = derive_job(parent, user_id=interaction.user.id, channel_id=interaction.channel_id or parent.channel_id,
                     guild_id=interaction.guild_id, origin=origin, seed=seed, hypernets=hypernets,
                     interaction=interaction)
    link = f"job #{parent.id}"
    if parent.message_id is not None and parent.guild_id is not None:
        link = f"[job #{parent.id}](https://discord.com/channels/{parent.guild_id}/{parent.channel_id}/{parent.message_id})"
    header = f"↪ {label} of {link} · {interaction.user.mention}\n"
    await job_service(bot).start(interaction, new, message_id=message_id, header=header)


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
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button[Any],
                             match: Any) -> Self:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await _load(interaction, self.job_id)
        if job is not None:
            await self.on_job(interaction, job)

    async def on_job(self, interaction: discord.Interaction, job: Job) -> None:
        raise NotImplementedError


class RerollButton(_JobButton, action="reroll", label="Reroll", emoji="🎲", style=discord.ButtonStyle.primary):
    """Same settings (and multipliers), a new seed."""

    async def on_job(self, interaction: discord.Interaction, job: Job) -> None:
        await start_derived(interaction, job, origin="reroll", seed=random_seed(), label="Reroll")


class InfoButton(_JobButton, action="info", label="Info", emoji="ℹ️", style=discord.ButtonStyle.secondary):
    """The A1111 infotext, ephemeral, in a code block to copy into A1111's PNG Info."""

    async def on_job(self, interaction: discord.Interaction, job: Job) -> None:
        service = job_service(interaction.client)
        text = _stored_infotext(service, job) or infotext_for(job, service.model_name)
        text = clip(text.replace("```", "ˋˋˋ"), 1900)
        await _reply(interaction, f"Parameters of job #{job.id} (paste into A1111's PNG Info):\n```\n{text}\n```")


def _stored_infotext(service: Any, job: Job) -> str | None:
    """The ``parameters`` text of the job's first stored PNG, exactly as written by the engine."""
    if not job.image_paths:
        return None
    try:
        with Image.open(io.BytesIO(service.image_file(job.image_paths[0]).read_bytes())) as img:
            text = img.info.get("parameters")
    except (OSError, ValueError):
        return None
    return text if isinstance(text, str) else None


class MultiplierButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                       template=r"hc:mul:(?P<job>[0-9]{1,19}):(?P<index>[0-9]{1,2}):(?P<dir>[+-])"):
    """One hypernet's multiplier one step down or up; same seed, so only the multiplier changes."""

    def __init__(self, job_id: int, index: int, direction: str, *, label: str | None = None,
                 disabled: bool = False) -> None:
        sign = "−" if direction == "-" else "+"
        super().__init__(discord.ui.Button(label=label or sign, style=discord.ButtonStyle.secondary, disabled=disabled,
                                           custom_id=f"hc:mul:{job_id}:{index}:{direction}",
                                           row=1 + min(index, _ROWS_FOR_HYPERNETS - 1)))
        self.job_id, self.index, self.direction = job_id, index, direction

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button[Any],
                             match: Any) -> MultiplierButton:
        return cls(int(match["job"]), int(match["index"]), match["dir"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await _load(interaction, self.job_id)
        if job is None:
            return
        if self.index >= len(job.hypernets):
            await _reply(interaction, f"Job #{job.id} has no hypernetwork number {self.index + 1}.")
            return
        limits = job_service(interaction.client).settings.limits
        net = job.hypernets[self.index]
        new = step_multiplier(net.multiplier, 1 if self.direction == "+" else -1, limits)
        if new is None:
            bound = limits.max_multiplier if self.direction == "+" else limits.min_multiplier
            await _reply(interaction, f"`{net.name}` is already at {format_multiplier(bound)}, the configured limit.")
            return
        nets = list(job.hypernets)
        nets[self.index] = JobHypernet(net.name, net.sha256, new)
        await start_derived(interaction, job, origin="multiplier", seed=job.seed, hypernets=tuple(nets),
                            label=f"`{net.name}` {format_multiplier(net.multiplier)} → {format_multiplier(new)}")


class SetMultiplierButton(_JobButton, action="setmul", label="Set multiplier…", emoji="🎚️",
                          style=discord.ButtonStyle.secondary):
    """Opens a modal to type exact multipliers (modals are built at click time; they are not persistent)."""

    async def on_job(self, interaction: discord.Interaction, job: Job) -> None:
        if not job.hypernets:
            await _reply(interaction, f"Job #{job.id} uses no hypernetwork, so there is no multiplier to set.")
            return
        await interaction.response.send_modal(MultiplierModal(job))


class MultiplierModal(discord.ui.Modal):
    """One text input per hypernet (up to five), prefilled with the job's multipliers."""

    def __init__(self, job: Job) -> None:
        super().__init__(title=clip(f"Multipliers — job #{job.id}", 45), timeout=900)
        self.job = job
        self.inputs: list[discord.ui.TextInput[Any]] = []
        for i, net in enumerate(job.hypernets[:_MODAL_INPUTS]):
            field: discord.ui.TextInput[Any] = discord.ui.TextInput(
                label=clip(net.name, 45), default=format_multiplier(net.multiplier), max_length=12, custom_id=f"m{i}",
                placeholder="e.g. 0.7")
            self.inputs.append(field)
            self.add_item(field)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        limits = job_service(interaction.client).settings.limits
        nets = list(self.job.hypernets)
        try:
            for i, field in enumerate(self.inputs):
                text = field.value.strip().replace(",", ".")
                try:
                    value = float(text)
                except ValueError:
                    raise OptionError(f"`{clip(text, 20)}` for `{nets[i].name}` is not a number; write e.g. 0.7.") from None
                nets[i] = JobHypernet(nets[i].name, nets[i].sha256, check_multiplier(value, limits, nets[i].name))
        except OptionError as exc:
            await _reply(interaction, str(exc))
            return
        if tuple(nets) == self.job.hypernets:
            await _reply(interaction, "Those are the multipliers the job already used; change one to render again.")
            return
        changes = ", ".join(f"`{n.name}` {format_multiplier(n.multiplier)}" for n in nets)
        await start_derived(interaction, self.job, origin="multiplier", seed=self.job.seed, hypernets=tuple(nets),
                            label=f"Multipliers {changes}")


class CancelButton(_JobButton, action="cancel", label="Cancel", emoji="✖️", style=discord.ButtonStyle.danger):
    """Cancel a queued or running job: its owner, or a member with Manage Server."""

    async def on_job(self, interaction: discord.Interaction, job: Job) -> None:
        from bot.checks import is_guild_manager

        if interaction.user.id != job.user_id and not is_guild_manager(interaction):
            await _reply(interaction, "Only the person who started this job or a server admin (Manage Server) can "
                                      "cancel it.")
            return
        if job.finished:
            await _reply(interaction, f"Job #{job.id} has already finished ({job.status}).")
            return
        if await job_service(interaction.client).cancel(job.id, interaction.user.mention):
            await _reply(interaction, f"Cancelling job #{job.id}.")
        else:
            await _reply(interaction, f"Job #{job.id} has already finished.")


DYNAMIC_ITEMS = (RerollButton, InfoButton, MultiplierButton, SetMultiplierButton, CancelButton)


def progress_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job: Job, limits: Any) -> discord.ui.View:
    """Reroll, Info, Set multiplier… on row 0; − / + per hypernet on rows 1-4, disabled at the configured bounds."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job.id))
    view.add_item(InfoButton(job.id))
    if job.hypernets:
        view.add_item(SetMultiplierButton(job.id))
    for i, net in enumerate(job.hypernets[:_ROWS_FOR_HYPERNETS]):
        name = _short(net.name)
        view.add_item(MultiplierButton(job.id, i, "-", label=f"− {name}",
                                       disabled=step_multiplier(net.multiplier, -1, limits) is None))
        view.add_item(MultiplierButton(job.id, i, "+", label=f"+ {name}",
                                       disabled=step_multiplier(net.multiplier, 1, limits) is None))
    return view
