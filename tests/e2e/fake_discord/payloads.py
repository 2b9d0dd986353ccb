"""Builders for the JSON shapes discord.py 2.7.1 parses.

Kept in one place so that when discord.py starts requiring a new field, there is one spot to add it.
Every builder returns plain dicts ready for ``json.dumps``; ids are strings, as on the wire.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from typing import Any

DISCORD_EPOCH_MS = 1420070400000

# Permission bits used by the default guild (discord-api-docs, "Permissions").
CREATE_INSTANT_INVITE = 1 << 0
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
# Every bit Discord defines today and some headroom: what an administrator (or the owner) gets.
ALL_PERMISSIONS = (1 << 53) - 1

EVERYONE_DEFAULT = (
    CREATE_INSTANT_INVITE | ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES
    | READ_MESSAGE_HISTORY | USE_EXTERNAL_EMOJIS | CHANGE_NICKNAME | USE_APPLICATION_COMMANDS | SEND_MESSAGES_IN_THREADS
)

# Message flags.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_COMPONENTS_V2 = 1 << 15


class Snowflakes:
    """Monotonic snowflake source: real timestamps (so ``created_at`` is sane) plus a counter."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def next(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (next(self._counter) & 0x3FFFFF)


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def user(uid: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(uid),
        "username": name,
        "discriminator": "0",
        "global_name": None if bot else name.title(),
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


def role(rid: int, name: str, permissions: int, position: int, *, managed: bool = False) -> dict[str, Any]:
    return {
        "id": str(rid),
        "name": name,
        "permissions": str(permissions),
        "position": position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "managed": managed,
        "mentionable": False,
        "flags": 0,
    }


def text_channel(cid: int, guild_id: int, name: str, position: int, *, nsfw: bool, overwrites: list[dict]) -> dict[str, Any]:
    return {
        "id": str(cid),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": position,
        "permission_overwrites": overwrites,
        "nsfw": nsfw,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "parent_id": None,
        "flags": 0,
    }


def member(user_payload: dict[str, Any], role_ids: list[int], joined_at: str, *,
           permissions: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "user": user_payload,
        "roles": [str(r) for r in role_ids],
        "nick": None,
        "avatar": None,
        "joined_at": joined_at,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
    }
    if permissions is not None:
        out["permissions"] = str(permissions)
    return out


def attachment(aid: int, filename: str, size: int, url: str, content_type: str | None,
               description: str | None = None, dims: tuple[int, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(aid),
        "filename": filename,
        "size": size,
        "url": url,
        "proxy_url": url,
        "content_type": content_type,
    }
    if description is not None:
        out["description"] = description
    if dims is not None:
        out["width"], out["height"] = dims
    return out


def application(app_id: int, owner: dict[str, Any], name: str) -> dict[str, Any]:
    """GET /oauth2/applications/@me: the keys AppInfo reads without .get()."""
    return {
        "id": str(app_id),
        "name": name,
        "description": "fake application",
        "icon": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": owner,
        "team": None,
        "verify_key": "0" * 64,
        "flags": 0,
        "summary": "",
        "rpc_origins": [],
    }


def rate_limit_headers(bucket: str, *, remaining: int = 49, reset_after: float = 1.0) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        "X-RateLimit-Bucket": bucket,
    }
