"""REST routes under /api/v10, plus attachment downloads and the unknown-route catch-all.

A middleware puts rate-limit headers on every answer, serves injected 429/5xx answers, turns
``DiscordError`` into Discord's JSON error body and records unknown routes in ``fake.unhandled``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import payloads as P
from .limits import DEFAULT_UPLOAD_LIMIT, DiscordError, validate_choices, validate_modal
from .messaging import Body, create_message, delete_message, edit_message, read_body
from .state import InteractionRecord, StoredMessage

if TYPE_CHECKING:
    from .server import FakeDiscord

API = "/api/v10"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py's json_or_text() compares the header verbatim.
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})


def build_routes(fake: FakeDiscord, app: web.Application) -> None:
    r = _Routes(fake)
    app.middlewares.append(r.middleware)
    add = app.router.add_route
    add("GET", API + "/users/@me", r.me)
    add("GET", API + "/oauth2/applications/@me", r.app_info)
    add("GET", API + "/gateway", r.gateway_info)
    add("GET", API + "/gateway/bot", r.gateway_bot)
    for suffix in ("/applications/{app}/commands", "/applications/{app}/guilds/{guild}/commands"):
        add("PUT", API + suffix, r.put_commands)
        add("GET", API + suffix, r.get_commands)
    add("POST", API + "/interactions/{iid}/{token}/callback", r.callback)
    add("POST", API + "/webhooks/{app}/{token}", r.followup)
    for method in ("GET", "PATCH", "DELETE"):
        add(method, API + "/webhooks/{app}/{token}/messages/{mid}", r.webhook_message)
    add("GET", API + "/channels/{cid}", r.get_channel)
    add("POST", API + "/channels/{cid}/typing", r.typing)
    add("POST", API + "/channels/{cid}/messages", r.post_message)
    add("GET", API + "/channels/{cid}/messages", r.list_messages)
    for method in ("GET", "PATCH", "DELETE"):
        add(method, API + "/channels/{cid}/messages/{mid}", r.channel_message)
    add("GET", "/attachments/{aid}/{name}", r.download)
    app.router.add_route("*", "/{tail:.*}", r.unknown)


class _Routes:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake

    # ---- middleware ------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/gateway":
            return await handler(request)
        path = request.path[len(API):] if request.path.startswith(API) else request.path
        self.fake.requests.append((request.method, path))
        route = request.match_info.route.resource
        bucket = f"fake-{abs(hash((request.method, route.canonical if route else path))) % 10**12:x}"
        inj = self.fake.take_injection(request.method, path)
        if inj is not None:
            await request.read()
            resp = self._injected(inj.status, inj.retry_after, inj.is_global, bucket)
        else:
            try:
                resp = await handler(request)
            except DiscordError as e:
                resp = json_response(e.body(), e.status)
                self._note_interaction_error(request, e)
        if "X-RateLimit-Remaining" not in resp.headers:
            resp.headers.update(P.rate_limit_headers(bucket))
        return resp

    def _injected(self, status: int, retry_after: float, is_global: bool, bucket: str) -> web.Response:
        if status == 429:
            resp = json_response({"message": "You are being rate limited.", "retry_after": retry_after,
                                  "global": is_global, "code": 0}, 429)
            resp.headers.update(P.rate_limit_headers(bucket, remaining=0, reset_after=retry_after))
            resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
            resp.headers["X-RateLimit-Scope"] = "global" if is_global else "user"
            if is_global:
                resp.headers["X-RateLimit-Global"] = "true"
            resp.headers["Via"] = "1.1 google"
            return resp
        return json_response({"message": f"{status}: Server Error", "code": 0}, status)

    def _note_interaction_error(self, request: web.Request, e: DiscordError) -> None:
        token = request.match_info.get("token")
        for rec in self.fake.interactions.values():
            if rec.token == token:
                rec.errors.append({"status": e.status, **e.body()})

    def _bot_auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.fake.token}":
            raise DiscordError(401, 0, "401: Unauthorized")

    # ---- login / gateway / commands ---------------------------------------------------------------

    async def me(self, request: web.Request) -> web.Response:
        self._bot_auth(request)
        return json_response({**self.fake.bot_user.payload(), "verified": True, "mfa_enabled": False, "flags": 0})

    async def app_info(self, request: web.Request) -> web.Response:
        self._bot_auth(request)
        return json_response(P.application(self.fake.application_id, self.fake.member_owner.user.payload(),
                                           self.fake.bot_user.name))

    async def gateway_info(self, request: web.Request) -> web.Response:
        return json_response({"url": self.fake.gateway_url})

    async def gateway_bot(self, request: web.Request) -> web.Response:
        self._bot_auth(request)
        return json_response({"url": self.fake.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}})

    def _command_list(self, request: web.Request) -> list[dict[str, Any]]:
        self._bot_auth(request)
        if request.match_info["app"] != str(self.fake.application_id):
            raise DiscordError(403, 50001, "Missing Access")
        guild = request.match_info.get("guild")
        if guild is None:
            return self.fake.global_commands
        if guild != str(self.fake.guild.id):
            raise DiscordError(403, 50001, "Missing Access")
        return self.fake.guild_commands.setdefault(int(guild), [])

    async def get_commands(self, request: web.Request) -> web.Response:
        return json_response(self._command_list(request))

    async def put_commands(self, request: web.Request) -> web.Response:
        current = self._command_list(request)
        body = await request.json()
        guild = request.match_info.get("guild")
        _validate_commands(body)
        old = {(c["name"], c.get("type", 1)): c for c in current}
        new = []
        for cmd in body:
            prev = old.get((cmd["name"], cmd.get("type", 1)))
            out = {**cmd, "id": prev["id"] if prev else str(self.fake.ids.next()),
                   "application_id": str(self.fake.application_id), "version": str(self.fake.ids.next()),
                   "type": cmd.get("type", 1), "description": cmd.get("description", ""),
                   "options": cmd.get("options", []), "nsfw": cmd.get("nsfw", False)}
            perms = cmd.get("default_member_permissions")
            out["default_member_permissions"] = None if perms is None else str(perms)
            if guild is not None:
                out["guild_id"] = guild
            new.append(out)
        current[:] = new
        if guild is None:
            self.fake.global_sync_calls += 1
        else:
            self.fake.guild_sync_calls += 1
        return json_response(new)

    # ---- interactions ----------------------------------------------------------------------------

    def _interaction_by_token(self, token: str) -> InteractionRecord:
        for rec in self.fake.interactions.values():
            if rec.token == token:
                if not self.fake.token_valid(rec):
                    raise DiscordError(401, 50027, "Invalid Webhook Token")
                return rec
        raise DiscordError(404, 10015, "Unknown Webhook")

    async def callback(self, request: web.Request) -> web.Response:
        fake = self.fake
        rec = fake.interactions.get(int(request.match_info["iid"]))
        body = await read_body(request)
        if rec is None or rec.token != request.match_info["token"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        if rec.acknowledged:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - rec.created > fake.response_timeout:
            rec.late_callbacks += 1
            raise DiscordError(404, 10062, "Unknown interaction")
        rtype = int((body.json or {}).get("type", 0))
        data = (body.json or {}).get("data") or {}
        inner = Body(json=data, files=body.files)
        message = await self._apply_callback(rec, rtype, data, inner)
        rec.response_type, rec.response_data = rtype, data
        interaction = {"id": str(rec.id), "type": rec.type, "response_message_loading": rtype == 5,
                       "response_message_ephemeral": bool(message and message.ephemeral)}
        resource: dict[str, Any] = {"type": rtype}
        if message is not None:
            interaction["response_message_id"] = str(message.id)
            resource["message"] = message.payload
        return json_response({"interaction": interaction, "resource": resource})

    async def _apply_callback(self, rec: InteractionRecord, rtype: int, data: dict[str, Any],
                              body: Body) -> StoredMessage | None:
        fake, limit = self.fake, int(rec.payload["attachment_size_limit"])
        allowed = {1: {1}, 2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}.get(rec.type, set())
        if rtype not in allowed:
            raise DiscordError(400, 50035, "Invalid Form Body", {"type": {"_errors": [
                {"code": "INTERACTION_RESPONSE_TYPE_INVALID",
                 "message": f"Response type {rtype} is not valid for interaction type {rec.type}"}]}})
        if rtype in (4, 5):
            ephemeral = int(data.get("flags") or 0) & P.FLAG_EPHEMERAL
            forced = ephemeral | (P.FLAG_LOADING if rtype == 5 else 0)
            if rtype == 5:
                body = Body(json={"flags": ephemeral})
            mtype = 20 if rec.type == 2 else 0
            rec.original = await create_message(fake, rec.channel_id, fake.bot_user, body, upload_limit=limit,
                                                interaction=rec, mtype=mtype, prefix=("data",), forced_flags=forced)
            return rec.original
        if rtype in (6, 7):
            if rec.source_message is None:
                raise DiscordError(400, 50035, "Invalid Form Body", {"type": {"_errors": [
                    {"code": "INTERACTION_RESPONSE_TYPE_INVALID", "message": "No message to update"}]}})
            rec.original = rec.source_message
            if rtype == 7:
                await edit_message(fake, rec.source_message, body, upload_limit=limit, prefix=("data",))
                return rec.original
            return None
        if rtype == 8:
            validate_choices(data)
            rec.choices = list(data.get("choices") or [])
        elif rtype == 9:
            validate_modal(data)
            rec.modal = data
        return None

    async def followup(self, request: web.Request) -> web.Response:
        rec = self._interaction_by_token(request.match_info["token"])
        body = await read_body(request)
        if not rec.acknowledged:
            raise DiscordError(404, 10015, "Unknown Webhook")
        limit = int(rec.payload["attachment_size_limit"])
        if rec.response_type == 5 and rec.original is not None and rec.original.loading:
            # Discord's backwards-compatible quirk: the first followup after a defer replaces "thinking…" — and the
            # message keeps the defer's visibility whatever the followup's flags say, so an "ephemeral" followup
            # after a public defer is shown to everyone.
            msg = await edit_message(self.fake, rec.original, body, upload_limit=limit)
            rec.followup_edits += 1
        else:
            flags = int((body.json or {}).get("flags") or 0) & P.FLAG_EPHEMERAL
            msg = await create_message(self.fake, rec.channel_id, self.fake.bot_user, body, upload_limit=limit,
                                       interaction=rec, forced_flags=flags)
            rec.followups.append(msg)
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(msg.payload)
        return web.Response(status=204)

    async def webhook_message(self, request: web.Request) -> web.StreamResponse:
        rec = self._interaction_by_token(request.match_info["token"])
        mid = request.match_info["mid"]
        owned = ([rec.original] if rec.original else []) + rec.followups
        msg = rec.original if mid == "@original" else next((m for m in owned if str(m.id) == mid), None)
        if msg is None or msg.deleted:
            raise DiscordError(404, 10008, "Unknown Message")
        if request.method == "GET":
            return json_response(msg.payload)
        if request.method == "DELETE":
            await delete_message(self.fake, msg)
            return web.Response(status=204)
        body = await read_body(request)
        await edit_message(self.fake, msg, body, upload_limit=int(rec.payload["attachment_size_limit"]))
        return json_response(msg.payload)

    # ---- channels --------------------------------------------------------------------------------

    def _channel_id(self, request: web.Request) -> int:
        self._bot_auth(request)
        cid = int(request.match_info["cid"])
        if cid not in self.fake.guild.channels:
            raise DiscordError(404, 10003, "Unknown Channel")
        return cid

    async def get_channel(self, request: web.Request) -> web.Response:
        cid = self._channel_id(request)
        return json_response(self.fake.guild.channel_payload(self.fake.guild.channels[cid]))

    async def typing(self, request: web.Request) -> web.Response:
        self._channel_id(request)
        return web.Response(status=204)

    async def post_message(self, request: web.Request) -> web.Response:
        cid = self._channel_id(request)
        if not self.fake.guild.permissions_in(self.fake.member_bot, cid) & P.SEND_MESSAGES:
            raise DiscordError(403, 50013, "Missing Permissions")
        body = await read_body(request)
        msg = await create_message(self.fake, cid, self.fake.bot_user, body, upload_limit=DEFAULT_UPLOAD_LIMIT)
        return json_response(msg.payload)

    async def list_messages(self, request: web.Request) -> web.Response:
        cid = self._channel_id(request)
        limit = int(request.query.get("limit", 50))
        msgs = [m.payload for m in reversed(self.fake.channel_messages(cid))][:limit]
        return json_response(msgs)

    async def channel_message(self, request: web.Request) -> web.StreamResponse:
        cid = self._channel_id(request)
        msg = self.fake.messages.get(int(request.match_info["mid"]))
        if msg is None or msg.deleted or msg.channel_id != cid or msg.ephemeral:
            raise DiscordError(404, 10008, "Unknown Message")
        if request.method == "GET":
            return json_response(msg.payload)
        if request.method == "DELETE":
            await delete_message(self.fake, msg)
            return web.Response(status=204)
        if msg.payload["author"]["id"] != str(self.fake.bot_user.id) or "webhook_id" in msg.payload:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        await edit_message(self.fake, msg, await read_body(request), upload_limit=DEFAULT_UPLOAD_LIMIT)
        return json_response(msg.payload)

    # ---- attachments and unknown routes ----------------------------------------------------------

    async def download(self, request: web.Request) -> web.Response:
        att = self.fake.attachments.get(int(request.match_info["aid"])) if request.match_info["aid"].isdigit() else None
        if att is None or att.filename != request.match_info["name"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, content_type=(att.content_type or "application/octet-stream").split(";")[0])

    async def unknown(self, request: web.Request) -> web.Response:
        self.fake.unhandled.append(f"{request.method} {request.path}")
        return json_response({"message": "404: Not Found", "code": 0}, 404)


def _validate_commands(body: Any) -> None:
    if not isinstance(body, list) or len(body) > 200:
        raise DiscordError(400, 50035, "Invalid Form Body", {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
                                                                          "message": "Must be a list of commands"}]})
    errors: dict[str, Any] = {}
    for i, cmd in enumerate(body):
        name, desc = cmd.get("name", ""), cmd.get("description", "")
        problems = []
        if not 1 <= len(name) <= 32:
            problems.append("name must be 1-32 characters")
        if cmd.get("type", 1) == 1 and not 1 <= len(desc) <= 100:
            problems.append("description must be 1-100 characters")
        if len(cmd.get("options") or []) > 25:
            problems.append("at most 25 options")
        if problems:
            errors[str(i)] = {"_errors": [{"code": "APPLICATION_COMMAND_INVALID", "message": p} for p in problems]}
    if errors:
        raise DiscordError(400, 50035, "Invalid Form Body", errors)
