"""The intake child's confinement: what it may touch once it starts reading a stranger's file.

Why in layers, each independent of the others: a pickle that escapes ``weights_only`` (a bug in PyTorch's
unpickler or in a C++ reader) runs as this process.  So, in the order :mod:`engine.intake.sandbox` applies them:

1. **limits** (:func:`set_limits`): memory, CPU time, file size, no core dumps, no new processes;
2. **another user** (:func:`drop_privileges`): started as root, the child becomes ``nobody`` (or the configured
   uid/gid) with no supplementary groups, so the bot's config, token file and database (readable by their owner
   only) are closed to it, and ``RLIMIT_NPROC`` 0 now applies;
3. **no network** (:func:`leave_network`): new user + network namespaces when the kernel allows unprivileged ones
   (Docker's default seccomp profile does not);
4. **Landlock** (:func:`restrict_files`, Linux 5.13+, allowed by Docker's default seccomp profile): reads only
   below the Python installation and the ``engine`` package, writes only in the child's own work folder, no
   ``execve``; TCP connect/bind refused (Linux 6.7+), no abstract unix sockets or signals outside (6.12+).  This is
   the layer that keeps the bot's files closed when the child runs as the bot's own user;
5. **Python-level hooks** (:func:`install_hooks`): an audit hook that refuses sockets, processes, ``ctypes``,
   environment changes, file writes and reads outside those folders; the socket module disarmed.

Layers 2-4 are kernel-enforced; 5 only stops Python code.  :func:`status` says which are active (``python -m
engine.intake.sandbox check``).  Torch-free: ``ctypes`` and ``os`` only.
"""

from __future__ import annotations

import ctypes
import os
import resource
import struct
import sys
from pathlib import Path
from typing import Any

__all__ = ["Confinement", "drop_privileges", "install_hooks", "leave_network", "read_roots", "restrict_files",
           "set_limits"]

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # all arches
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
# Landlock filesystem rights (include/uapi/linux/landlock.h): bit -> the first ABI that knows it.
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_FILE, _FS_MAKE_REG, _FS_TRUNCATE = 1 << 5, 1 << 8, 1 << 14
_FS_BITS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FS_ALL_LATEST = (1 << 16) - 1  # ABI 5 added IOCTL_DEV
_NET_TCP_BIND_CONNECT = 0b11  # ABI 4
_SCOPE_ABSTRACT_UNIX_AND_SIGNAL = 0b11  # ABI 6

_BLOCKED_EVENTS = (
    "socket.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "ctypes.", "os.putenv", "os.unsetenv", "webbrowser.open", "urllib.Request", "http.client.connect",
    "shutil.rmtree", "os.rmdir", "os.chmod", "os.chown", "os.symlink", "os.link", "os.chdir",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class Blocked(PermissionError):
    """Something the sandbox does not allow (raised by the audit hook)."""


class Confinement:
    """Which layers took effect in this process (reported by the ``check`` mode)."""

    def __init__(self) -> None:
        self.uid_dropped = False
        self.network_namespace = False
        self.no_new_privs = False
        self.landlock_abi = 0

    def as_dict(self) -> dict[str, Any]:
        return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "uid_dropped": self.uid_dropped,
                "network_namespace": self.network_namespace, "no_new_privs": self.no_new_privs,
                "landlock_abi": self.landlock_abi}


def set_limits(memory: int, cpu_s: int, fsize: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # ignored for root: see drop_privileges
    except (ValueError, OSError):
        pass


def drop_privileges(work_dir: str, uid: int, gid: int) -> bool:
    """Enter ``work_dir`` (made the new user's) and, when running as root, become ``uid:gid`` with no groups.

    The folder is entered first, so the child keeps working there even if the folders above it are closed to the
    new user.  Returns whether the user changed; refuses to go on when a drop did not fully take.
    """
    is_root = os.geteuid() == 0
    if is_root:
        os.chown(work_dir, uid, gid)
    os.chdir(work_dir)
    os.umask(0o077)
    if not is_root:
        return False
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid or os.getgroups():
        raise OSError("the intake sandbox could not change to its own user")
    return True


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def leave_network() -> bool:
    """unshare(2) into new user+net namespaces (Python 3.11 has no os.unshare).  Must run before any thread."""
    try:
        return bool(_libc().unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0)
    except (OSError, AttributeError):
        return False


def read_roots() -> list[str]:
    """Folders the child may read after the lock-down: the Python installation and the ``engine`` package (not the
    project folder above it, where a config.toml may live)."""
    engine_dir = Path(__file__).resolve().parents[1]
    roots = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)
             and os.path.realpath(p) != str(engine_dir.parent)}
    roots.add(str(engine_dir))
    return sorted(roots)


def _landlock_rule(libc: Any, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a folder that is not there needs no rule
    try:
        rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd))
        if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, rule, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_add_rule")
    finally:
        os.close(fd)


def restrict_files(readable: list[str], writable: str) -> tuple[bool, int]:
    """no_new_privs, then Landlock: read only below ``readable``, read and write only below ``writable`` (``"."``:
    the work folder, entered before the user changed, may be out of reach by its full path).

    Returns ``(no_new_privs, landlock_abi)``; ABI 0 means the kernel (or a seccomp profile) offers no Landlock.
    """
    libc = _libc()
    nnp = libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    abi = int(libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION))
    if abi <= 0 or not nnp:
        return nnp, 0
    handled_fs = _FS_BITS_BY_ABI.get(abi, _FS_ALL_LATEST)
    fields = [handled_fs] + ([_NET_TCP_BIND_CONNECT] if abi >= 4 else []) + \
        ([_SCOPE_ABSTRACT_UNIX_AND_SIGNAL] if abi >= 6 else [])
    attr = ctypes.create_string_buffer(struct.pack(f"={len(fields)}Q", *fields))
    ruleset = int(libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, len(fields) * 8, 0))
    if ruleset < 0:
        return nnp, 0
    try:
        for root in readable:
            _landlock_rule(libc, ruleset, root, _FS_READ_FILE | _FS_READ_DIR)
        own = _FS_READ_FILE | _FS_READ_DIR | _FS_WRITE_FILE | _FS_REMOVE_FILE | _FS_MAKE_REG
        _landlock_rule(libc, ruleset, writable, own | (_FS_TRUNCATE if abi >= 3 else 0))
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return nnp, abi


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def install_hooks(work_dir: str, readable: list[str]) -> None:
    """The Python-level layer: an audit hook (see the module docstring), the socket module disarmed, few files."""
    import socket

    own = os.path.abspath(work_dir)
    roots = (*readable, own)

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event.startswith(_BLOCKED_EVENTS):
            raise Blocked(f"blocked in the intake sandbox: {event}")
        if event in ("os.rename", "os.remove"):
            paths = [os.path.abspath(os.fsdecode(a)) for a in args[: 2 if event == "os.rename" else 1]
                     if isinstance(a, str | bytes)]
            if not all(_inside(p, (own,)) for p in paths):
                raise Blocked(f"blocked in the intake sandbox: {event} outside the work folder")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[:3]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int)
                                                                              and flags & _WRITE_FLAGS):
                raise Blocked("blocked in the intake sandbox: opening a file for writing")
            if isinstance(path, str | bytes):
                full = os.path.abspath(os.fsdecode(path))
                if not _inside(full, roots) and not full.startswith("/proc/self/fd/"):
                    raise Blocked("blocked in the intake sandbox: reading outside its folders")

    def no_socket(*_a: object, **_k: object) -> None:
        raise Blocked("blocked in the intake sandbox: network")

    socket.socket = no_socket  # type: ignore[assignment,misc]
    socket.create_connection = no_socket  # type: ignore[assignment]
    socket.getaddrinfo = no_socket  # type: ignore[assignment]
    sys.addaudithook(audit)
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
