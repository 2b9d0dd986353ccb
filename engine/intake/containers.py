"""Container checks for uploaded model files, in pure Python and without executing anything from the file.

Why before any child process: a ``.pt`` file is a pickle, and unpickling runs code.  Before the sandbox ever sees a
file, :func:`sniff` names its container and the checks here refuse what a ``torch.save`` or a safetensors writer
never produces: zip members other than the few PyTorch writes, compressed or corrupt members, pickles whose global
references (read from the opcodes, see :func:`pickle_globals`) go beyond a short allow-list, safetensors headers
that do not fit the file.  Step 2 of :mod:`engine.intake.ingest`; torch-free.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from pathlib import Path
from typing import IO, Literal

from engine.intake.base import IntakeRefused, MiB, quote_text

__all__ = [
    "ALLOWED_GLOBALS", "Container", "check_legacy_pickle", "check_safetensors_header", "check_torch_zip", "pickle_globals",
    "sniff",
]

# Globals a hypernetwork pickle needs (docs/hypernetwork-format.md §1.10); anything else is refused unread.
ALLOWED_GLOBALS = frozenset({
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.DoubleStorage",
})
_ZIP_MEMBER = re.compile(r"(?:data\.pkl|version|\.format_version|\.storage_alignment|byteorder|\.data/version"
                         r"|\.data/serialization_id|data/[0-9]{1,9})")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PY2_MODULES = {"__builtin__": "builtins"}  # protocol-2 pickles name builtins the Python 2 way

Container = Literal["pt", "pt-legacy", "safetensors"]


def sniff(head: bytes) -> Container:
    """Which container the first bytes announce; refuses anything else."""
    if head.startswith(b"PK\x03\x04"):
        return "pt"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pt-legacy"
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= 100 * MiB and head[8:9] == b"{":
            return "safetensors"
    raise IntakeRefused("the file is neither a PyTorch .pt file nor a .safetensors file")


def pickle_globals(stream: IO[bytes]) -> list[str]:
    """The ``module.name`` references one pickle makes, read from its opcodes without executing any.

    ``STACK_GLOBAL`` takes its names from the stack; only the plain form (two strings pushed right before,
    possibly via the memo) is understood, anything cleverer is refused as unverifiable.
    """
    found: list[str] = []
    memo: dict[int, object] = {}
    recent: list[object] = []  # values pushed by the last ops (strings, or None for anything else)
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append(f"{_PY2_MODULES.get(module, module)}.{attr}")
        elif name == "STACK_GLOBAL":
            if len(recent) < 2 or not all(isinstance(x, str) for x in recent[-2:]):
                raise IntakeRefused("the file's pickle builds a code reference indirectly; refused unread")
            found.append(f"{recent[-2]}.{recent[-1]}")
        elif name in ("EXT1", "EXT2", "EXT4"):
            raise IntakeRefused("the file's pickle uses the copyreg extension registry; refused unread")
        if name in _STRING_OPS:
            recent.append(arg if isinstance(arg, str) else None)
        elif name in _PUT_OPS:
            memo[len(memo) if name == "MEMOIZE" else _index(arg)] = recent[-1] if recent else None
        elif name in _GET_OPS:
            recent.append(memo.get(_index(arg)))
        else:
            recent.append(None)
        del recent[:-4]
    return found


def _index(arg: object) -> int:
    """A memo index opcode argument (always an int for the ops that carry one)."""
    if not isinstance(arg, int):
        raise IntakeRefused("the file is truncated or damaged (its pickle data cannot be parsed)")
    return arg


def _refuse_globals(refs: list[str]) -> None:
    for ref in refs:
        if ref not in ALLOWED_GLOBALS:
            raise IntakeRefused(f"the file would run code when loaded (it calls `{quote_text(ref)}`); refused unread")


def _scan_pickle(stream: IO[bytes]) -> None:
    try:
        refs = pickle_globals(stream)
    except IntakeRefused:
        raise
    except Exception:
        raise IntakeRefused("the file is truncated or damaged (its pickle data cannot be parsed)") from None
    _refuse_globals(refs)


def check_torch_zip(path: Path, size: int) -> None:
    """A PyTorch zip holds one folder with data.pkl, data/<n> records and a few tags; stored, not compressed."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise IntakeRefused("the file is truncated or damaged (it is not a complete zip archive)") from None
    with zf:
        infos = zf.infolist()
        if not infos or len(infos) > 100_000:
            raise IntakeRefused("the archive is empty or has an absurd number of members")
        prefix = infos[0].filename.split("/", 1)[0]
        names: set[str] = set()
        total = 0
        for info in infos:
            top, _, rest = info.filename.partition("/")
            if top != prefix or not _ZIP_MEMBER.fullmatch(rest) or info.filename in names:
                raise IntakeRefused(f"the archive holds `{quote_text(info.filename)}`, which a PyTorch save never writes")
            if info.compress_type != zipfile.ZIP_STORED:
                raise IntakeRefused(f"the archive member `{quote_text(info.filename)}` is compressed; "
                                    "PyTorch never does that")
            names.add(info.filename)
            total += info.file_size
        if f"{prefix}/data.pkl" not in names:
            raise IntakeRefused("the archive has no data.pkl, so it is not a PyTorch save")
        if total > size:
            raise IntakeRefused("the archive declares more data than the file holds (damaged or hostile)")
        bad = _first_bad_member(zf)
        if bad is not None:
            raise IntakeRefused(f"the file is damaged (archive member `{quote_text(bad)}` fails its checksum)")
        with zf.open(f"{prefix}/data.pkl") as pkl:
            _scan_pickle(io.BytesIO(pkl.read()))


def _first_bad_member(zf: zipfile.ZipFile) -> str | None:
    try:
        return zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return "?"


def check_legacy_pickle(path: Path) -> None:
    """Legacy ``torch.save`` files are five pickles (magic, version, sys info, object, storage keys) then raw data."""
    with path.open("rb") as f:
        for _ in range(5):
            if not f.peek(1):
                break
            _scan_pickle(f)


def check_safetensors_header(path: Path, size: int) -> None:
    """The 8-byte length and JSON header must fit the file; tensor offsets are checked again by safetensors."""
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > size - 8:
            raise IntakeRefused("the file is truncated or damaged (its safetensors header runs past the end)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, ValueError):
            raise IntakeRefused("the file is damaged (its safetensors header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise IntakeRefused("the file is damaged (its safetensors header is not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"
                   if isinstance(v, dict) and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2),
                  default=0)
    except (TypeError, ValueError):
        raise IntakeRefused("the file is damaged (its safetensors header has invalid offsets)") from None
    if end > size - 8 - header_len:
        raise IntakeRefused("the file is truncated (its safetensors tensors run past the end)")
