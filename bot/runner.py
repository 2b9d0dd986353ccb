"""Builds the services from settings, runs the bot, and shuts everything down in order.

Why separate from ``__main__``: this is the composition root (the one place that knows every
concrete class), kept apart from argument parsing so tests can run it in-process too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import discord
import yarl

from bot.app import HypercordBot
from bot.config import DiscordSettings, Settings
from bot.store import Store
from engine.client import EngineClient
from engine.protocol import WorkerConfig

log = logging.getLogger(__name__)


def point_discord_at(discord_settings: DiscordSettings) -> None:
    """Use the configured REST and gateway URLs (Discord's by default; a proxy or the test server otherwise)."""
    discord.http.Route.BASE = discord_settings.rest_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(discord_settings.gateway_url)


def worker_config(settings: Settings) -> WorkerConfig:
    """What the engine process needs; deliberately no token and nothing Discord-related."""
    eng = settings.engine
    return WorkerConfig(
        checkpoint=settings.models.checkpoint,
        device=eng.device,
        dtype=eng.dtype,
        hypernet_dtype=eng.hypernet_dtype,
        max_batch=eng.max_batch,
        hypernet_cache_bytes=eng.hypernet_cache_mb * 1024 * 1024,
        model_store_dir=str(Path(settings.models.store_dir).resolve()),
        progress_interval_s=eng.progress_interval_s,
    )


def build_engine(settings: Settings) -> EngineClient:
    eng, lim = settings.engine, settings.limits
    return EngineClient(
        worker_config(settings),
        max_queue=lim.queue_max,
        max_per_user=lim.queue_per_user,
        heartbeat_interval_s=eng.heartbeat_interval_s,
        heartbeat_timeout_s=eng.heartbeat_timeout_s,
        start_timeout_s=eng.start_timeout_s,
        job_timeout_s=eng.job_timeout_s,
    )


async def run_bot(settings: Settings, *, sync_global: bool = False) -> int:
    """Run until logged out or SIGTERM/SIGINT; returns the process exit status."""
    assert settings.token is not None
    point_discord_at(settings.discord)
    store = await Store.open(settings.storage.database, busy_timeout_ms=settings.storage.busy_timeout_ms)
    engine = build_engine(settings)
    bot = HypercordBot(settings, store, engine, sync_global=sync_global)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, lambda s=sig: _request_shutdown(bot, s))
    try:
        async with bot:
            await bot.start(settings.token.get())
    except discord.LoginFailure:
        log.error("Discord refused the token (401). Reset it in the developer portal and update DISCORD_TOKEN.")
        return 1
    finally:
        await engine.stop()
        await store.close()
    log.info("stopped cleanly")
    return 0


def _request_shutdown(bot: HypercordBot, sig: signal.Signals) -> None:
    log.info("received %s: stopping (no new jobs; finishing the running batch)", sig.name)
    asyncio.get_running_loop().create_task(bot.close())
