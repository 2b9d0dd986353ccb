"""The Discord client: holds the services the composition root built, loads the cogs, runs start-up and shutdown.

Why constructor injection (the pattern of discord.py's ``advanced_startup`` example): cogs and views reach the
store, the engine client, the job and model services and the settings as typed attributes of
``Interaction[HypercordBot].client`` — never through ``get_cog`` or ``getattr`` — so renaming a cog or changing
the load order cannot break them, tests can build the same bot with other parts, and there are no module-level
singletons.  This module never names ``cogs``: the runner passes the extensions and the presenters in.

Start-up, in order (``setup_hook``): the error handler, the extensions, the drop-in model folder, the engine, the
command sync; once connected, jobs a previous process left unfinished are resumed.  Command sync is deliberate:
development guilds at every start (instant), globally only when asked (Discord rate-limits command creation).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import discord
from discord.ext import commands

from bot.config import Settings
from bot.errors import install_error_handler
from bot.jobs import EngineAPI, JobPresenter, JobService
from bot.models import ModelService
from bot.store import Job, Store

__all__ = ["DRAIN_TIMEOUT_S", "HypercordBot", "JobPresenters"]

log = logging.getLogger(__name__)

#: How long a shutdown waits for jobs being posted to finish their last edit.
DRAIN_TIMEOUT_S = 15.0

class JobPresenters(Protocol):
    """Makes the presenters that show jobs to users (the cogs' Discord messages, :mod:`cogs.job_messages`)."""

    def for_interaction(self, interaction: discord.Interaction[discord.Client], *, message_id: int | None,
                        header: str = "") -> JobPresenter:
        """For a job just started from ``interaction`` (already deferred; ``message_id`` is its message)."""

    async def resumed(self, bot: HypercordBot, job: Job) -> JobPresenter | None:
        """For a job a previous process left unfinished; None when it cannot be shown any more."""


class HypercordBot(commands.Bot):
    """discord.py bot with Hypercord's services attached."""

    def __init__(self, settings: Settings, store: Store, engine: EngineAPI, jobs: JobService, models: ModelService, *,
                 presenters: JobPresenters, extensions: Sequence[str], sync_global: bool = False) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # GUILD_CREATE: channels, roles; slash commands need nothing more
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            chunk_guilds_at_startup=False,
            owner_ids=set(settings.discord.owner_ids) or None,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=False),
        )
        self.settings = settings
        self.store = store
        self.engine = engine
        self.jobs = jobs
        self.models = models
        self.presenters = presenters
        self.extension_names = tuple(extensions)
        self.sync_global = sync_global or settings.discord.sync_global_on_start
        self.started_at = time.time()
        self._reconcile_task: asyncio.Task[None] | None = None

    async def setup_hook(self) -> None:
        install_error_handler(self.tree)
        for extension in self.extension_names:
            await self.load_extension(extension)
        await self._scan_model_folder()
        await self.engine.start()
        await self.sync_commands()
        self._reconcile_task = asyncio.create_task(self._reconcile_when_ready(), name="reconcile-jobs")

    async def _scan_model_folder(self) -> None:
        """Pick up the drop-in folder at start (A1111 does the same); a broken file never stops the bot."""
        try:
            await self.models.sync_model_folder()
        except Exception:
            log.exception("scanning the models folder at start failed")

    async def _reconcile_when_ready(self) -> None:
        await self.wait_until_ready()  # the engine is started and the HTTP session open by then
        await self.jobs.reconcile(functools.partial(self.presenters.resumed, self))

    async def sync_commands(self, *, include_global: bool | None = None) -> list[str]:
        """Sync to the development guilds, and globally when configured or asked."""
        done = []
        for guild_id in self.settings.discord.dev_guild_ids:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            done.append(f"guild {guild_id}: {len(synced)} commands")
        if self.sync_global if include_global is None else include_global:
            synced = await self.tree.sync()
            done.append(f"global: {len(synced)} commands")
        for line in done:
            log.info("synced %s", line)
        return done

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s) in %d guilds", self.user, self.user.id if self.user else "?", len(self.guilds))

    async def close(self) -> None:
        """Stop taking jobs, let the engine finish or hand back the running batch, post what is left, log out."""
        self.jobs.stop_accepting()
        try:
            await self.engine.stop()
            if self._reconcile_task is not None:
                self._reconcile_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reconcile_task
            await self.jobs.drain(DRAIN_TIMEOUT_S)
        finally:
            await super().close()
