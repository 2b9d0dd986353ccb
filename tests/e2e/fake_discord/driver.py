"""Test-side helpers mixed into FakeDiscord: inject interactions as a given user, wait (by polling)
for their effects, and read results back.

A scenario reads like::

    cmd = await fake.slash(user=fake.member_plain, name="imagine", options={"prompt": "a cat"})
    await fake.wait_for(lambda: cmd.original and cmd.original.attachments)
    click = await fake.click(user=fake.member_plain, message=cmd.original, label="Reroll")
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from . import payloads as P
from .state import FakeAttachment, FakeChannel, FakeMember, FakeRole, InteractionRecord, StoredMessage

if TYPE_CHECKING:
    from .server import FakeDiscord

_OPTION_CASTS: dict[int, Callable[[Any], Any]] = {3: str, 4: int, 5: bool, 10: float}


class Driver:
    """Methods tests call; ``self`` is the FakeDiscord."""

    async def wait_for(self: FakeDiscord, predicate: Callable[[], Any], timeout: float = 10.0,
                       interval: float = 0.02, what: str | None = None) -> Any:
        """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.

        Polling (not a condition variable) because some bot-side effects change nothing here.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if time.monotonic() >= deadline:
                label = what or getattr(predicate, "__name__", "predicate")
                raise AssertionError(f"timed out after {timeout}s waiting for {label}; unhandled={self.unhandled}")
            await asyncio.sleep(interval)

    async def wait_connected(self: FakeDiscord, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.gateway.connected, timeout, what="the bot to connect to the gateway")

    # ---- attachments -----------------------------------------------------------------------------

    def make_attachment(self: FakeDiscord, filename: str, data: bytes, content_type: str | None = None) -> FakeAttachment:
        """A file "uploaded by a user", to pass as an attachment option value."""
        return self.new_attachment(filename, data, content_type)

    def attachment_bytes(self: FakeDiscord, att: dict[str, Any] | FakeAttachment) -> bytes:
        aid = att.id if isinstance(att, FakeAttachment) else int(att["id"])
        return self.attachments[aid].data

    async def download(self: FakeDiscord, att: dict[str, Any] | FakeAttachment | str) -> bytes:
        """Fetch an attachment over HTTP from its ``url``, as the bot or a user would."""
        url = att if isinstance(att, str) else att.url if isinstance(att, FakeAttachment) else att["url"]
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            resp.raise_for_status()
            return await resp.read()

    # ---- gateway events --------------------------------------------------------------------------

    async def user_message(self: FakeDiscord, user: FakeMember, content: str,
                           channel: FakeChannel | None = None) -> StoredMessage:
        """A member posts a plain message (MESSAGE_CREATE on the gateway)."""
        channel = channel or self.channel_general
        payload = self.message_payload(self.ids.next(), channel.id, user.user)
        payload["content"] = content
        msg = self.store_message(payload)
        await self.gateway.dispatch("MESSAGE_CREATE", payload)
        return msg

    # ---- interactions ----------------------------------------------------------------------------

    def find_command(self: FakeDiscord, name: str) -> dict[str, Any]:
        """The registered command named ``name`` (guild commands shadow global ones)."""
        for cmd in [*self.guild_commands.get(self.guild.id, []), *self.global_commands]:
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd
        known = [c["name"] for c in [*self.guild_commands.get(self.guild.id, []), *self.global_commands]]
        raise LookupError(f"command /{name} is not registered (registered: {known})")

    async def slash(self: FakeDiscord, user: FakeMember, name: str, options: dict[str, Any] | None = None,
                    channel: FakeChannel | None = None, **extra: Any) -> InteractionRecord:
        """Run ``/name`` (``"group sub"`` for subcommands). Option values are typed from the registered schema;
        pass FakeAttachment / FakeMember / FakeChannel / FakeRole for those option types."""
        data = self._command_data(name, options or {}, focused=None)
        return await self._inject(2, user, channel, data, **extra)

    async def message_command(self: FakeDiscord, user: FakeMember, name: str, target: StoredMessage) -> InteractionRecord:
        """Run the message context-menu command ``name`` ("Apps" → name on a message) on ``target``."""
        registered = [*self.guild_commands.get(self.guild.id, []), *self.global_commands]
        cmd = next((c for c in registered if c["name"] == name and c.get("type") == 3), None)
        if cmd is None:
            raise LookupError(f"message command {name!r} is not registered")
        data: dict[str, Any] = {"id": cmd["id"], "name": name, "type": 3, "target_id": str(target.id),
                                "resolved": {"messages": {str(target.id): target.payload}}}
        if "guild_id" in cmd:
            data["guild_id"] = cmd["guild_id"]
        return await self._inject(2, user, self.guild.channels[target.channel_id], data)

    async def autocomplete(self: FakeDiscord, user: FakeMember, name: str, options: dict[str, Any], focused: str,
                           channel: FakeChannel | None = None) -> InteractionRecord:
        """Type into option ``focused``; the bot's choices land in ``record.choices``."""
        data = self._command_data(name, options, focused=focused)
        return await self._inject(4, user, channel, data)

    async def click(self: FakeDiscord, user: FakeMember, message: StoredMessage, *, label: str | None = None,
                    custom_id: str | None = None, prefix: str | None = None) -> InteractionRecord:
        """Press a button found by label, custom_id or custom_id prefix on the message's current version."""
        if message.deleted:
            raise LookupError(f"message {message.id} was deleted")
        comp = message.find_component(label=label, custom_id=custom_id, prefix=prefix)
        if comp.get("disabled"):
            raise LookupError(f"component {comp.get('custom_id')!r} is disabled")
        data = {"custom_id": comp["custom_id"], "component_type": comp["type"]}
        return await self._inject(3, user, self.guild.channels[message.channel_id], data, source=message)

    async def select(self: FakeDiscord, user: FakeMember, message: StoredMessage, values: list[str], *,
                     custom_id: str | None = None, prefix: str | None = None) -> InteractionRecord:
        comp = message.find_component(custom_id=custom_id, prefix=prefix)
        data = {"custom_id": comp["custom_id"], "component_type": comp["type"], "values": values}
        return await self._inject(3, user, self.guild.channels[message.channel_id], data, source=message)

    async def submit_modal(self: FakeDiscord, user: FakeMember, source: InteractionRecord,
                           values: dict[str, str]) -> InteractionRecord:
        """Submit the modal ``source`` answered with (type 9), filling text inputs by custom_id."""
        if source.modal is None:
            raise LookupError(f"interaction {source.id} did not answer with a modal (response {source.response_type})")
        missing = set(values)
        components = [_fill(c, values, missing) for c in source.modal.get("components", [])]
        if missing:
            raise LookupError(f"modal has no inputs {sorted(missing)}")
        data = {"custom_id": source.modal["custom_id"], "components": components}
        return await self._inject(5, user, self.guild.channels[source.channel_id], data, source=source.source_message)

    # ---- internals -------------------------------------------------------------------------------

    def _command_data(self: FakeDiscord, name: str, values: dict[str, Any], focused: str | None) -> dict[str, Any]:
        parts = name.split()
        cmd = self.find_command(parts[0])
        resolved: dict[str, dict[str, Any]] = {}
        schema: list[dict[str, Any]] = cmd.get("options") or []
        wrappers: list[dict[str, Any]] = []
        for sub in parts[1:]:
            opt = next((o for o in schema if o["name"] == sub and o["type"] in (1, 2)), None)
            if opt is None:
                raise LookupError(f"/{name}: no subcommand {sub!r}")
            wrappers.append({"type": opt["type"], "name": sub, "options": []})
            schema = opt.get("options") or []
        leaf = [self._option(o, values, focused, resolved) for o in schema if o["name"] in values]
        unknown = set(values) - {o["name"] for o in schema}
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in values]
        if unknown or (missing and focused is None):
            raise LookupError(f"/{name}: unknown options {sorted(unknown)}, missing required {missing}")
        options = leaf
        for wrapper in reversed(wrappers):
            wrapper["options"] = options
            options = [wrapper]
        data: dict[str, Any] = {"id": cmd["id"], "name": parts[0], "type": 1, "options": options}
        if "guild_id" in cmd:
            data["guild_id"] = cmd["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return data

    def _option(self: FakeDiscord, opt: dict[str, Any], values: dict[str, Any], focused: str | None,
                resolved: dict[str, dict[str, Any]]) -> dict[str, Any]:
        value, otype = values[opt["name"]], opt["type"]
        if opt["name"] == focused:
            return {"type": otype, "name": opt["name"], "value": str(value), "focused": True}
        if isinstance(value, FakeAttachment):
            resolved.setdefault("attachments", {})[str(value.id)] = value.payload()
            value = str(value.id)
        elif isinstance(value, FakeMember):
            resolved.setdefault("users", {})[str(value.id)] = value.user.payload()
            member = {k: v for k, v in self.guild.member_payload(value, self.channel_general.id).items() if k != "user"}
            resolved.setdefault("members", {})[str(value.id)] = member
            value = str(value.id)
        elif isinstance(value, FakeChannel):
            resolved.setdefault("channels", {})[str(value.id)] = {
                **self.guild.channel_payload(value), "permissions": str(P.ALL_PERMISSIONS)}
            value = str(value.id)
        elif isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(value.id)] = P.role(value.id, value.name, value.permissions, value.position)
            value = str(value.id)
        elif otype in _OPTION_CASTS:
            value = _OPTION_CASTS[otype](value)
            choices = [c["value"] for c in opt.get("choices") or []]
            if choices and value not in choices:
                raise LookupError(f"option {opt['name']}: {value!r} is not one of the choices {choices}")
        return {"type": otype, "name": opt["name"], "value": value}

    async def _inject(self: FakeDiscord, itype: int, user: FakeMember, channel: FakeChannel | None,
                      data: dict[str, Any], source: StoredMessage | None = None,
                      attachment_size_limit: int | None = None, locale: str = "en-US") -> InteractionRecord:
        if self.gateway.current is None:
            raise RuntimeError("no bot session on the fake gateway; cannot deliver an interaction")
        channel = channel or self.channel_general
        iid = self.ids.next()
        token = f"aW50ZXJhY3Rpb24{secrets.token_urlsafe(48)}"
        app_perms = self.guild.permissions_in(self.member_bot, channel.id)
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(self.application_id), "type": itype, "data": data,
            "guild_id": str(self.guild.id), "guild": {"id": str(self.guild.id), "locale": "en-US", "features": []},
            "channel_id": str(channel.id),
            "channel": {**self.guild.channel_payload(channel),
                        "permissions": str(self.guild.permissions_in(user, channel.id))},
            "member": self.guild.member_payload(user, channel.id),
            "token": token, "version": 1, "app_permissions": str(app_perms), "locale": locale, "guild_locale": "en-US",
            "entitlements": [], "authorizing_integration_owners": {"0": str(self.guild.id)}, "context": 0,
            "attachment_size_limit": attachment_size_limit or self.attachment_size_limit,
        }
        if source is not None:
            payload["message"] = source.payload
        rec = InteractionRecord(iid, token, itype, user, channel.id, data, payload, source_message=source)
        self.interactions[iid] = rec
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return rec


def _fill(comp: dict[str, Any], values: dict[str, str], missing: set[str]) -> dict[str, Any]:
    """Mirror a modal component as Discord submits it: rows/labels around inputs carrying ``value``."""
    if comp.get("type") == 1:
        return {"type": 1, "components": [_fill(c, values, missing) for c in comp.get("components", [])]}
    if comp.get("type") == 18:
        return {"type": 18, "id": comp.get("id", 0), "component": _fill(comp["component"], values, missing)}
    cid = comp.get("custom_id")
    out: dict[str, Any] = {"type": comp["type"], "custom_id": cid, "id": comp.get("id", 0)}
    if comp.get("type") == 4:
        value = values.get(cid, comp.get("value") or "")
        if comp.get("required", True) and not value:
            raise LookupError(f"text input {cid!r} is required")
        out["value"] = value
    else:
        out["values"] = values.get(cid, [])
    missing.discard(cid)
    return out
