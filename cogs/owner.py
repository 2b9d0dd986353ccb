"""Owner tools: /status, /sync, and the periodic status log line and health file.

Why here: these are operations concerns of the bot owner (not of a guild), they share one set of
figures, and the periodic tasks belong to the bot's lifetime like a cog's.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands, tasks

from bot.checks import bot_owner_only
from bot.health import health_path, write_health

if TYPE_CHECKING:
    from bot.app import HypercordBot

log = logging.getLogger("hypercord.status")

HEALTH_INTERVAL_S = 15.0


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rem = divmod(seconds, 86_400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    parts.append(f"{minutes}m" if days or hours or minutes else f"{secs}s")
    return " ".join(parts)


async def collect_figures(bot: HypercordBot) -> dict[str, Any]:
    """One snapshot of everything /status shows and the status log line records."""
    engine = asdict(bot.engine.status())
    last_hour = await bot.store.jobs.stats(time.time() - 3600)
    return {
        "worker": engine["state"], "pid": engine["pid"], "device": engine["device"], "checkpoint": engine["checkpoint"],
        "queue": engine["queue_length"], "running": engine["running"], "users_waiting": engine["users_queued"],
        "jobs_last_hour": last_hour, "images_per_s": round(engine["images_per_s"], 3),
        "avg_step_ms": round(engine["avg_step_s"] * 1000, 1), "vram_used_bytes": engine["vram_used_bytes"],
        "hypernet_cache_bytes": engine["cache_bytes"], "hypernet_cache": list(engine["cache_contents"]),
        "worker_restarts": engine["restarts"], "unet_compiled_calls": engine["unet_compiled_calls"],
        "unet_eager_calls": engine["unet_eager_calls"], "unet_pending_layouts": engine["unet_pending_layouts"],
        "unet_compile_failure": engine["unet_compile_failure"],
        "uptime_s": round(time.time() - bot.started_at, 1),
        "guilds": len(bot.guilds), "accepting_jobs": bot.jobs.accepting,
        "checkpoints": [dict(c) for c in engine["checkpoints"]], "checkpoint_loads": engine["checkpoint_loads"],
        "workers": [{key: worker[key] for key in ("name", "state", "device", "checkpoint", "max_batch", "jobs_done",
                                                  "heartbeat_age_s", "host")}
                    | {"on_device": [c["name"] for c in worker["checkpoints"] if c["on_device"]]}
                    for worker in engine["workers"]],
    }


def worker_lines(workers: list[dict[str, Any]], limit: int = 1024) -> str:
    """One line per worker (name, state, device, model, batch, jobs done, last heartbeat, the checkpoints it holds on
    its device when it says), within ``limit`` chars."""
    lines = []
    for w in workers:
        beat = "—" if w["heartbeat_age_s"] is None else f"{w['heartbeat_age_s']:.0f}s ago"
        held = ", ".join(f"`{name[:30]}`" for name in w.get("on_device", [])[:4])
        lines.append(f"`{w['name'][:40]}` {w['state']} · {w['device'] or '—'} · `{w['checkpoint'][:40]}` · "
                     f"batch {w['max_batch']} · {w['jobs_done']} done · heartbeat {beat}"
                     + (f" · holds {held}" if held else ""))
    text = ""
    for i, line in enumerate(lines):
        note = f"\n… and {len(lines) - i} more"
        if len(text) + 1 + len(line) + len(note) > limit:
            return text + note
        text = f"{text}\n{line}" if text else line
    return text or "none"


def checkpoint_lines(figures: dict[str, Any], limit: int = 1024) -> str:
    """The default checkpoint, then each one the worker holds (on the device or parked in CPU memory) and its size."""
    lines = [f"default `{figures['checkpoint'][:120]}`"]
    for c in reversed(figures.get("checkpoints", [])):  # most recently used first
        lines.append(f"`{c['name'][:60]}` {'on device' if c['on_device'] else 'in CPU memory'} · {_mib(c['nbytes'])}")
    if figures.get("checkpoint_loads"):
        lines.append(f"loads since start: {figures['checkpoint_loads']}")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def status_embed(figures: dict[str, Any]) -> discord.Embed:
    """Render the figures for an owner; kept well inside Discord's embed limits."""
    healthy = figures["worker"] == "ready"
    embed = discord.Embed(title="Hypercord status", colour=discord.Colour.green() if healthy else discord.Colour.orange())
    jobs = figures["jobs_last_hour"]
    done, failed = jobs.get("done", 0), jobs.get("failed", 0)
    embed.add_field(name="Worker", value=f"{figures['worker']} (pid {figures['pid'] or '—'})\n{figures['device'] or '—'}"
                    f"\nrestarts: {figures['worker_restarts']}")
    embed.add_field(name="Checkpoints", value=checkpoint_lines(figures))
    embed.add_field(name="Queue", value=f"{figures['queue']} waiting from {figures['users_waiting']} users\n"
                    f"{figures['running']} running")
    embed.add_field(name="Last hour", value=f"{done} done, {failed} failed, {jobs.get('cancelled', 0)} cancelled")
    speed = f"{figures['images_per_s']:.2f} images/s\n{figures['avg_step_ms']:.0f} ms/step"
    if figures["unet_compile_failure"]:  # compiling was on and failed: say so, the log has the error
        speed += f"\nUNet: eager — {figures['unet_compile_failure'][:200]} (see the worker's log)"
    elif figures["unet_compiled_calls"] or figures["unet_pending_layouts"]:  # a compiling (GPU) worker
        speed += (f"\nUNet: {figures['unet_compiled_calls']} compiled, {figures['unet_eager_calls']} eager calls, "
                  f"{figures['unet_pending_layouts']} layouts to compile")
    embed.add_field(name="Speed", value=speed)
    cache = ", ".join(figures["hypernet_cache"][:10]) or "empty"
    embed.add_field(name="Memory", value=f"VRAM used: {_mib(figures['vram_used_bytes'])}\nhypernet cache: "
                    f"{_mib(figures['hypernet_cache_bytes'])} ({cache})"[:1024])
    if figures["workers"]:
        embed.add_field(name=f"Workers ({len(figures['workers'])})", value=worker_lines(figures["workers"]), inline=False)
    embed.set_footer(text=f"up {_duration(figures['uptime_s'])} · {figures['guilds']} servers")
    return embed


class OwnerCog(commands.Cog):
    """Owner-only commands and the periodic status/health tasks."""

    def __init__(self, bot: HypercordBot) -> None:
        self.bot = bot
        self.health_file = health_path(bot.settings.storage.database)
        self.status_log.change_interval(seconds=bot.settings.logging.status_interval_s or 3600)

    async def cog_load(self) -> None:
        self.health.start()
        if self.bot.settings.logging.status_interval_s > 0:
            self.status_log.start()

    async def cog_unload(self) -> None:
        self.health.cancel()
        self.status_log.cancel()
        write_health(self.health_file, {"connected": False, "worker": "stopped", "queue": 0})

    @tasks.loop(seconds=HEALTH_INTERVAL_S)
    async def health(self) -> None:
        status = self.bot.engine.status()
        connected = self.bot.is_ready() and not self.bot.is_closed()
        write_health(self.health_file, {"connected": connected, "worker": status.state, "queue": status.queue_length})

    @tasks.loop(seconds=300)
    async def status_log(self) -> None:
        figures = await collect_figures(self.bot)
        log.info("status %s", json.dumps(figures, sort_keys=True))

    @health.error
    @status_log.error
    async def _task_failed(self, error: BaseException) -> None:
        log.error("periodic status task failed", exc_info=error)

    @app_commands.command(name="status", description="Engine and queue figures (bot owners)")
    @bot_owner_only()
    async def status(self, interaction: discord.Interaction) -> None:
        figures = await collect_figures(self.bot)
        await interaction.response.send_message(embed=status_embed(figures), ephemeral=True)

    @app_commands.command(name="sync", description="Publish slash commands (bot owners)")
    @app_commands.describe(scope="dev guilds only (instant) or everywhere (Discord limits this per day)")
    @bot_owner_only()
    async def sync(self, interaction: discord.Interaction, scope: Literal["guilds", "global"] = "guilds") -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        done = await self.bot.sync_commands(include_global=scope == "global")
        await interaction.followup.send("Synced: " + ("; ".join(done) or "nothing (no dev guilds configured)"),
                                        ephemeral=True)


async def setup(bot: HypercordBot) -> None:
    await bot.add_cog(OwnerCog(bot))
