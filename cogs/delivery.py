"""Posting one job's message to Discord: throttled progress edits, the result, and every way that can go wrong.

Why one class owns the message: the rules interact.  The interaction token works for 15 minutes only, so past
``TOKEN_MARGIN_S`` (or on a 401 "Invalid Webhook Token") the message moves to the channel, posted with the bot
token; progress edits are throttled to one every ``min_interval`` seconds with only the newest state sent; Discord
answers 429/5xx now and then (discord.py retries those it can; we retry what it gives up on); images larger than
the upload limit are re-encoded rather than failing; a 403 is explained instead of leaving "thinking…" forever.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import discord
from PIL import Image

__all__ = ["DEFAULT_UPLOAD_LIMIT", "TOKEN_MARGIN_S", "JobMessage", "Upload", "fit_images", "is_token_error",
           "with_retries"]

log = logging.getLogger(__name__)

#: Interaction tokens last 15 minutes; stop using one a minute early (edits in flight, clock skew).
TOKEN_MARGIN_S = 14 * 60
#: Discord's upload limit for a message posted with the bot token (interactions tell their own).
DEFAULT_UPLOAD_LIMIT = 10 * 2**20
T = TypeVar("T")

MISSING_ATTACH = ("I could not post the image here: I am missing the **Attach Files** (or **Embed Links**) "
                  "permission in this channel. Ask a server admin to grant it, then use `/show {job_id}`.")


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    data: bytes
    description: str | None = None

    def file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename, description=self.description)


def is_token_error(exc: discord.HTTPException) -> bool:
    """401 / 50027 "Invalid Webhook Token" or an unknown webhook: the interaction token is no longer usable."""
    return exc.status == 401 or exc.code in (50027, 10015)


async def with_retries(call: Callable[[], Awaitable[T]], *, attempts: int = 3, base_delay: float = 0.5) -> T:
    """Run ``call`` again on Discord server errors and un-retried 429s (discord.py already retries most)."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except discord.HTTPException as exc:
            retryable = exc.status == 429 or exc.status >= 500
            if not retryable or attempt == attempts:
                raise
            delay = base_delay * 2 ** (attempt - 1)
            log.warning("Discord answered %s; retrying in %.1f s (attempt %d/%d)", exc.status, delay, attempt, attempts)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def fit_image(png: bytes, limit: int, stem: str) -> tuple[Upload, bool]:
    """The PNG as is when it fits, else WebP, then JPEG, then downscaled JPEG: never a refusal for size.

    Returns the upload and whether it was re-encoded (the PNG's infotext is lost then; Info still has it)."""
    if len(png) <= limit:
        return Upload(f"{stem}.png", png), False
    img: Image.Image = Image.open(io.BytesIO(png))
    img.load()
    for fmt, ext, quality in (("WEBP", "webp", 90), ("JPEG", "jpg", 85), ("WEBP", "webp", 60), ("JPEG", "jpg", 50)):
        data = _encode(img, fmt, quality)
        if len(data) <= limit:
            return Upload(f"{stem}.{ext}", data), True
    while max(img.size) > 8:
        img = img.resize((max(1, img.width * 3 // 4), max(1, img.height * 3 // 4)), Image.Resampling.LANCZOS)
        data = _encode(img, "JPEG", 50)
        if len(data) <= limit:
            return Upload(f"{stem}.jpg", data), True
    raise ValueError(f"cannot fit an image into {limit} bytes")


def fit_images(pngs: list[bytes], limit: int, stem: str) -> tuple[list[Upload], bool]:
    """Every image fitted to the per-file ``limit``; True when any had to be re-encoded."""
    out, changed = [], False
    for i, png in enumerate(pngs):
        upload, re_encoded = fit_image(png, limit, f"{stem}_{i}" if len(pngs) > 1 else stem)
        out.append(upload)
        changed = changed or re_encoded
    return out, changed


class JobMessage:
    """The message that shows one job: via the interaction webhook while its token is fresh, else the channel.

    ``webhook`` + ``message_id`` address the interaction's message; ``token_created_at`` is when the token was
    issued (unix time).  ``reply_to`` is a channel message a channel-posted message should reply to.
    """

    def __init__(self, client: discord.Client, channel_id: int, *, webhook: discord.Webhook | None,
                 message_id: int | None, token_created_at: float | None, upload_limit: int,
                 reply_to: int | None = None, mention: int | None = None, min_interval: float = 1.5) -> None:
        self.client = client
        self.channel_id = channel_id
        self.webhook = webhook
        self.message_id = message_id  # the interaction message while via_token; the channel message after
        self.token_created_at = token_created_at
        self.upload_limit = upload_limit
        self.reply_to = reply_to
        self.mention = mention
        self.min_interval = min_interval
        self.via_token = webhook is not None and message_id is not None
        self._channel_message_id: int | None = None
        self._pending: tuple[str, discord.ui.View | None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._last_edit = 0.0
        self._sending = False

    # ---- where to post -------------------------------------------------------------------------------

    def token_fresh(self) -> bool:
        return self.via_token and self.token_created_at is not None and (
            time.time() - self.token_created_at < TOKEN_MARGIN_S)

    @property
    def current_message_id(self) -> int | None:
        return self.message_id if self.via_token else self._channel_message_id

    async def _leave_token(self, reason: str) -> None:
        """Switch to the channel; tell the interaction message where the job went (best effort: may be expired)."""
        if not self.via_token:
            return
        log.info("job message moves to the channel: %s", reason)
        self.via_token = False
        assert self.webhook is not None and self.message_id is not None
        try:
            await self.webhook.edit_message(self.message_id, content="⏳ Still working — the result will be posted "
                                            "in this channel.", view=None, embed=None, attachments=[])
        except discord.HTTPException:
            pass

    async def channel(self) -> discord.abc.Messageable:
        channel = self.client.get_channel(self.channel_id)
        if channel is None:
            channel = await self.client.fetch_channel(self.channel_id)
        assert isinstance(channel, discord.abc.Messageable)
        return channel

    # ---- sending -------------------------------------------------------------------------------------

    async def _send(self, *, content: str, view: discord.ui.View | None, embed: discord.Embed | None = None,
                    uploads: list[Upload] | None = None, new_message: bool = False) -> None:
        """Edit the job's message (or create the channel one) with this state; retries server errors."""
        if self.via_token and not self.token_fresh():
            await self._leave_token("the interaction token is about to expire")
        kwargs: dict[str, Any] = {"content": content, "view": view, "embed": embed}
        if self.via_token:
            assert self.webhook is not None and self.message_id is not None
            files = [u.file for u in uploads or []]
            try:
                await with_retries(lambda: self.webhook.edit_message(  # type: ignore[union-attr]
                    self.message_id, attachments=[f() for f in files], **kwargs))  # type: ignore[arg-type]
                return
            except discord.HTTPException as exc:
                if not is_token_error(exc):
                    raise
                await self._leave_token(f"Discord refused the token ({exc.status}/{exc.code})")
        channel = await self.channel()
        if self._channel_message_id is not None and not new_message:
            partial = channel.get_partial_message(self._channel_message_id)  # type: ignore[attr-defined]
            files = [u.file for u in uploads or []]
            await with_retries(lambda: partial.edit(attachments=[f() for f in files], **kwargs))
            return
        if self.mention is not None:
            kwargs["content"] = f"<@{self.mention}> {content}"[:2000]
        if self.reply_to is not None:
            kwargs["reference"] = discord.MessageReference(message_id=self.reply_to, channel_id=self.channel_id,
                                                           fail_if_not_exists=False)
        files = [u.file for u in uploads or []]
        sent = await with_retries(lambda: channel.send(files=[f() for f in files],
                                                       **{k: v for k, v in kwargs.items() if v is not None}))
        old, self._channel_message_id = self._channel_message_id, sent.id
        if old is not None and old != sent.id:
            try:
                await channel.get_partial_message(old).edit(  # type: ignore[attr-defined]
                    content=f"✅ Finished — see {sent.jump_url}", view=None)
            except discord.HTTPException:
                pass

    # ---- progress ------------------------------------------------------------------------------------

    def status(self, content: str, view: discord.ui.View | None = None) -> None:
        """Show ``content``; sent at once if the last edit is old enough, else the newest state is sent later."""
        self._pending = (content, view)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="job-message-flush")

    async def _flush(self) -> None:
        while self._pending is not None:
            wait = self._last_edit + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            pending, self._pending = self._pending, None
            if pending is None:
                return
            self._sending = True
            try:
                await self._send(content=pending[0], view=pending[1])
            except discord.HTTPException as exc:
                log.warning("progress edit failed (%s %s): %s", exc.status, exc.code, exc.text)
            except Exception:
                log.exception("progress edit failed")
            finally:
                self._sending = False
            self._last_edit = time.monotonic()

    async def settle(self) -> None:
        """Drop progress not yet sent and wait for an edit in flight (before the final state)."""
        self._pending = None
        if self._flusher is not None:
            if not self._sending:
                self._flusher.cancel()  # only sleeping until the next edit is allowed
            await asyncio.gather(self._flusher, return_exceptions=True)

    # ---- final states ----------------------------------------------------------------------------------

    async def final(self, *, content: str, view: discord.ui.View | None = None, embed: discord.Embed | None = None,
                    pngs: list[bytes] | None = None, stem: str = "image", job_id: int = 0,
                    new_message: bool = False) -> str:
        """Post the final state; returns a note for the embed ("" or why the images were re-encoded).

        Never raises for Discord errors it can explain: a 403 turns into a text-only message saying which
        permission is missing; a last failure is logged (the job itself is already stored)."""
        await self.settle()
        limit = self.upload_limit if self.via_token and self.token_fresh() else min(self.upload_limit, DEFAULT_UPLOAD_LIMIT)
        # Re-encoding a large image takes CPU time: keep it off the event loop.
        uploads, re_encoded = await asyncio.to_thread(fit_images, pngs, limit, stem) if pngs else ([], False)
        note = "re-encoded to fit Discord's upload limit (PNG info is in Info)" if re_encoded else ""
        if note and embed is not None:
            embed.set_footer(text=f"{embed.footer.text} · {note}" if embed.footer.text else note)
        # In the channel, the final state is a new message (it notifies the user; edits do not).
        new_message = new_message or not self.via_token
        try:
            await self._send(content=content, view=view, embed=embed, uploads=uploads, new_message=new_message)
        except discord.Forbidden as exc:
            log.warning("posting job %s was forbidden (%s): %s", job_id, exc.code, exc.text)
            text = MISSING_ATTACH.format(job_id=job_id) if uploads else (
                "I am missing a permission to post here (Send Messages / Embed Links); ask a server admin.")
            try:
                await self._send(content=f"⚠️ {text}", view=None, embed=None, uploads=[])
            except discord.HTTPException:
                log.warning("could not explain the missing permission for job %s", job_id, exc_info=True)
        except discord.HTTPException:
            log.exception("could not post the result of job %s", job_id)
        return note
