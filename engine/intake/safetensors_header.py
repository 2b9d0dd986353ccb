"""A safetensors header read in the bot process with hard bounds, whatever the file declares.

Why not ``json.loads`` on the header: the header is the uploader's JSON.  Nested a few thousand levels deep it
raises ``RecursionError``, ``1e400`` becomes infinity and ``int()`` of it ``OverflowError``, and a header the
format allows to be 100 MiB becomes gigabytes of Python objects.  The safetensors format needs exactly three
levels (the header object, one object per tensor, the shape and offset lists) and string-to-string metadata, so
here the header is at most :data:`MAX_HEADER_BYTES`, its nesting is measured on a copy with the strings blanked
out (a few C-speed regex passes) before it is parsed, its values are counted, and every field is type- and
range-checked.  Anything wrong is a :class:`HeaderError` with one clause saying what, never another exception.
Torch-free; used by :mod:`engine.intake.identify` and the container checks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import IO

from engine.intake.base import MiB, human_size, quote_text

__all__ = ["MAX_HEADER_BYTES", "HeaderError", "SafetensorsHeader", "TensorEntry", "header_length", "key_sample",
           "read_header"]

MAX_HEADER_BYTES = 8 * MiB  # a checkpoint's header is a few hundred KiB; big LoRA training metadata a few MiB
MAX_VALUES = 200_000  # commas outside strings: about 8 per tensor (an SDXL checkpoint has ~20,000)
_MAX_DIM = 1 << 40
_MAX_OFFSET = 1 << 62
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_DTYPE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,15}")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_INNERMOST = re.compile(rb"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")
_KEY = re.compile(rb'"((?:[^"\\]|\\.){1,300})"\s*:\s*\{')


class HeaderError(Exception):
    """The header is broken; ``str(err)`` is a clause ("its safetensors header is not valid JSON")."""

    def __init__(self, problem: str, *, declared_bytes: int | None = None) -> None:
        super().__init__(problem)
        self.declared_bytes = declared_bytes


@dataclass(frozen=True, slots=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """The parsed header: ``tensors`` by name, ``metadata`` (string to string), the header's byte length."""

    header_len: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def declared_bytes(self) -> int:
        """Bytes of tensor data the header declares (the end of the last tensor)."""
        return max((t.end for t in self.tensors.values()), default=0)


def header_length(head: bytes) -> int | None:
    """The header length the first 8 bytes announce, when the 9th byte opens the JSON object; else None."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    length = int.from_bytes(head[:8], "little")
    return length if length >= 2 else None


def _read_exactly(f: IO[bytes], offset: int, n: int) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise HeaderError("its safetensors header runs past the end of the file")
    return data


def key_sample(f: IO[bytes], header_len: int, limit: int = 256 * 1024) -> list[str]:
    """Tensor names seen in the first ``limit`` bytes of a header too large to parse (for naming the file's kind)."""
    raw = _read_exactly(f, 8, min(header_len, limit))
    return [m.decode("utf-8", "replace") for m in _KEY.findall(raw)[:5000]]


def _check_shape(raw: bytes) -> None:
    """Nesting at most three deep and a bounded number of values, measured with the strings blanked out."""
    skeleton = _STRING.sub(b'""', raw)
    if skeleton.count(b",") > MAX_VALUES:
        raise HeaderError("its safetensors header holds far more entries than any model file")
    for _ in range(3):
        skeleton = _INNERMOST.sub(b"0", skeleton)
    if b"[" in skeleton or b"{" in skeleton:
        if skeleton.count(b"[") != skeleton.count(b"]") or skeleton.count(b"{") != skeleton.count(b"}"):
            raise HeaderError("its safetensors header is not valid JSON")
        raise HeaderError("its safetensors header is nested deeper than the format allows")


def _int(value: object, top: int) -> int:
    if type(value) is not int or not 0 <= value <= top:
        raise ValueError
    return value


def _entry(name: str, value: object) -> TensorEntry:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise HeaderError(f"tensor `{quote_text(name)}` in its safetensors header is malformed")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    try:
        if not isinstance(dtype, str) or not _DTYPE_NAME.fullmatch(dtype):
            raise ValueError
        if not isinstance(shape, list) or len(shape) > 16 or not isinstance(offsets, list) or len(offsets) != 2:
            raise ValueError
        dims = tuple(_int(d, _MAX_DIM) for d in shape)
        begin, end = (_int(o, _MAX_OFFSET) for o in offsets)
        if begin > end:
            raise ValueError
    except ValueError:
        raise HeaderError(f"tensor `{quote_text(name)}` in its safetensors header has invalid fields") from None
    item = _DTYPE_BYTES.get(dtype)
    if item is not None and end - begin != math.prod(dims) * item:
        raise HeaderError(f"tensor `{quote_text(name)}` in its safetensors header has the wrong byte size")
    return TensorEntry(dtype, dims, begin, end)


def read_header(f: IO[bytes], size: int) -> SafetensorsHeader:
    """Parse the header of the open safetensors file ``f`` (``size`` bytes); :class:`HeaderError` when broken."""
    head = _read_exactly(f, 0, 9) if size >= 9 else b""
    header_len = header_length(head)
    if header_len is None:
        raise HeaderError("it does not start with a safetensors header")
    if header_len > size - 8:
        raise HeaderError("its safetensors header runs past the end of the file")
    if header_len > MAX_HEADER_BYTES:
        raise HeaderError(f"its safetensors header claims {human_size(header_len)}, far more than any model file needs")
    raw = _read_exactly(f, 8, header_len)
    _check_shape(raw)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError and json's errors are ValueErrors
        raise HeaderError("its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise HeaderError("its safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError("the metadata in its safetensors header is not text")
    data_len = size - 8 - header_len
    tensors = {name: _entry(name, value) for name, value in header.items()}
    parsed = SafetensorsHeader(header_len, tensors, metadata)
    if parsed.declared_bytes > data_len:
        raise HeaderError(f"it declares {human_size(parsed.declared_bytes)} of weights but only {human_size(data_len)} "
                          "follow its header", declared_bytes=parsed.declared_bytes)
    _check_layout(tensors, data_len)
    return parsed


def _check_layout(tensors: dict[str, TensorEntry], data_len: int) -> None:
    """The tensors fill the data exactly, one after the other, as the format requires (and its reader checks)."""
    expected = 0
    for entry in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if entry.begin != expected:
            raise HeaderError("the tensors in its safetensors header overlap or leave gaps")
        expected = entry.end
    if expected != data_len:
        raise HeaderError(f"it holds {human_size(data_len - expected)} after its last tensor")
