"""The global references a pickle makes, read from its opcodes without executing any, in bounded memory and time.

Why our own walk instead of :func:`pickletools.genops`: genops reads every string argument whole (one crafted
length prefix = one allocation as large as the file) and the old scan kept a dict entry per memo opcode (a 6 MB
pickle of ``MEMOIZE`` ops cost the bot ~660 MB).  Here, with the stdlib's opcode table
(:data:`pickletools.opcodes`) for the argument formats:

* string arguments longer than :data:`KEEP_STRING` characters are skipped with a seek, never read;
* the memo keeps only short strings (the only memo values that matter: ``STACK_GLOBAL``'s module and name), at
  most :data:`MAX_MEMO_STRINGS` of them;
* at most :data:`MAX_OPS` opcodes are read (a hypernetwork's pickle has a few hundred, a checkpoint of 2,500
  tensors about 75,000; about 1 µs each), text lines (protocol 0) are at most :data:`MAX_LINE` bytes.

``STACK_GLOBAL`` takes its names from the stack: only the plain form (two strings pushed right before, possibly via
the memo) is understood; anything cleverer is refused as uncheckable.  Torch-free.
"""

from __future__ import annotations

import pickletools
from typing import IO

from engine.intake.base import IntakeRefused, damaged

__all__ = ["KEEP_STRING", "MAX_LINE", "MAX_MEMO_STRINGS", "MAX_OPS", "pickle_globals"]

KEEP_STRING = 256
MAX_MEMO_STRINGS = 50_000
MAX_OPS = 500_000
MAX_LINE = 4096

_OPS = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: (1, False), pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
                  pickletools.TAKEN_FROM_ARGUMENT4U: (4, False), pickletools.TAKEN_FROM_ARGUMENT8U: (8, False)}
_UNICODE_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
_STRING_OPS = _UNICODE_OPS | {"UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PY2_MODULES = {"__builtin__": "builtins"}  # protocol-2 pickles name builtins the Python 2 way
_DAMAGED = damaged("its pickle data cannot be parsed")


def _damaged() -> IntakeRefused:
    return IntakeRefused(_DAMAGED)


def _exactly(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise _damaged()
    return data


def _line(stream: IO[bytes]) -> bytes:
    line = stream.readline(MAX_LINE)
    if not line.endswith(b"\n"):
        raise IntakeRefused("the file's pickle data holds a text line far longer than PyTorch ever writes; refused "
                            "unread (the file is damaged or was not saved by PyTorch)")
    return line[:-1]


def _skip(stream: IO[bytes], n: int, end: int) -> None:
    """Move past ``n`` bytes without reading them; the bytes must exist (``end``: the stream's length)."""
    target = stream.tell() + n
    if target > end:
        raise _damaged()
    stream.seek(target)


def _argument(stream: IO[bytes], op: pickletools.OpcodeInfo, end: int) -> object:
    """The op's argument: an int for fixed-size and decimal ones, a short string for names and string ops, else
    None (skipped or not needed)."""
    arg = op.arg
    if arg is None:
        return None
    if arg.n >= 0:
        raw = _exactly(stream, arg.n)
        return int.from_bytes(raw, "little", signed=arg.name == "int4") if arg.name != "float8" else None
    if arg.n == pickletools.UP_TO_NEWLINE:
        if arg.name == "stringnl_noescape_pair":  # GLOBAL and INST: module and name on two lines
            return (_line(stream).decode("utf-8", "replace"), _line(stream).decode("utf-8", "replace"))
        text = _line(stream)
        if op.name in _GET_OPS | _PUT_OPS:
            try:
                return int(text)
            except ValueError:
                raise _damaged() from None
        return None
    width, signed = _LENGTH_PREFIX[arg.n]
    length = int.from_bytes(_exactly(stream, width), "little", signed=signed)
    if length < 0:
        raise _damaged()
    if op.name in _UNICODE_OPS and length <= KEEP_STRING * 4:
        try:
            return _exactly(stream, length).decode("utf-8")
        except UnicodeDecodeError:
            raise _damaged() from None
    _skip(stream, length, end)
    return None


def pickle_globals(stream: IO[bytes]) -> list[str]:
    """The ``module.name`` references of the one pickle starting at ``stream``'s position (read up to its STOP)."""
    found: list[str] = []
    memo: dict[int, str] = {}
    memo_count = 0  # MEMOIZE numbers its entries by how many were stored before
    styles: set[bool] = set()  # True: MEMOIZE seen, False: PUT seen
    recent: list[str | None] = []  # values pushed by the last ops (short strings, or None for anything else)
    start = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(start)
    for _ in range(MAX_OPS):
        code = stream.read(1)
        op = _OPS.get(code)
        if op is None:
            raise _damaged()
        arg = _argument(stream, op, end)
        name = op.name
        if name == "STOP":
            return found
        if name in ("GLOBAL", "INST"):
            assert isinstance(arg, tuple)
            module, attr = arg
            found.append(f"{_PY2_MODULES.get(module, module)}.{attr}")
        elif name == "STACK_GLOBAL":
            module_name, attr_name = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            if module_name is None or attr_name is None:
                raise IntakeRefused("the file's pickle names a Python object indirectly, which PyTorch never does and "
                                    "which cannot be checked without running it; refused unread")
            found.append(f"{module_name}.{attr_name}")
        elif name in ("EXT1", "EXT2", "EXT4"):
            raise IntakeRefused("the file's pickle uses the copyreg extension registry, which PyTorch never does; "
                                "refused unread")
        if name in _STRING_OPS:
            recent.append(arg if isinstance(arg, str) and len(arg) <= KEEP_STRING else None)
        elif name in _PUT_OPS or name == "MEMOIZE":
            styles.add(name == "MEMOIZE")
            if len(styles) > 1:  # MEMOIZE numbers by the memo's size, which PUTs change: never mixed by pickle
                raise _damaged()
            index = memo_count if name == "MEMOIZE" else arg
            memo_count += 1
            if not isinstance(index, int):
                raise _damaged()
            value = recent[-1] if recent else None
            if value is not None and len(memo) < MAX_MEMO_STRINGS:
                memo[index] = value
            else:
                memo.pop(index, None)
        elif name in _GET_OPS:
            recent.append(memo.get(arg) if isinstance(arg, int) else None)
        elif name not in ("PROTO", "FRAME"):  # these two leave the stack alone
            recent.append(None)
        del recent[:-4]
    raise IntakeRefused(f"the file's pickle has more than {MAX_OPS:,} instructions, far more than any model file; "
                        "refused unread")
