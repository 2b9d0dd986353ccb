"""The composition root: builds every service from the settings, runs the bot, shuts everything down in order.

Why one place: this is the only module that knows every concrete class (the store, the engine client and its
transport, the job and model services, the Discord presenters in ``cogs``) and wires them together; everything else
receives its dependencies.  Kept apart from argument parsing so tests build the same bot in-process
(:func:`build_bot`) with their own transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import discord
import yarl

import cogs
from bot.app import HypercordBot
from bot.checkpoints import CheckpointCatalog
from bot.config import DiscordSettings, Settings
from bot.jobs import EngineAPI, ImageStore, JobService
from bot.models import ModelService
from bot.ratelimit import RateLimiter
from bot.store import Store
from cogs.job_messages import DiscordPresenters
from engine.checkpoints import HashCache
from engine.client import EngineClient, RedisEngineClient, WorkerTransport
from engine.fit import ModelShape
from engine.protocol import WorkerConfig

__all__ = ["build_bot", "build_catalog", "build_engine", "point_discord_at", "run_bot", "worker_config"]

log = logging.getLogger(__name__)


def point_discord_at(discord_settings: DiscordSettings) -> None:
    """Use the configured REST and gateway URLs (Discord's by default; a proxy or the test server otherwise)."""
    discord.http.Route.BASE = discord_settings.rest_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(discord_settings.gateway_url)


def hash_cache_path(settings: Settings) -> Path:
    """Where A1111's checkpoint hashes are remembered (next to the database; the bot and its workers share it)."""
    return (Path(settings.storage.database).parent / "checkpoint-hashes.json").resolve()


def build_catalog(settings: Settings) -> CheckpointCatalog:
    """The installed checkpoints (files hashed once: the hashes are kept next to the database)."""
    catalog = CheckpointCatalog.build(settings, hash_cache=HashCache(hash_cache_path(settings)))
    for entry in catalog.entries.values():
        if entry.refusal:
            log.warning("checkpoint %s is not offered: %s", entry.name, entry.refusal)
    return catalog


def worker_config(settings: Settings, catalog: CheckpointCatalog | None = None) -> WorkerConfig:
    """What the engine process needs; deliberately no token and nothing Discord-related.

    With a catalog the workers get every usable checkpoint by name (the default named ``checkpoint``)."""
    eng = settings.engine
    return WorkerConfig(
        checkpoint=catalog.default if catalog else settings.models.checkpoint,
        checkpoints=catalog.worker_specs() if catalog else (),
        checkpoint_device_bytes=eng.checkpoint_device_mb * 1024 * 1024,
        checkpoint_host_bytes=eng.checkpoint_host_mb * 1024 * 1024,
        checkpoint_hash_cache=str(hash_cache_path(settings)),
        device=eng.device,
        dtype=eng.dtype,
        hypernet_dtype=eng.hypernet_dtype,
        max_batch=eng.max_batch,
        compile=eng.compile,
        compile_cache_dir=str(Path(eng.compile_cache_dir).resolve()),
        warm_up_sizes=((settings.limits.default_width, settings.limits.default_height),),
        hypernet_cache_bytes=eng.hypernet_cache_mb * 1024 * 1024,
        model_store_dir=str(Path(settings.models.store_dir).resolve()),
        progress_interval_s=eng.progress_interval_s,
    )


def build_engine(settings: Settings, *, transport: WorkerTransport | None = None,
                 catalog: CheckpointCatalog | None = None) -> EngineClient | RedisEngineClient:
    """The engine client: a child worker process (``transport`` overrides it: tests add fault injection there), or
    the fleet of standalone workers over Redis when ``engine.transport = "redis"``."""
    eng, lim = settings.engine, settings.limits
    config = worker_config(settings, catalog or build_catalog(settings))
    if eng.transport == "redis" and transport is None:
        return RedisEngineClient(
            config, eng.redis_url, bot_id=eng.bot_id, prefix=eng.redis_prefix,
            max_queue=lim.queue_max, max_per_user=lim.queue_per_user, lease_s=eng.lease_s,
            heartbeat_interval_s=eng.heartbeat_interval_s, heartbeat_timeout_s=eng.heartbeat_timeout_s,
            start_timeout_s=min(eng.start_timeout_s, 120.0), job_timeout_s=eng.job_timeout_s,
            affinity_wait_s=eng.affinity_wait_s)
    return EngineClient(
        config,
        transport=transport,
        max_queue=lim.queue_max,
        max_per_user=lim.queue_per_user,
        heartbeat_interval_s=eng.heartbeat_interval_s,
        heartbeat_timeout_s=eng.heartbeat_timeout_s,
        start_timeout_s=eng.start_timeout_s,
        job_timeout_s=eng.job_timeout_s,
        affinity_wait_s=eng.affinity_wait_s,
    )


def _model_shape(engine: EngineAPI) -> ModelShape | None:
    """The running checkpoint's widths as the worker reported them (None until it has started)."""
    status = engine.status()
    if status.context_dim is None:
        return None
    return ModelShape(status.context_dim, frozenset(status.attention_widths))


def build_bot(settings: Settings, store: Store, engine: EngineAPI, *, sync_global: bool = False,
              catalog: CheckpointCatalog | None = None) -> HypercordBot:
    """The bot with its services: jobs (images folder, rate limits, checkpoints) and models (intake, folder sync)."""
    lim = settings.limits
    jobs = JobService(store, engine, ImageStore(settings.storage.images_dir),
                      RateLimiter(rate_per_minute=lim.rate_per_minute, burst=lim.rate_burst),
                      catalog=catalog or build_catalog(settings))
    models = ModelService(store, settings, model_shape=lambda: _model_shape(engine))
    presenters = DiscordPresenters(edit_interval_s=settings.discord.edit_interval_s)
    return HypercordBot(settings, store, engine, jobs, models, presenters=presenters, extensions=cogs.EXTENSIONS,
                        sync_global=sync_global)


async def run_bot(settings: Settings, *, sync_global: bool = False) -> int:
    """Run until logged out or SIGTERM/SIGINT; returns the process exit status."""
    if settings.token is None:
        raise ValueError("run_bot needs settings with a token")
    point_discord_at(settings.discord)
    store = await Store.open(settings.storage.database, busy_timeout_ms=settings.storage.busy_timeout_ms)
    catalog = build_catalog(settings)
    engine = build_engine(settings, catalog=catalog)
    bot = build_bot(settings, store, engine, sync_global=sync_global, catalog=catalog)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, _request_shutdown, bot, sig)
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
