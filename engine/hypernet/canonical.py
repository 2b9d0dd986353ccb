"""Hypercord's canonical hypernetwork file: safetensors with A1111's tensors and metadata (format version 1).

Why: A1111 has no safetensors hypernetwork format, and ``.pt`` files are pickles.  Intake converts each accepted
``.pt`` once into this layout; the engine reads only this.  The layout is documented in
``docs/hypernetwork-canonical.md``.  Loading goes through the same validation as ``.pt`` files
(:func:`engine.hypernet.model.from_state_dict`), so a hand-crafted canonical file gets no more trust than a pickle.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from engine.hypernet.layout import FILE_KEYS, HypernetFormatError
from engine.hypernet.model import MAX_WEIGHT_BYTES, Hypernetwork, from_state_dict

FORMAT = "hypercord-hypernetwork"
FORMAT_VERSION = "1"
_TENSOR_NAME = re.compile(r"([1-9][0-9]{0,5})\.([kv])\.(linear\.[0-9]{1,4}\.(?:weight|bias))")
_A1111_PREFIX = "a1111."
_MAX_META_VALUE = 200_000  # characters of one JSON-encoded metadata value
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def save_canonical(hn: Hypernetwork, path: str | os.PathLike[str]) -> None:
    """Write ``hn`` in the canonical layout (atomically: temp file + rename).

    Tensors are ``hn.source`` (exactly as the original file stored them, dtype included), named
    ``"<size>.<k|v>.<A1111 state-dict key>"``; the resolved A1111 options go in the header as JSON strings.
    """
    seen: set[int] = set()
    tensors = {}
    for name, t in hn.source.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # safetensors refuses tensors that share memory
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": hn.name, "sizes": json.dumps(hn.sizes)}
    for key, file_key in FILE_KEYS.items():
        metadata[_A1111_PREFIX + file_key] = json.dumps(hn.metadata[key])
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _json(meta: dict[str, str], key: str) -> Any:
    text = meta[key]
    if len(text) > _MAX_META_VALUE:
        raise HypernetFormatError(f"canonical metadata {key!r} is too long")
    try:
        return json.loads(text)
    except ValueError:
        raise HypernetFormatError(f"canonical metadata {key!r} is not valid JSON") from None


def load_canonical(path: str | os.PathLike[str], name: str | None = None, *, max_bytes: int | None = None) -> Hypernetwork:
    """Read a canonical file and validate it exactly like a ``.pt`` file.

    ``name`` overrides the prompt name stored in the file (canonical files are named by hash, not by stem).
    Raises :class:`HypernetFormatError` for anything that is not a valid version-1 canonical hypernetwork.
    """
    limit = MAX_WEIGHT_BYTES if max_bytes is None else max_bytes
    path = os.fspath(path)
    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises several types for corrupt headers
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise HypernetFormatError(f"not a safetensors file: {reason}") from None
    with handle as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise HypernetFormatError(f"not a canonical hypernetwork file (format {meta.get('format')!r:.60})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise HypernetFormatError(f"canonical format version {meta.get('format_version')!r:.20} is not supported "
                                      f"(this engine reads {FORMAT_VERSION})")
        stored_name = meta.get("name")
        if name is None:
            name = stored_name if stored_name else os.path.splitext(os.path.basename(path))[0]
        obj: dict[Any, Any] = {}
        known = set(FILE_KEYS.values())
        for key in meta:
            if key.startswith(_A1111_PREFIX):
                file_key = key[len(_A1111_PREFIX):]
                if file_key not in known:
                    raise HypernetFormatError(f"unknown canonical metadata key {key!r:.80}")
                obj[file_key] = _json(meta, key)
        if "sizes" not in meta:
            raise HypernetFormatError("canonical file lacks the 'sizes' entry")
        sizes = _json(meta, "sizes")
        if not isinstance(sizes, list) or not all(type(s) is int for s in sizes):
            raise HypernetFormatError("canonical metadata 'sizes' must be a list of integers")
        total = 0
        parsed = []
        for tname in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            match = _TENSOR_NAME.fullmatch(tname)
            if match is None:
                raise HypernetFormatError(f"unexpected tensor name {tname!r:.80} in canonical file")
            sl = f.get_slice(tname)
            dtype = sl.get_dtype()
            if dtype not in _DTYPE_BYTES:
                raise HypernetFormatError(f"tensor {tname!r} has unsupported dtype {dtype}")
            numel = 1
            for n in sl.get_shape():
                numel *= n
            total += numel * _DTYPE_BYTES[dtype]
            if total > limit:
                raise HypernetFormatError(f"hypernetwork too large: over {limit / 2**20:.0f} MiB of weights")
            parsed.append((tname, int(match[1]), match[2], match[3]))
        if sorted(sizes) != sorted({dim for _, dim, _, _ in parsed}):
            raise HypernetFormatError(f"canonical 'sizes' {sizes!s:.80} do not match the tensors in the file")
        for dim in sizes:
            obj[dim] = (OrderedDict(), OrderedDict())
        for tname, dim, kv, key in parsed:
            obj[dim][0 if kv == "k" else 1][key] = f.get_tensor(tname)
    return from_state_dict(obj, name, max_bytes=limit)
