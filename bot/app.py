"""The Discord client: holds the injected services and loads the cogs.

Why a subclass with constructor injection: cogs reach the store, the engine client and the
settings through ``bot``, which makes them testable with real parts and leaves no module-level
singletons. Command sync is deliberate: development guilds at every start (instant), globally only
when asked (Discord rate-limits command creation per day).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.errors import install_error_handler
from bot.ratelimit import RateLimiter

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.store import Store
    from engine.client import EngineClient

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.imagine", "cogs.history", "cogs.hypernets", "cogs.owner")


class HypercordBot(commands.Bot):
    """discord.py bot with Hypercord's services attached."""

    def __init__(self, settings: Settings, store: Store, engine: EngineClient, *, sync_global: bool = False) -> None:
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
        self.ratelimiter = RateLimiter(rate_per_minute=settings.limits.rate_per_minute, burst=settings.limits.rate_burst)
        self.sync_global = sync_global or settings.discord.sync_global_on_start
        self.started_at = time.time()
        self.accepting_jobs = True

    async def setup_hook(self) -> None:
        install_error_handler(self.tree)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.engine.start()
        await self.sync_commands()

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
        """Stop taking jobs, let the engine finish or hand back the running batch, then log out."""
        self.accepting_jobs = False
        try:
            await self.engine.stop()
        finally:
            await super().close()
