"""Container checks for PyTorch files, in pure Python and bounded, without executing anything from the file.

Why before any child process: a ``.pt`` file is a pickle, and unpickling runs code.  Before the sandbox ever sees a
file, the checks here refuse what a ``torch.save`` never produces: zip members other than the few PyTorch writes,
compressed, encrypted or corrupt members, pickles whose global references (read from the opcodes,
:mod:`engine.intake.pickles`) go beyond a short allow-list.  Each check is bounded whatever the file declares: the
zip's central directory is measured from its end record before :mod:`zipfile` reads it, ``data.pkl`` has a size
cap, and any exception from :mod:`zipfile` on a crafted archive is a refusal, not a crash.  Safetensors headers
are checked by :mod:`engine.intake.safetensors_header`.  Torch-free.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from typing import IO

from engine.intake.base import IntakeRefused, MiB, damaged, human_size, quote_text
from engine.intake.kinds import FileIdentity, FileKind
from engine.intake.pickles import pickle_globals

__all__ = ["ALLOWED_GLOBALS", "MAX_DIRECTORY_BYTES", "MAX_PICKLE_BYTES", "check_globals", "check_legacy_pickle",
           "check_torch_zip", "open_zip"]

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
# Data-only references other PyTorch or NumPy files hold: unusual in a hypernetwork, but no sign of an attack.
_DATA_ONLY = re.compile(r"torch\.[A-Za-z0-9]*Storage|torch\.(?:Size|device|dtype|float\d*|half|bfloat16|int\d*|bool)"
                        r"|torch\._utils\._rebuild_\w+|torch\._tensor\._rebuild_from_type_v2|torch\.serialization\._get_layout"
                        r"|torch\.nn\.parameter\.Parameter|collections\.(?:defaultdict|Counter|deque)|_codecs\.encode"
                        r"|numpy\.(?:_core|core)\.multiarray\.(?:_reconstruct|scalar)|numpy\.(?:ndarray|dtype)"
                        r"|builtins\.(?:set|frozenset|slice|complex|bytearray)")
_ZIP_MEMBER = re.compile(r"(?:data\.pkl|version|\.format_version|\.storage_alignment|byteorder|\.data/version"
                         r"|\.data/serialization_id|data/[0-9]{1,9})")
MAX_DIRECTORY_BYTES = 2 * MiB  # a full SDXL checkpoint's zip directory is ~350 KiB
MAX_PICKLE_BYTES = 16 * MiB  # a checkpoint's data.pkl is a few hundred KiB, a hypernetwork's a few KiB
_END = b"PK\x05\x06"
_END64 = b"PK\x06\x06"
_LOCATOR64 = b"PK\x06\x07"


def _broken_zip(size: int, problem: str = "it is not a complete zip archive") -> IntakeRefused:
    return IntakeRefused(damaged(problem), FileIdentity(FileKind.DAMAGED, size, "pt", problem=problem))


def check_globals(refs: list[str]) -> None:
    """Refuse references beyond the allow-list: as code when they could run any, as unusual data otherwise."""
    for ref in refs:
        if ref in ALLOWED_GLOBALS:
            continue
        if ref.startswith("pytorch_lightning.") or ref.startswith("lightning."):
            raise IntakeRefused(f"the file holds PyTorch Lightning training state (`{quote_text(ref)}`), as a full "
                                "model checkpoint does, not a hypernetwork; refused unread")
        if _DATA_ONLY.fullmatch(ref):
            raise IntakeRefused(f"the file stores `{quote_text(ref)}` objects, which a hypernetwork never holds; refused "
                                "unread (if it is one, save it again with A1111)")
        raise IntakeRefused(f"the file would run code when loaded (it calls `{quote_text(ref)}`); refused unread, do "
                            "not load it anywhere else either")


def _scan_pickle(stream: IO[bytes]) -> None:
    check_globals(pickle_globals(stream))


def _directory_bytes(f: IO[bytes], size: int) -> int:
    """The largest central-directory size any end record near the end claims (regular and zip64): what
    :mod:`zipfile` will read; refuses when there is no end record."""
    tail_len = min(size, (1 << 16) + 22 + 76)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    starts = {tail.rfind(_END)} | ({tail_len - 22} if tail[-22:-18] == _END else set())
    claims = []
    for start in starts - {-1}:
        record = tail[start:start + 22]
        if len(record) < 22:
            continue
        claims.append(struct.unpack_from("<I", record, 12)[0])
        locator = start - 20
        if locator >= 56 and tail[locator:locator + 4] == _LOCATOR64 and tail[locator - 56:locator - 52] == _END64:
            claims.append(struct.unpack_from("<Q", tail, locator - 56 + 40)[0])
    if not claims:
        raise _broken_zip(size)
    return max(claims)


def open_zip(f: IO[bytes], size: int) -> zipfile.ZipFile:
    """The open file as a :class:`zipfile.ZipFile`, once its directory is known to be of a bounded size."""
    if _directory_bytes(f, size) > MAX_DIRECTORY_BYTES:
        raise _broken_zip(size, "its zip directory is larger than any model file's")
    f.seek(0)
    try:
        return zipfile.ZipFile(f)
    except Exception:  # BadZipFile, OSError, ValueError, EOFError, struct.error... on a crafted archive
        raise _broken_zip(size) from None


def _check_members(infos: list[zipfile.ZipInfo], size: int) -> str:
    """The archive's folder name, once every member is one a ``torch.save`` writes, stored and unencrypted."""
    prefix = infos[0].filename.split("/", 1)[0]
    names: set[str] = set()
    total = 0
    for info in infos:
        top, _, rest = info.filename.partition("/")
        if top != prefix or not _ZIP_MEMBER.fullmatch(rest) or info.filename in names:
            raise IntakeRefused(f"the archive holds `{quote_text(info.filename)}`, which a PyTorch save never writes; "
                                "refused unread (the file was altered or is not a model)")
        if info.flag_bits & 0x1:
            raise IntakeRefused(f"the archive member `{quote_text(info.filename)}` is encrypted, which PyTorch never "
                                "does; refused unread (use the file as its author published it)")
        if info.compress_type != zipfile.ZIP_STORED:
            raise IntakeRefused(f"the archive member `{quote_text(info.filename)}` is compressed, which PyTorch never "
                                "does; refused unread (use the file as its author published it)")
        names.add(info.filename)
        total += info.file_size
    if f"{prefix}/data.pkl" not in names:
        raise IntakeRefused("the zip archive has no data.pkl, so it is not a PyTorch save; add the model file itself")
    if total > size:
        raise IntakeRefused(damaged(f"its archive declares {human_size(total)} of data but the file is only "
                                    f"{human_size(size)} long"))
    return prefix


def check_torch_zip(f: IO[bytes], size: int) -> None:
    """A PyTorch zip holds one folder with data.pkl, data/<n> records and a few tags; stored, not compressed."""
    with open_zip(f, size) as zf:
        try:
            infos = zf.infolist()
            if not infos:
                raise IntakeRefused("the zip archive is empty; add the model file itself")
            prefix = _check_members(infos, size)
            bad = zf.testzip()
            if bad is not None:
                raise IntakeRefused(damaged(f"archive member `{quote_text(bad)}` fails its checksum"))
            pkl = zf.getinfo(f"{prefix}/data.pkl")
            if pkl.file_size > MAX_PICKLE_BYTES:
                raise IntakeRefused(f"the file's pickle is {human_size(pkl.file_size)}, far larger than any model "
                                    "file's; refused unread")
            with zf.open(pkl) as member:
                data = member.read(MAX_PICKLE_BYTES + 1)
        except IntakeRefused:
            raise
        except Exception:  # zipfile's errors on crafted members (bad local headers, truncation, ...)
            raise _broken_zip(size) from None
    _scan_pickle(io.BytesIO(data))


def check_legacy_pickle(f: IO[bytes], size: int) -> None:
    """Legacy ``torch.save`` files are five pickles (magic, version, sys info, object, storage keys) then raw data."""
    f.seek(0)
    for _ in range(5):
        if f.tell() >= size:
            break
        _scan_pickle(f)
