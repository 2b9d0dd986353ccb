"""The wire codec for protocol messages between processes that may run different builds (the Redis transport).

Why not pickle: a bot and a GPU worker meeting through Redis are separate deployments, possibly of different
releases, and anything that can write to Redis could otherwise make a worker run code.  msgpack carries exactly
data (numbers, strings, bytes, lists, maps); this module turns the protocol's frozen dataclasses into maps and back.

Why generic: a value is encoded field by field from ``dataclasses.fields`` and decoded by the field's type hint,
so a field added to :mod:`engine.protocol` or :mod:`engine.render_settings` later needs no change here.  Only the
dataclasses that :mod:`engine.protocol` exports can be built (an allowlist, by class name); every value is checked
against its hint, unknown fields are refused, and the dataclass's own ``__post_init__`` checks still run.  Every
message carries ``PROTOCOL_VERSION``; another version is refused with :class:`CodecError` before anything is built.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, TypeVar

import msgpack

from engine import protocol
from engine.protocol import PROTOCOL_VERSION

__all__ = ["CodecError", "decode", "decode_as", "encode", "message_types"]

T = TypeVar("T")


class CodecError(ValueError):
    """Bytes that are not a message of this protocol version (or a value that cannot be one)."""


@functools.cache
def message_types() -> dict[str, type]:
    """The dataclasses that may travel: every one :mod:`engine.protocol` exports, but the pickle-only ``Envelope``."""
    found = {name: getattr(protocol, name) for name in protocol.__all__}
    return {name: cls for name, cls in found.items()
            if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls is not protocol.Envelope}


def encode(message: object) -> bytes:
    """One protocol message as bytes: ``{"v": version, "t": class name, "m": fields}``."""
    name = type(message).__name__
    if message_types().get(name) is not type(message):
        raise CodecError(f"{name} is not a protocol message")
    return msgpack.packb({"v": PROTOCOL_VERSION, "t": name, "m": _to_wire(message)}, use_bin_type=True)


def decode(data: bytes) -> object:
    """The message encoded in ``data``; raises :class:`CodecError` for another protocol version or a bad value."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"not a msgpack message: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"v", "t", "m"}:
        raise CodecError("not a protocol message (expected the keys v, t, m)")
    if raw["v"] != PROTOCOL_VERSION:
        raise CodecError(f"protocol version {raw['v']!r} received, this build speaks {PROTOCOL_VERSION}")
    cls = message_types().get(raw["t"]) if isinstance(raw["t"], str) else None
    if cls is None:
        raise CodecError(f"unknown message type {raw['t']!r}")
    return _from_wire(cls, raw["m"], raw["t"])


def decode_as(data: bytes | None, cls: type[T]) -> T | None:
    """The message in ``data`` if it is a ``cls``; None for nothing, another type or what cannot be decoded."""
    if data is None:
        return None
    try:
        value = decode(data)
    except CodecError:
        return None
    return value if isinstance(value, cls) else None


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    raise CodecError(f"cannot encode a {type(value).__name__}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_wire(hint: Any, value: Any, path: str) -> Any:
    """``value`` (decoded msgpack) made into ``hint``; ``path`` names the field in error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _from_wire(arg, value, path)
            except CodecError:
                continue
        raise CodecError(f"{path}: {_kind(value)} fits none of {hint}")
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise CodecError(f"{path}: expected a list, got {_kind(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise CodecError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_from_wire(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        items = [_from_wire(args[0] if args else Any, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise CodecError(f"{path}: expected a map, got {_kind(value)}")
        key_t, val_t = args or (Any, Any)
        return {_from_wire(key_t, k, path): _from_wire(val_t, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise CodecError(f"{path}: {value!r} is not a {hint.__name__}") from None
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str, bytes) and type(value) is hint:
        return value
    if hint is type(None) and value is None:
        return None
    raise CodecError(f"{path}: expected {getattr(hint, '__name__', hint)}, got {_kind(value)}")


def _build(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise CodecError(f"{path}: expected a map of fields, got {_kind(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise CodecError(f"{path}: unknown fields {unknown} (a newer build must raise the protocol version)")
    hints = _hints(cls)
    kwargs = {name: _from_wire(hints[name], v, f"{path}.{name}") for name, v in value.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{path}: {exc}") from None


def _kind(value: Any) -> str:
    return type(value).__name__
