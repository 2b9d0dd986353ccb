"""Run the real HypercordBot in-process against the fake Discord server, with the real engine worker (tiny model).

Why in-process: tests drive Discord through the fake's driver and look at the bot's services (store, engine)
directly, with one event loop and no subprocess for the bot.  Starting the worker takes seconds, so one
``Harness`` is meant to serve a whole test module::

    # tests/<area>/conftest.py
    @pytest_asyncio.fixture(loop_scope="module", scope="module")
    async def hc(tmp_path_factory):
        async with running_bot(tmp_path_factory.mktemp("bot")) as harness:
            yield harness

    # tests/<area>/test_x.py
    pytestmark = pytest.mark.asyncio(loop_scope="module")

    async def test_something(hc):
        rec = await hc.fake.slash(hc.fake.member_plain, "imagine", {"prompt": "a cat"})
        msg = await hc.wait_result(rec)

Settings are small on purpose: 64x64 images, at most 8 steps, CPU, ``tiny`` checkpoint.  Prompts containing
``SLOW_MARKER`` sleep ``SLOW_STEP_S`` per step in the worker (the engine's test fault injection), for tests that
need a job to stay queued or running for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord

from bot.app import HypercordBot
from bot.config import (
    CheckpointSettings,
    DiscordSettings,
    EngineSettings,
    LimitSettings,
    LoggingSettings,
    ModelSettings,
    Secret,
    Settings,
    StorageSettings,
)
from bot.runner import build_bot, build_engine, point_discord_at
from bot.store import Hypernet, NewHypernet, Store
from engine.client import EngineClient, LocalWorkers
from tests.e2e.fake_discord import FakeDiscord, InteractionRecord, StoredMessage

log = logging.getLogger("tests.harness")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hypernetworks" / "zoo"
SLOW_MARKER = "slowpoke"
SLOW_STEP_S = 0.4


def make_settings(root: Path, fake: FakeDiscord, **limit_overrides: Any) -> Settings:
    """Settings for one harness: tmp paths under ``root``, the fake's URLs and guild, small limits."""
    limits = dict(min_steps=1, max_steps=8, default_steps=2, min_size=64, max_size=128, default_width=64,
                  default_height=64, max_count=4, min_multiplier=-1.0, max_multiplier=2.0, multiplier_step=0.1,
                  max_hypernets=4, queue_max=4, queue_per_user=2, rate_per_minute=10_000.0, rate_burst=1000)
    limits.update(limit_overrides)
    return Settings(
        discord=DiscordSettings(owner_ids=[fake.member_owner.id], dev_guild_ids=[fake.guild.id],
                                rest_base_url=fake.rest_base, gateway_url=fake.gateway_url, edit_interval_s=0.2),
        storage=StorageSettings(database=str(root / "hypercord.sqlite3"), images_dir=str(root / "images")),
        models=ModelSettings(hypernetwork_dir=str(root / "hypernetworks"), store_dir=str(root / "store"),
                             checkpoint="tiny", model_name="tiny"),
        engine=EngineSettings(device="cpu", dtype="float32", hypernet_dtype="float32", max_batch=2,
                              progress_interval_s=0.05, heartbeat_interval_s=1.0, heartbeat_timeout_s=60.0,
                              start_timeout_s=120.0),
        limits=LimitSettings(**limits),
        logging=LoggingSettings(level="DEBUG"),
        token=Secret(fake.token),
    )


def engine_for_tests(settings: Settings) -> EngineClient:
    """The runner's engine client, with the test-only slow-step fault armed for prompts holding SLOW_MARKER."""
    faults = json.dumps({"slow_marker": SLOW_MARKER, "slow_step_s": SLOW_STEP_S})
    transport = LocalWorkers(extra_env={"HYPERCORD_TEST_FAULTS": faults, "OMP_NUM_THREADS": "1"})
    return build_engine(settings, transport=transport)


@dataclass
class Harness:
    """A running fake Discord + bot + store + engine; ``restart_bot`` swaps in a new bot on the same database."""

    fake: FakeDiscord
    settings: Settings
    root: Path
    bot: HypercordBot = field(init=False)
    store: Store = field(init=False)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start_bot(self) -> HypercordBot:
        point_discord_at(self.settings.discord)
        self.store = await Store.open(self.settings.storage.database, busy_timeout_ms=5000)
        self.bot = build_bot(self.settings, self.store, engine_for_tests(self.settings))
        await self.bot.login(self.fake.token)  # runs setup_hook: cogs, engine start, dev-guild sync
        self._task = asyncio.create_task(self.bot.connect(reconnect=True), name="harness-bot")
        ready = asyncio.create_task(self.bot.wait_until_ready())
        await asyncio.wait({ready, self._task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            if self._task.done():
                self._task.result()  # re-raise why the bot died
            raise AssertionError("the bot did not become ready within 60 s")
        return self.bot

    async def stop_bot(self) -> None:
        if self._task is None:
            return
        await self.bot.close()
        with contextlib.suppress(asyncio.CancelledError, discord.ConnectionClosed):
            await asyncio.wait_for(self._task, 30)
        await self.store.close()
        self._task = None

    async def restart_bot(self) -> HypercordBot:
        """Close the bot (engine included) and start a brand-new HypercordBot on the same database and folders."""
        await self.stop_bot()
        return await self.start_bot()

    # ---- models ----------------------------------------------------------------------------------

    async def install_hypernet(self, fixture: str, name: str, *, guild_id: int | None = None,
                               default_multiplier: float = 1.0, enabled: bool = True,
                               description: str = "", base_model: str | None = None) -> Hypernet:
        """Install ``tests/fixtures/hypernetworks/zoo/<fixture>.pt`` as ``name``: load it (safe torch load), write the
        canonical safetensors file named by its sha256 into the store dir, and register it.  ``guild_id=None``
        registers it globally; pass ``hc.fake.guild.id`` for a guild model.  ``base_model``: the checkpoint the file
        says it was trained on (what intake keeps of A1111's ``sd_checkpoint_name`` / ``sd_checkpoint``)."""
        from engine.hypernet import load, save_canonical

        source = FIXTURES / f"{fixture}.pt"
        hn = await asyncio.to_thread(load, source)
        store_dir = Path(self.settings.models.store_dir)
        store_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=store_dir) as tmp:
            staged = Path(tmp) / "canonical.safetensors"
            await asyncio.to_thread(save_canonical, hn, staged)
            digest = hashlib.sha256(staged.read_bytes()).hexdigest()
            final = store_dir / f"{digest}.safetensors"
            shutil.move(staged, final)
        meta = hn.metadata
        return await self.store.hypernets.add(NewHypernet(
            name=name, guild_id=guild_id, sha256=digest, file_name=final.name, file_size=final.stat().st_size,
            sizes=tuple(hn.sizes), layer_structure=tuple(float(x) for x in meta["layer_structure"]),
            activation=str(meta["activation_func"] or "linear"), source="folder",
            source_detail=f"tests/{fixture}.pt/{name}", description=description,
            default_multiplier=default_multiplier, enabled=enabled, base_model=base_model))

    # ---- waiting ---------------------------------------------------------------------------------

    async def wait_result(self, rec: InteractionRecord, timeout: float = 30.0) -> StoredMessage:
        """The message that got the job's final image(s): the interaction's message, or (after token expiry) a
        channel message posted with the bot token.  Waits until it carries attachments."""

        def find() -> StoredMessage | None:
            if rec.original is not None and rec.original.attachments and not rec.original.deleted:
                return rec.original
            return None

        return await self.fake.wait_for(find, timeout=timeout, what=f"a result for interaction {rec.id}")

    async def wait_content(self, msg_getter: Any, needle: str, timeout: float = 30.0) -> StoredMessage:
        """Wait until the message returned by ``msg_getter()`` contains ``needle`` in its content."""

        def check() -> StoredMessage | None:
            msg = msg_getter()
            return msg if msg is not None and needle in msg.content else None

        return await self.fake.wait_for(check, timeout=timeout, what=f"content containing {needle!r}")

    async def wait_ephemeral(self, rec: InteractionRecord, timeout: float = 10.0) -> StoredMessage:
        """The ephemeral message an interaction answered with (initial response or followup)."""

        def find() -> StoredMessage | None:
            for msg in ([rec.original] if rec.original else []) + rec.followups:
                if msg.ephemeral and (msg.content or msg.embeds):
                    return msg
            return None

        return await self.fake.wait_for(find, timeout=timeout, what=f"an ephemeral answer to interaction {rec.id}")

    async def job_count(self) -> int:
        """Rows in the jobs table, for "no job was created" assertions (read through the store's own query)."""
        counts = await self.store.jobs.stats(0.0)
        return sum(counts.values())

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the engine has nothing queued or running (so the next test starts from a quiet queue)."""

        def idle() -> bool:
            status = self.bot.engine.status()
            return status.queue_length == 0 and status.running == 0

        await self.fake.wait_for(idle, timeout=timeout, what="the engine to become idle")


@contextlib.asynccontextmanager
async def running_bot(root: Path, *, attachment_size_limit: int | None = None,
                      checkpoints: CheckpointSettings | None = None, **limit_overrides: Any) -> AsyncIterator[Harness]:
    """Start the fake Discord and the real bot (real worker, tiny model) under ``root``; stop both at exit.

    ``checkpoints``: installed checkpoints besides ``tiny`` (config entries, the folder).

    At exit, no unknown route of the fake may have been hit."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    kwargs: dict[str, Any] = {}
    if attachment_size_limit is not None:
        kwargs["attachment_size_limit"] = attachment_size_limit
    async with FakeDiscord(**kwargs) as fake:
        settings = make_settings(root, fake, **limit_overrides)
        if checkpoints is not None:
            settings = dataclasses.replace(settings, checkpoints=checkpoints)
        harness = Harness(fake, settings, root)
        try:
            await harness.start_bot()
            yield harness
        finally:
            await harness.stop_bot()
        assert fake.unhandled == [], f"unknown routes were called: {fake.unhandled}"


def replace_limits(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some limits changed (for tests that need one odd limit)."""
    return dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, **changes))


def png_parameters(data: bytes) -> str | None:
    """The A1111 ``parameters`` text chunk of a PNG (None when absent or not a PNG)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        text = img.info.get("parameters")
    return text if isinstance(text, str) else None
