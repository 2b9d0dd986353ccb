"""FakeDiscord: the object a test holds. It owns the world (state.py), serves REST (rest.py) and the
gateway (gateway.py) on 127.0.0.1 with an ephemeral port, and offers driver helpers (driver.py).

Usage::

    async with FakeDiscord() as fake:
        discord.http.Route.BASE = fake.rest_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
        ...
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import payloads as P
from .driver import Driver
from .gateway import Gateway
from .limits import DEFAULT_UPLOAD_LIMIT
from .rest import build_routes
from .state import FakeAttachment, FakeChannel, FakeMember, FakeRole, FakeUser, Guild, InteractionRecord, StoredMessage


@dataclass
class Injection:
    """Answer the next ``times`` requests matching method + path regex with ``status`` instead of handling them."""

    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: float
    is_global: bool
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.hits < self.times and self.method in ("*", method) and bool(self.pattern.fullmatch(path))


class FakeDiscord(Driver):
    """A loopback Discord for one test: REST under ``rest_base``, the gateway at ``gateway_url``."""

    def __init__(self, *, token: str = "fake-bot-token", response_timeout: float = 3.0, token_lifetime: float = 900.0,
                 attachment_size_limit: int = DEFAULT_UPLOAD_LIMIT, heartbeat_interval_ms: int = 41250) -> None:
        self.token = token
        self.response_timeout = response_timeout          # the 3-second window for the first response
        self.token_lifetime = token_lifetime              # the 15-minute interaction token
        self.attachment_size_limit = attachment_size_limit  # per file; copied into each new interaction
        self.ids = P.Snowflakes()
        self.gateway = Gateway(self, heartbeat_interval_ms=heartbeat_interval_ms)
        self.unhandled: list[str] = []                     # "METHOD /path" of every unknown route hit
        self.requests: list[tuple[str, str]] = []          # every REST request (method, path under /api/v10)
        self.injections: list[Injection] = []
        self.global_sync_calls = 0
        self.guild_sync_calls = 0
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.messages: dict[int, StoredMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.interactions: dict[int, InteractionRecord] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._build_world()

    # ---- world -----------------------------------------------------------------------------------

    def _build_world(self) -> None:
        nid = self.ids.next
        self.bot_user = FakeUser(nid(), "hypercord-test", bot=True)
        self.application_id = self.bot_user.id  # as on Discord: a bot's user id is its application id
        admin, manager, plain = FakeUser(nid(), "alice_admin"), FakeUser(nid(), "mo_manager"), FakeUser(nid(), "pat_plain")
        gid = nid()
        roles = {
            gid: FakeRole(gid, "@everyone", P.EVERYONE_DEFAULT, 0),
            (r_admin := nid()): FakeRole(r_admin, "Admin", P.ADMINISTRATOR, 3),
            (r_mgr := nid()): FakeRole(r_mgr, "Manager", P.MANAGE_GUILD, 2),
            (r_bot := nid()): FakeRole(r_bot, "hypercord-test", P.EVERYONE_DEFAULT | P.MANAGE_MESSAGES, 1, managed=True),
        }
        general, nsfw = FakeChannel(nid(), "general", 0), FakeChannel(nid(), "nsfw-art", 1, nsfw=True)
        self.member_admin = FakeMember(admin, [r_admin])
        self.member_manager = FakeMember(manager, [r_mgr])
        self.member_plain = FakeMember(plain, [])
        self.member_bot = FakeMember(self.bot_user, [r_bot])
        members = {m.id: m for m in (self.member_admin, self.member_manager, self.member_plain, self.member_bot)}
        # The owner is a separate user so the admin's every-bit permissions come from the Administrator role.
        owner = FakeUser(nid(), "olga_owner")
        self.member_owner = FakeMember(owner, [])
        members[owner.id] = self.member_owner
        self.guild = Guild(gid, "Fake Guild", owner.id, roles, {general.id: general, nsfw.id: nsfw}, members)
        self.channel_general, self.channel_nsfw = general, nsfw

    def ready_payload(self, session_id: str) -> dict[str, Any]:
        return {
            "v": 10,
            "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(self.guild.id), "unavailable": True}],
            "session_id": session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "shard": [0, 1],
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "auth": {},
        }

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rest_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def start(self) -> None:
        app = web.Application(client_max_size=512 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        build_routes(self, app)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- failure injection -----------------------------------------------------------------------

    def inject(self, method: str, path: str, *, status: int = 429, times: int = 1, retry_after: float = 0.05,
               is_global: bool = False) -> Injection:
        """Make the next ``times`` requests whose path (under /api/v10) fully matches regex ``path`` fail.

        429 answers carry what discord.py needs to retry (Via header, JSON {retry_after, global}, Retry-After,
        X-RateLimit-Scope); 5xx answers carry Discord's JSON error body. Check ``injection.hits`` afterwards.
        """
        inj = Injection(method.upper(), re.compile(path), status, times, retry_after, is_global)
        self.injections.append(inj)
        return inj

    def take_injection(self, method: str, path: str) -> Injection | None:
        for inj in self.injections:
            if inj.matches(method, path):
                inj.hits += 1
                return inj
        return None

    # ---- messages --------------------------------------------------------------------------------

    def new_attachment(self, filename: str, data: bytes, content_type: str | None = None,
                       description: str | None = None) -> FakeAttachment:
        aid = self.ids.next()
        att = FakeAttachment(aid, filename, data, content_type or _guess_type(filename),
                             f"{self.base_url}/attachments/{aid}/{filename}", description)
        self.attachments[aid] = att
        return att

    def message_payload(self, mid: int, channel_id: int, author: FakeUser, *, mtype: int = 0,
                        interaction: InteractionRecord | None = None) -> dict[str, Any]:
        """The skeleton of a message; ``apply_body`` fills in what the sender chose."""
        out: dict[str, Any] = {
            "id": str(mid), "channel_id": str(channel_id), "guild_id": str(self.guild.id), "author": author.payload(),
            "content": "", "timestamp": P.iso_now(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
            "components": [], "pinned": False, "type": mtype, "flags": 0,
        }
        member = self.guild.members.get(author.id)
        if member is not None and interaction is None:
            out["member"] = {k: v for k, v in self.guild.member_payload(member).items() if k != "user"}
        if interaction is not None:
            out["webhook_id"] = str(self.application_id)
            out["application_id"] = str(self.application_id)
            out["interaction_metadata"] = {
                "id": str(interaction.id), "type": interaction.type, "user": interaction.user.user.payload(),
                "authorizing_integration_owners": {"0": str(self.guild.id)},
            }
        return out

    def store_message(self, payload: dict[str, Any]) -> StoredMessage:
        msg = StoredMessage(int(payload["id"]), int(payload["channel_id"]))
        msg.record(payload)
        self.messages[msg.id] = msg
        return msg

    def channel_messages(self, channel: FakeChannel | int, *, include_ephemeral: bool = False) -> list[StoredMessage]:
        """Messages in a channel, oldest first (deleted ones excluded)."""
        cid = channel if isinstance(channel, int) else channel.id
        return [m for m in self.messages.values()
                if m.channel_id == cid and not m.deleted and (include_ephemeral or not m.ephemeral)]

    def token_valid(self, rec: InteractionRecord) -> bool:
        return not rec.expired and time.monotonic() - rec.created <= self.token_lifetime


def _guess_type(filename: str) -> str | None:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif",
            "txt": "text/plain; charset=utf-8", "json": "application/json", "pt": "application/octet-stream",
            "safetensors": "application/octet-stream"}.get(ext)
