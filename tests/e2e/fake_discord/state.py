"""The fake's world: one guild with its roles, channels and members, plus messages, attachments,
registered commands and interactions.

Objects here are plain data with small query helpers; REST and gateway code mutate them. Every message
keeps the full history of its payloads so tests can check sequences such as "queued → step 2/4 → final".
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from . import payloads as P


@dataclass
class FakeUser:
    id: int
    name: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return P.user(self.id, self.name, bot=self.bot)


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int
    position: int
    managed: bool = False


@dataclass
class FakeChannel:
    id: int
    name: str
    position: int
    nsfw: bool = False
    # Overwrites as Discord sends them: {"id", "type" (0 role, 1 member), "allow", "deny"} with string bitsets.
    overwrites: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FakeMember:
    user: FakeUser
    role_ids: list[int]
    joined_at: str = field(default_factory=P.iso_now)

    @property
    def id(self) -> int:
        return self.user.id


@dataclass
class FakeAttachment:
    """Bytes the fake holds; served at ``url`` (``GET /attachments/{id}/{filename}``)."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None

    def payload(self) -> dict[str, Any]:
        return P.attachment(self.id, self.filename, len(self.data), self.url, self.content_type, self.description,
                            _image_dims(self.data))


def _image_dims(data: bytes) -> tuple[int, int] | None:
    """Width/height for PNGs (read from the IHDR chunk), as Discord reports them for images."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


@dataclass
class StoredMessage:
    """A message and every version of it (``history[0]`` is the first one posted)."""

    id: int
    channel_id: int
    history: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False

    @property
    def payload(self) -> dict[str, Any]:
        return self.history[-1]

    @property
    def content(self) -> str:
        return self.payload.get("content", "")

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self.payload.get("embeds", [])

    @property
    def components(self) -> list[dict[str, Any]]:
        return self.payload.get("components", [])

    @property
    def attachments(self) -> list[dict[str, Any]]:
        return self.payload.get("attachments", [])

    @property
    def flags(self) -> int:
        return self.payload.get("flags", 0)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & P.FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is still a deferred "thinking…" message nobody edited."""
        return bool(self.flags & P.FLAG_LOADING)

    @property
    def contents(self) -> list[str]:
        """The content of every version, oldest first."""
        return [h.get("content", "") for h in self.history]

    def all_components(self) -> list[dict[str, Any]]:
        """Every component at any depth (rows, sections and containers flattened)."""
        out: list[dict[str, Any]] = []
        stack = list(reversed(self.components))
        while stack:
            comp = stack.pop()
            out.append(comp)
            children = list(comp.get("components", []))
            for key in ("component", "accessory"):
                if isinstance(comp.get(key), dict):
                    children.append(comp[key])
            stack.extend(reversed(children))
        return out

    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in self.all_components() if c.get("type") == 2]

    def find_component(self, *, label: str | None = None, custom_id: str | None = None,
                       prefix: str | None = None) -> dict[str, Any]:
        """The one component matching label, exact custom_id or custom_id prefix; raises LookupError otherwise."""
        for comp in self.all_components():
            if comp.get("type") == 1:
                continue
            if label is not None and comp.get("label") != label:
                continue
            if custom_id is not None and comp.get("custom_id") != custom_id:
                continue
            if prefix is not None and not str(comp.get("custom_id", "")).startswith(prefix):
                continue
            return comp
        raise LookupError(f"no component label={label!r} custom_id={custom_id!r} prefix={prefix!r} in message {self.id}: "
                          f"{[(c.get('label'), c.get('custom_id')) for c in self.all_components()]}")

    def record(self, payload: dict[str, Any]) -> None:
        self.history.append(copy.deepcopy(payload))


@dataclass
class InteractionRecord:
    """Server-side view of one interaction: what the bot answered and which messages it owns."""

    id: int
    token: str
    type: int
    user: FakeMember
    channel_id: int
    data: dict[str, Any]
    payload: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    source_message: StoredMessage | None = None   # the message whose component was clicked
    response_type: int | None = None               # 4, 5, 6, 7, 8 or 9 once answered
    response_data: dict[str, Any] | None = None
    original: StoredMessage | None = None
    followups: list[StoredMessage] = field(default_factory=list)
    followup_edits: int = 0                       # followups that edited the deferred message instead (see rest.py)
    modal: dict[str, Any] | None = None
    choices: list[dict[str, Any]] | None = None
    expired: bool = False
    late_callbacks: int = 0                       # callbacks refused with 10062
    errors: list[dict[str, Any]] = field(default_factory=list)  # every error answer sent for this interaction

    @property
    def acknowledged(self) -> bool:
        return self.response_type is not None

    @property
    def deferred(self) -> bool:
        return self.response_type in (5, 6)

    @property
    def ephemeral(self) -> bool:
        return bool(self.response_data and int(self.response_data.get("flags") or 0) & P.FLAG_EPHEMERAL)

    def expire(self) -> None:
        """Make the 15-minute token invalid now (webhook calls then answer 401/50027)."""
        self.expired = True


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole]
    channels: dict[int, FakeChannel]
    members: dict[int, FakeMember]

    def base_permissions(self, m: FakeMember) -> int:
        if m.id == self.owner_id:
            return P.ALL_PERMISSIONS
        perms = self.roles[self.id].permissions
        for rid in m.role_ids:
            perms |= self.roles[rid].permissions
        return P.ALL_PERMISSIONS if perms & P.ADMINISTRATOR else perms

    def permissions_in(self, m: FakeMember, channel_id: int) -> int:
        """Discord's algorithm: base, then @everyone, role and member overwrites; admins get every bit."""
        perms = self.base_permissions(m)
        if perms == P.ALL_PERMISSIONS:
            return perms
        ows = {int(o["id"]): o for o in self.channels[channel_id].overwrites}
        if self.id in ows:
            perms = (perms & ~int(ows[self.id]["deny"])) | int(ows[self.id]["allow"])
        allow = deny = 0
        for rid in m.role_ids:
            if rid in ows:
                allow |= int(ows[rid]["allow"])
                deny |= int(ows[rid]["deny"])
        perms = (perms & ~deny) | allow
        if m.id in ows:
            perms = (perms & ~int(ows[m.id]["deny"])) | int(ows[m.id]["allow"])
        return perms

    def member_payload(self, m: FakeMember, channel_id: int | None = None) -> dict[str, Any]:
        perms = None if channel_id is None else self.permissions_in(m, channel_id)
        return P.member(m.user.payload(), m.role_ids, m.joined_at, permissions=perms)

    def channel_payload(self, c: FakeChannel) -> dict[str, Any]:
        return P.text_channel(c.id, self.id, c.name, c.position, nsfw=c.nsfw, overwrites=c.overwrites)

    def payload(self) -> dict[str, Any]:
        """The full GUILD_CREATE body."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [P.role(r.id, r.name, r.permissions, r.position, managed=r.managed) for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": P.iso_now(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [self.member_payload(m) for m in self.members.values()],
            "channels": [self.channel_payload(c) for c in self.channels.values()],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }
