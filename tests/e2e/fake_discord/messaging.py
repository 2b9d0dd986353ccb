"""Message bodies: parse JSON or multipart requests, validate them, apply them to stored messages and
tell the gateway. Shared by channel routes (bot token) and interaction/webhook routes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import payloads as P
from .limits import DiscordError, check_upload_sizes, validate_message
from .state import FakeUser, InteractionRecord, StoredMessage

if TYPE_CHECKING:
    from .server import FakeDiscord


@dataclass
class Body:
    """A request body: the JSON part plus uploaded files keyed by their ``files[n]`` index."""

    json: Any
    files: dict[int, tuple[str, bytes, str | None]] = field(default_factory=dict)


async def read_body(request: web.Request) -> Body:
    ctype = request.headers.get("Content-Type", "")
    if ctype.startswith("multipart/"):
        body = Body(json=None)
        reader = await request.multipart()
        async for part in reader:
            name = part.name or ""  # type: ignore[union-attr]
            data = await part.read()  # type: ignore[union-attr]
            if name == "payload_json":
                body.json = json.loads(data)
            elif name.startswith("files[") and name.endswith("]"):
                body.files[int(name[6:-1])] = (part.filename or f"file{name[6:-1]}",  # type: ignore[union-attr]
                                               bytes(data), part.headers.get("Content-Type"))  # type: ignore[union-attr]
        return body
    raw = await request.read()
    return Body(json=json.loads(raw) if raw else None)


def _resolve_attachments(fake: FakeDiscord, body: dict[str, Any], files: dict[int, tuple[str, bytes, str | None]],
                         existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New attachment list: kept existing ones (by id) plus uploads (by files[n] index), in payload order."""
    by_id = {str(a["id"]): a for a in existing}
    used: set[int] = set()
    out: list[dict[str, Any]] = []
    if "attachments" in body and body["attachments"] is not None:
        for entry in body["attachments"]:
            key = str(entry.get("id"))
            if key in by_id:
                out.append(by_id[key])
            elif key.isdigit() and int(key) in files:
                name, data, ctype = files[int(key)]
                used.add(int(key))
                out.append(fake.new_attachment(entry.get("filename") or name, data, ctype,
                                               entry.get("description")).payload())
            else:
                raise DiscordError(400, 50035, "Invalid Form Body",
                                   {"attachments": {"_errors": [{"code": "ATTACHMENT_NOT_FOUND",
                                                                 "message": f"Unknown attachment {key}"}]}})
    else:
        out = list(existing)
    for index in sorted(set(files) - used):
        name, data, ctype = files[index]
        out.append(fake.new_attachment(name, data, ctype).payload())
    return out


def apply_body(fake: FakeDiscord, payload: dict[str, Any], body: Body, *, upload_limit: int,
               prefix: tuple[str, ...] = (), keep_flags: int = 0) -> dict[str, Any]:
    """Validate ``body`` and return a copy of ``payload`` with it applied (PATCH semantics: absent keys stay).

    ``keep_flags`` are the flags the message has whatever the body says: its EPHEMERAL bit is decided once, by the
    request that creates the message (a type-4/5 response's or a new followup's flags), and no edit changes it."""
    data = body.json or {}
    if not isinstance(data, dict):
        raise DiscordError(400, 50035, "Invalid Form Body", {"_errors": [{"code": "DICT_TYPE_CONVERT",
                                                                          "message": "Only dictionaries may be used"}]})
    validate_message(data, prefix=prefix)
    check_upload_sizes([(name, raw) for name, raw, _ in body.files.values()], upload_limit)
    out = dict(payload)
    if "content" in data:
        out["content"] = data["content"] or ""
    if "embeds" in data:
        out["embeds"] = data["embeds"] or []
    if "components" in data:
        out["components"] = data["components"] or []
    if "flags" in data and data["flags"] is not None:
        # EPHEMERAL is fixed when a message is created (by ``keep_flags``); a body can never set or clear it.
        out["flags"] = (int(data["flags"]) & ~P.FLAG_EPHEMERAL) | keep_flags
    if data.get("message_reference"):
        out["message_reference"] = data["message_reference"]
        out["type"] = 19
    out["attachments"] = _resolve_attachments(fake, data, body.files, payload.get("attachments", []))
    if not out["content"] and not out["embeds"] and not out["components"] and not out["attachments"] \
            and not out.get("flags", 0) & P.FLAG_LOADING:
        raise DiscordError(400, 50006, "Cannot send an empty message")
    return out


async def create_message(fake: FakeDiscord, channel_id: int, author: FakeUser, body: Body, *, upload_limit: int,
                         interaction: InteractionRecord | None = None, mtype: int = 0, prefix: tuple[str, ...] = (),
                         forced_flags: int = 0) -> StoredMessage:
    skeleton = fake.message_payload(fake.ids.next(), channel_id, author, mtype=mtype, interaction=interaction)
    skeleton["flags"] = forced_flags
    payload = apply_body(fake, skeleton, body, upload_limit=upload_limit, prefix=prefix, keep_flags=forced_flags)
    msg = fake.store_message(payload)
    if not msg.ephemeral:
        await fake.gateway.dispatch("MESSAGE_CREATE", msg.payload)
    return msg


async def edit_message(fake: FakeDiscord, msg: StoredMessage, body: Body, *, upload_limit: int,
                       prefix: tuple[str, ...] = ()) -> StoredMessage:
    if msg.deleted:
        raise DiscordError(404, 10008, "Unknown Message")
    keep = msg.flags & P.FLAG_EPHEMERAL
    payload = apply_body(fake, msg.payload, body, upload_limit=upload_limit, prefix=prefix, keep_flags=keep)
    payload["flags"] = int(payload.get("flags", 0)) & ~P.FLAG_LOADING  # any edit ends "thinking…"
    payload["edited_timestamp"] = P.iso_now()
    msg.record(payload)
    if not msg.ephemeral:
        await fake.gateway.dispatch("MESSAGE_UPDATE", msg.payload)
    return msg


async def delete_message(fake: FakeDiscord, msg: StoredMessage) -> None:
    if msg.deleted:
        raise DiscordError(404, 10008, "Unknown Message")
    msg.deleted = True
    if not msg.ephemeral:
        await fake.gateway.dispatch("MESSAGE_DELETE", {"id": str(msg.id), "channel_id": str(msg.channel_id),
                                                       "guild_id": str(fake.guild.id)})
