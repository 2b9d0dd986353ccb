"""What an end-to-end scenario holds: the fake Discord, the bot process, and helpers that read like a user's view.

Why a helper object: every scenario needs the same few moves — run a command as someone, wait (polling, with a
deadline) for the bot's answer, download and decode the image, look at the SQLite file the bot wrote — and the
same checks after it: no unknown route was called, the bot broke no Discord limit, the bot is still alive and
logged no traceback.  Those per-test checks live in :meth:`E2E.end_test`, called by the ``e2e`` fixture.

The database is opened read-only (``mode=ro``), so a test can never change what the bot sees.
"""

from __future__ import annotations

import contextlib
import io
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from tests.e2e.botproc import BotProcess, config_for
from tests.e2e.fake_discord import FakeDiscord, FakeMember, InteractionRecord, StoredMessage

JOB_ID_IN_CUSTOM_ID = re.compile(r"^hc:[a-z]+:(\d+)")
#: Discord error answers the bot must never provoke (limits, bad bodies, double responses, missing permissions).
BOT_FAULT_STATUSES = frozenset({400, 403, 413})


@dataclass
class Mark:
    """Where the counters stood when a test began; end-of-test checks look only at what came after."""

    unhandled: int
    interactions: frozenset[int]
    log_offset: int


@dataclass
class E2E:
    fake: FakeDiscord
    bot: BotProcess
    #: Log substrings a test declared expected (e.g. the warning after killing the worker); cleared per test.
    allowed_log: list[str] = field(default_factory=list)
    _mark: Mark | None = None

    # ---- per-test bookkeeping ------------------------------------------------------------------------

    def begin_test(self) -> None:
        self.allowed_log = []
        self._mark = Mark(len(self.fake.unhandled), frozenset(self.fake.interactions), self.bot.log_size())

    def skip_log(self) -> None:
        """Leave what the bot (and its worker) logged so far out of this test's error check."""
        if self._mark is not None:
            self._mark.log_offset = self.bot.log_size()

    def new_interactions(self) -> list[InteractionRecord]:
        seen = self._mark.interactions if self._mark else frozenset()
        return [rec for iid, rec in self.fake.interactions.items() if iid not in seen]

    def discord_errors(self) -> list[str]:
        """Error answers from the fake, for this test's interactions, that mean the bot broke a rule."""
        return [f"interaction {rec.id} ({_what(rec)}): {err}" for rec in self.new_interactions()
                for err in rec.errors if err.get("status") in BOT_FAULT_STATUSES]

    def log_problems(self) -> list[str]:
        """Tracebacks or ERROR lines the bot logged during this test (not declared as expected)."""
        text = self.bot.log_text(since=self._mark.log_offset if self._mark else 0)
        bad = []
        for line in text.splitlines():
            if ("Traceback" in line or " ERROR " in line) and not any(a in line for a in self.allowed_log):
                bad.append(line)
        return bad

    def end_test(self) -> None:
        """The checks every scenario ends with (the fixture calls this after the test body)."""
        assert self._mark is not None
        unhandled = self.fake.unhandled[self._mark.unhandled:]
        del self.fake.unhandled[:]  # so one bad test does not fail every later one
        problems = []
        if unhandled:
            problems.append(f"unknown routes were called: {unhandled}")
        if errors := self.discord_errors():
            problems.append("the bot broke Discord rules:\n  " + "\n  ".join(errors))
        if logged := self.log_problems():
            problems.append("the bot logged errors:\n  " + "\n  ".join(logged[:20]))
        if not self.bot.running():
            problems.append(f"the bot is not running (exit code {self.bot.proc.returncode if self.bot.proc else None})")
        assert not problems, "\n".join(problems) + f"\n--- bot log tail ---\n{self.bot.log_tail()}"

    # ---- waiting -------------------------------------------------------------------------------------

    async def wait(self, predicate: Any, timeout: float = 30.0, what: str = "a condition") -> Any:
        return await self.bot.wait(predicate, timeout, what)

    async def result(self, rec: InteractionRecord, timeout: float = 60.0) -> StoredMessage:
        """The interaction's message once it shows a final image with buttons."""

        def done() -> StoredMessage | None:
            msg = rec.original
            if msg is not None and msg.attachments and msg.buttons() and not msg.loading:
                return msg
            refusal = _refusal(rec)
            if refusal is not None:  # fail now rather than at the deadline
                raise AssertionError(f"expected a result on interaction {rec.id} ({_what(rec)}), got: {refusal}")
            return None

        return await self.wait(done, timeout, f"a result image on interaction {rec.id} ({_what(rec)})")

    async def final_text(self, rec: InteractionRecord, needle: str, timeout: float = 60.0) -> StoredMessage:
        """The interaction's message once its content contains ``needle``."""

        def found() -> StoredMessage | None:
            msg = rec.original
            return msg if msg is not None and needle in msg.content else None

        return await self.wait(found, timeout, f"{needle!r} in the message of interaction {rec.id} ({_what(rec)})")

    async def ephemeral(self, rec: InteractionRecord, timeout: float = 15.0) -> str:
        """The text of the ephemeral answer to ``rec`` (initial response or followup)."""

        def find() -> str | None:
            for msg in ([rec.original] if rec.original else []) + rec.followups:
                if msg.ephemeral and not msg.loading and (msg.content or msg.embeds):
                    parts = [msg.content] + [f"{e.get('title', '')}\n{e.get('description', '')}" for e in msg.embeds]
                    return "\n".join(p for p in parts if p)
            return None

        return await self.wait(find, timeout, f"an ephemeral answer to interaction {rec.id} ({_what(rec)})")

    # ---- user actions ----------------------------------------------------------------------------------

    async def imagine(self, user: FakeMember, prompt: str, **options: Any) -> InteractionRecord:
        return await self.fake.slash(user=user, name="imagine", options={"prompt": prompt, **options})

    # ---- images --------------------------------------------------------------------------------------

    async def image(self, msg: StoredMessage, index: int = 0) -> tuple[Image.Image, str]:
        """Download attachment ``index`` over HTTP, decode it, and return it with its A1111 ``parameters`` text."""
        data = await self.fake.download(msg.attachments[index])
        img = Image.open(io.BytesIO(data))
        img.load()
        return img, str(img.info.get("parameters", ""))

    # ---- the bot's database (read-only) ---------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        uri = f"file:{self.bot.database}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, params).fetchall()

    def job_count(self) -> int:
        return int(self.query("SELECT count(*) FROM jobs")[0][0])

    def job(self, job_id: int) -> sqlite3.Row:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        assert rows, f"job {job_id} is not in the database"
        return rows[0]

    def hypernet_rows(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM hypernets ORDER BY id")


def job_id_of(msg: StoredMessage) -> int:
    """The job a result message shows, read from its buttons' custom_ids (they carry only the job id)."""
    for button in msg.buttons():
        match = JOB_ID_IN_CUSTOM_ID.match(str(button.get("custom_id", "")))
        if match:
            return int(match.group(1))
    raise LookupError(f"message {msg.id} has no job buttons: {msg.buttons()}")


def _refusal(rec: InteractionRecord) -> str | None:
    """The text of an ephemeral refusal or of a failed job's final message, if the interaction ended that way."""
    for msg in ([rec.original] if rec.original else []) + rec.followups:
        if msg.ephemeral and not msg.loading and msg.content:
            return msg.content
    lines = rec.original.content.splitlines() if rec.original is not None else []
    if rec.original is not None and any(line.lstrip().startswith(("❌", "⚠️")) for line in lines):
        return rec.original.content
    return None


def _what(rec: InteractionRecord) -> str:
    data = rec.data or {}
    if rec.type in (2, 4):
        return f"/{data.get('name')}"
    return str(data.get("custom_id", f"type {rec.type}"))


@contextlib.asynccontextmanager
async def running_e2e(root: Path, *, config: Mapping[str, Any] | None = None,
                      start_timeout: float = 90.0) -> AsyncIterator[E2E]:
    """A fake Discord and the real bot process pointed at it (``config`` overrides limits/engine/intake)."""
    async with FakeDiscord() as fake:
        bot = BotProcess(root, fake, config_for(fake, **(config or {})))
        try:
            await bot.start(start_timeout)
            yield E2E(fake, bot)
        finally:
            await bot.stop()
