"""The gateway websocket: HELLO/heartbeat, IDENTIFY → READY + GUILD_CREATE, RESUME with replay,
and server-side RECONNECT / INVALID_SESSION controls for tests.

Frames are always TEXT JSON; discord.py only inflates binary frames, so no zlib is needed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .server import FakeDiscord

INTENT_GUILD_MESSAGES = 1 << 9
INTENT_MESSAGE_CONTENT = 1 << 15


@dataclass
class Session:
    id: str
    intents: int
    seq: int = 0
    buffer: list[dict[str, Any]] = field(default_factory=list)  # every dispatch frame sent or owed
    ws: web.WebSocketResponse | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Gateway:
    """One fake gateway; it tracks the bot's current session and counts what happened for assertions."""

    def __init__(self, fake: FakeDiscord, *, heartbeat_interval_ms: int = 41250) -> None:
        self.fake = fake
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, Session] = {}
        self.current: Session | None = None
        self.identify_count = 0
        self.resume_count = 0
        self.replayed = 0            # dispatches re-sent during RESUMEs
        self.heartbeats = 0
        self.close_codes: list[int] = []  # codes the server closed with (4004 on a bad token)
        self._sockets: set[web.WebSocketResponse] = set()

    # ---- server-side controls -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.current is not None and self.current.ws is not None

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a dispatch to the current session, or buffer it while the bot is away (replayed on RESUME)."""
        session = self.current
        if session is None:
            return
        if event.startswith("MESSAGE_") and not session.intents & INTENT_GUILD_MESSAGES:
            return
        async with session.lock:
            session.seq += 1
            frame = {"op": 0, "s": session.seq, "t": event, "d": data}
            session.buffer.append(frame)
            if session.ws is not None:
                await self._send(session.ws, frame)

    async def reconnect(self) -> None:
        """Send op 7 RECONNECT; the session stays resumable and further dispatches are buffered."""
        session = self._require_connected()
        async with session.lock:
            ws, session.ws = session.ws, None
            await self._send(ws, {"op": 7, "d": None})

    async def invalidate(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; with resumable=False the session is forgotten and the bot must IDENTIFY."""
        session = self._require_connected()
        async with session.lock:
            ws, session.ws = session.ws, None
            if not resumable:
                self.sessions.pop(session.id, None)
                self.current = None
            await self._send(ws, {"op": 9, "d": resumable})

    async def close_all(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001)

    def _require_connected(self) -> Session:
        if self.current is None or self.current.ws is None:
            raise RuntimeError("no bot is connected to the fake gateway")
        return self.current

    # ---- websocket handler ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._send(ws, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                await self._on_frame(ws, json.loads(msg.data))
        finally:
            self._sockets.discard(ws)
            for session in self.sessions.values():
                if session.ws is ws:
                    session.ws = None
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == 1:
            self.heartbeats += 1
            await self._send(ws, {"op": 11})
        elif op == 2:
            await self._identify(ws, d)
        elif op == 6:
            await self._resume(ws, d)
        elif op == 8:
            await self._members_chunk(d)
        # op 3 (presence) and op 4 (voice) are accepted and ignored.

    async def _identify(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        if d.get("token") != self.fake.token:
            self.close_codes.append(4004)
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identify_count += 1
        session = Session(id=secrets.token_hex(16), intents=int(d.get("intents", 0)), ws=ws)
        self.sessions[session.id] = session
        self.current = session
        await self.dispatch("READY", self.fake.ready_payload(session.id))
        await self.dispatch("GUILD_CREATE", self.fake.guild.payload())

    async def _resume(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        session = self.sessions.get(d.get("session_id", ""))
        if session is None or d.get("token") != self.fake.token:
            await self._send(ws, {"op": 9, "d": False})
            return
        self.resume_count += 1
        last = int(d.get("seq") or 0)
        async with session.lock:
            session.ws = ws
            self.current = session
            for frame in session.buffer:
                if frame["s"] > last:
                    self.replayed += 1
                    await self._send(ws, frame)
        await self.dispatch("RESUMED", {})

    async def _members_chunk(self, d: dict[str, Any]) -> None:
        guild = self.fake.guild
        await self.dispatch("GUILD_MEMBERS_CHUNK", {
            "guild_id": str(guild.id),
            "members": [guild.member_payload(m) for m in guild.members.values()],
            "chunk_index": 0,
            "chunk_count": 1,
            "nonce": d.get("nonce"),
        })

    @staticmethod
    async def _send(ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        if not ws.closed:
            await ws.send_str(json.dumps(frame))
