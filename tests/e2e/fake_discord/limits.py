"""Validation of message, modal and autocomplete payloads against Discord's documented limits.

Errors come back in Discord's shape so discord.py raises ``HTTPException`` with the same ``code`` and
``text`` a real server would give; see docs/testing-e2e.md for the table of limits.
"""

from __future__ import annotations

from typing import Any

from .payloads import FLAG_COMPONENTS_V2

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # 10 MiB, Discord's default per-file limit

CONTENT_MAX = 2000
EMBEDS_MAX = 10
EMBED_TOTAL_MAX = 6000
EMBED_FIELDS_MAX = 25
EMBED_LIMITS = {"title": 256, "description": 4096}
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FOOTER_TEXT_MAX = 2048
AUTHOR_NAME_MAX = 256
ACTION_ROWS_MAX = 5
BUTTONS_PER_ROW_MAX = 5
CUSTOM_ID_MAX = 100
BUTTON_LABEL_MAX = 80
SELECT_OPTIONS_MAX = 25
V2_COMPONENTS_MAX = 40
MODAL_TITLE_MAX = 45
MODAL_COMPONENTS_MAX = 5
TEXT_INPUT_MAX_LENGTH = 4000
CHOICES_MAX = 25


class DiscordError(Exception):
    """An error answer: HTTP status plus Discord's JSON body ``{code, message, errors?}``."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors:
            out["errors"] = self.errors
        return out


class _Collector:
    """Gathers field errors into Discord's nested ``errors`` tree ({"embeds": {"0": {"title": {"_errors": [...]}}}})."""

    def __init__(self, prefix: tuple[str, ...] = ()) -> None:
        self.prefix = prefix
        self.tree: dict[str, Any] = {}

    def add(self, path: tuple[Any, ...], code: str, message: str) -> None:
        node = self.tree
        for part in (*self.prefix, *map(str, path)):
            node = node.setdefault(part, {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def too_long(self, path: tuple[Any, ...], value: Any, limit: int) -> None:
        if isinstance(value, str) and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def raise_if_any(self) -> None:
        if self.tree:
            raise DiscordError(400, 50035, "Invalid Form Body", self.tree)


def _embed_chars(embed: dict[str, Any]) -> int:
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    total += len((embed.get("footer") or {}).get("text") or "") + len((embed.get("author") or {}).get("name") or "")
    for f in embed.get("fields") or []:
        total += len(f.get("name") or "") + len(f.get("value") or "")
    return total


def _check_embeds(embeds: list[dict[str, Any]], c: _Collector) -> None:
    if len(embeds) > EMBEDS_MAX:
        c.add(("embeds",), "BASE_TYPE_MAX_LENGTH", f"Must be {EMBEDS_MAX} or fewer in length.")
    total = 0
    for i, e in enumerate(embeds):
        for key, limit in EMBED_LIMITS.items():
            c.too_long(("embeds", i, key), e.get(key), limit)
        fields = e.get("fields") or []
        if len(fields) > EMBED_FIELDS_MAX:
            c.add(("embeds", i, "fields"), "BASE_TYPE_MAX_LENGTH", f"Must be {EMBED_FIELDS_MAX} or fewer in length.")
        for j, f in enumerate(fields):
            c.too_long(("embeds", i, "fields", j, "name"), f.get("name"), FIELD_NAME_MAX)
            c.too_long(("embeds", i, "fields", j, "value"), f.get("value"), FIELD_VALUE_MAX)
        c.too_long(("embeds", i, "footer", "text"), (e.get("footer") or {}).get("text"), FOOTER_TEXT_MAX)
        c.too_long(("embeds", i, "author", "name"), (e.get("author") or {}).get("name"), AUTHOR_NAME_MAX)
        total += _embed_chars(e)
    if total > EMBED_TOTAL_MAX:
        c.add(("embeds",), "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {EMBED_TOTAL_MAX}")


def _check_custom_id(comp: dict[str, Any], path: tuple[Any, ...], seen: set[str], c: _Collector) -> None:
    cid = comp.get("custom_id")
    if cid is None:
        return
    if not 1 <= len(cid) <= CUSTOM_ID_MAX:
        c.add((*path, "custom_id"), "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {CUSTOM_ID_MAX} in length.")
    if cid in seen:
        c.add((*path, "custom_id"), "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated")
    seen.add(cid)


def _check_leaf(comp: dict[str, Any], path: tuple[Any, ...], seen: set[str], c: _Collector) -> None:
    _check_custom_id(comp, path, seen, c)
    if comp.get("type") == 2:
        c.too_long((*path, "label"), comp.get("label"), BUTTON_LABEL_MAX)
        if comp.get("style") != 5 and comp.get("style") != 6 and not comp.get("custom_id"):
            c.add((*path, "custom_id"), "BASE_TYPE_REQUIRED", "This field is required")
    if comp.get("type") == 3 and len(comp.get("options") or []) > SELECT_OPTIONS_MAX:
        c.add((*path, "options"), "BASE_TYPE_MAX_LENGTH", f"Must be {SELECT_OPTIONS_MAX} or fewer in length.")


def _walk_v2(comps: list[dict[str, Any]], path: tuple[Any, ...], seen: set[str], c: _Collector) -> int:
    count = 0
    for i, comp in enumerate(comps):
        count += 1
        _check_leaf(comp, (*path, i), seen, c)
        count += _walk_v2(comp.get("components") or [], (*path, i, "components"), seen, c)
        for key in ("accessory", "component"):
            if isinstance(comp.get(key), dict):
                count += _walk_v2([comp[key]], (*path, i, key), seen, c)
    return count


def _check_components(comps: list[dict[str, Any]], flags: int, c: _Collector) -> None:
    seen: set[str] = set()
    if flags & FLAG_COMPONENTS_V2:
        if _walk_v2(comps, ("components",), seen, c) > V2_COMPONENTS_MAX:
            c.add(("components",), "BASE_TYPE_MAX_LENGTH", f"Must be {V2_COMPONENTS_MAX} or fewer in length.")
        return
    if len(comps) > ACTION_ROWS_MAX:
        c.add(("components",), "BASE_TYPE_MAX_LENGTH", f"Must be {ACTION_ROWS_MAX} or fewer in length.")
    for i, row in enumerate(comps):
        if row.get("type") != 1:
            c.add(("components", i, "type"), "UNION_TYPE_CHOICES", "Top-level components must be action rows")
            continue
        children = row.get("components") or []
        selects = [x for x in children if x.get("type") != 2]
        if len(children) > BUTTONS_PER_ROW_MAX or (selects and len(children) > 1) or not children:
            c.add(("components", i, "components"), "BASE_TYPE_BAD_LENGTH",
                  f"Must be between 1 and {BUTTONS_PER_ROW_MAX} buttons, or one select, per row.")
        for j, child in enumerate(children):
            _check_leaf(child, ("components", i, "components", j), seen, c)


def validate_message(payload: dict[str, Any], *, prefix: tuple[str, ...] = ()) -> None:
    """Check a message create/edit body; raises DiscordError(400, 50035) listing every violation."""
    c = _Collector(prefix)
    flags = int(payload.get("flags") or 0)
    content = payload.get("content")
    if flags & FLAG_COMPONENTS_V2 and (content or payload.get("embeds")):
        c.add(("content",), "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
              "The 'content' and 'embeds' fields cannot be used when using the IS_COMPONENTS_V2 flag")
    c.too_long(("content",), content, CONTENT_MAX)
    _check_embeds(payload.get("embeds") or [], c)
    _check_components(payload.get("components") or [], flags, c)
    c.raise_if_any()


def validate_modal(data: dict[str, Any]) -> None:
    c = _Collector(("data",))
    c.too_long(("title",), data.get("title"), MODAL_TITLE_MAX)
    comps = data.get("components") or []
    if not 1 <= len(comps) <= MODAL_COMPONENTS_MAX:
        c.add(("components",), "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MODAL_COMPONENTS_MAX} in length.")
    seen: set[str] = set()
    if not data.get("custom_id"):
        c.add(("custom_id",), "BASE_TYPE_REQUIRED", "This field is required")
    else:
        _check_custom_id(data, (), seen, c)
    _walk_v2(comps, ("components",), seen, c)
    for comp in _flatten(comps):
        if comp.get("type") == 4 and int(comp.get("max_length") or 0) > TEXT_INPUT_MAX_LENGTH:
            c.add(("components",), "BASE_TYPE_MAX", f"max_length must be {TEXT_INPUT_MAX_LENGTH} or less")
    c.raise_if_any()


def validate_choices(data: dict[str, Any]) -> None:
    c = _Collector(("data",))
    if len(data.get("choices") or []) > CHOICES_MAX:
        c.add(("choices",), "BASE_TYPE_MAX_LENGTH", f"Must be {CHOICES_MAX} or fewer in length.")
    c.raise_if_any()


def _flatten(comps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for comp in comps:
        out.append(comp)
        out.extend(_flatten(comp.get("components") or []))
        if isinstance(comp.get("component"), dict):
            out.extend(_flatten([comp["component"]]))
    return out


def check_upload_sizes(files: list[tuple[str, bytes]], limit: int) -> None:
    """Per-file limit, as Discord applies it; 413 with code 40005 like the real API."""
    for name, data in files:
        if len(data) > limit:
            raise DiscordError(413, 40005, f"Request entity too large ({name}: {len(data)} > {limit} bytes)")
