"""The intake child process: parse one untrusted model file under tight limits, then exit.

Run only by :mod:`engine.intake.ingest` as ``python -E -s -m engine.intake.sandbox MODE ...`` with an empty
environment and the file on stdin.  Why a fresh interpreter and not a fork of the bot: a fork would inherit the
bot's memory (token included), sockets and threads.  What the child does, in this order:

1. lower its own limits before touching any input: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_CORE 0,
   RLIMIT_FSIZE (just enough for the canonical file), RLIMIT_NPROC 0 (where it applies);
2. leave the network: a new user + network namespace when the kernel allows it (then there is no interface
   but a down loopback), and in any case
3. after importing torch, an audit hook that makes socket creation, process creation (``os.system``,
   ``subprocess``, ``exec*``, ``fork``), ``ctypes`` and file writes through Python raise; RLIMIT_NOFILE small;
4. ``convert``: ``torch.load(stdin, weights_only=True, map_location="cpu")`` (or the canonical safetensors
   reader for ``.safetensors`` input), intake policy checks, ``engine.hypernet.from_state_dict``, and
   ``save_canonical`` to ``--out``; ``verify``: load a canonical file (stdin) and report what it holds;
   ``check``: report which of the guards above are active on this host.

The answer is one JSON line on the original stdout; fd 1 is pointed at stderr first, so nothing a payload
prints can pose as the answer.  Exit 0 = ok, 2 = refused (with a one-line reason), 3 = out of memory, 4 = could not start.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import resource
import sys
import tempfile
import traceback
from typing import Any

from engine.intake.base import IntakeRefused, human_size
from engine.intake.ingest import UNET_WIDTHS

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_BLOCKED_EVENTS = (
    "socket.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "ctypes.", "os.putenv", "os.unsetenv", "webbrowser.open", "urllib.Request", "http.client.connect",
    "shutil.rmtree", "os.rmdir", "os.chmod", "os.chown", "os.symlink", "os.link", "os.chdir",
)
_work_dir = ""  # set by _lock_down: the only folder where files may be renamed or removed (save_canonical's temp)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_DEFAULT_NAME = "hypernetwork"


class _Blocked(PermissionError):
    pass


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event.startswith(_BLOCKED_EVENTS):
        raise _Blocked(f"blocked in the intake sandbox: {event}")
    if event in ("os.rename", "os.remove"):
        count = 2 if event == "os.rename" else 1
        paths = [os.path.realpath(os.fsdecode(a)) for a in args[:count] if isinstance(a, str | bytes)]
        if not _work_dir or not all(p.startswith(_work_dir + os.sep) for p in paths):
            raise _Blocked(f"blocked in the intake sandbox: {event} outside the work folder")
    if event == "open" and len(args) >= 3:
        mode, flags = args[1], args[2]
        by_mode = isinstance(mode, str) and any(c in mode for c in "wax+")
        if by_mode or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            raise _Blocked("blocked in the intake sandbox: opening a file for writing")


def _set_limits(memory: int, cpu_s: int, fsize: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (ValueError, OSError):
        pass


def _leave_network() -> bool:
    """unshare(2) into new user+net namespaces (Python 3.11 has no os.unshare).  Must run before any thread."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0
    except (OSError, AttributeError):
        return False


def _lock_down(work_dir: str) -> None:
    """Block what a hypernetwork never needs; called after the heavy imports (they use ctypes and open files)."""
    import socket

    global _work_dir
    os.chdir(work_dir)  # relative paths land in the parent's temp folder, which it deletes
    tempfile.tempdir = work_dir  # torch asks for a temp dir lazily; never probe /tmp (writes are blocked)
    _work_dir = os.path.realpath(work_dir)

    def _no_socket(*_a: object, **_k: object) -> None:
        raise _Blocked("blocked in the intake sandbox: network")

    socket.socket = _no_socket  # type: ignore[assignment,misc]
    socket.create_connection = _no_socket  # type: ignore[assignment]
    socket.getaddrinfo = _no_socket  # type: ignore[assignment]
    sys.addaudithook(_audit)
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))


def _answer(fd: int, payload: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(payload) + "\n").encode())


# ----------------------------------------------------------------------------------------------- validation

def _declared_bytes(obj: object) -> int:
    """Bytes the tensors in a raw hypernetwork dict claim (views included), walking only the expected shapes."""
    import torch

    total = 0
    if not isinstance(obj, dict):
        return 0
    for key, pair in obj.items():
        if type(key) is not int or not isinstance(pair, tuple | list):
            continue
        for sd in pair:
            if isinstance(sd, dict):
                for t in sd.values():
                    if isinstance(t, torch.Tensor):
                        total += t.numel() * t.element_size()
    return total


def _check_sizes(sizes: list[int]) -> None:
    if not sizes:
        raise IntakeRefused("the file holds no weights (no sizes), so it would do nothing")
    odd = [s for s in sizes if s not in UNET_WIDTHS]
    if odd:
        known = ", ".join(str(s) for s in sorted(UNET_WIDTHS))
        raise IntakeRefused(f"the file has size {odd[0]}, which no Stable Diffusion UNet uses (expected {known})")


def _check_activation(activation: object) -> None:
    from engine.hypernet.layout import activation_problem

    if isinstance(activation, str) and activation != "linear":
        problem = activation_problem(activation)
        if problem:
            raise IntakeRefused(f"not a usable hypernetwork: {problem}")


def _precheck_raw(obj: object, file_size: int) -> None:
    """Intake policy on the raw dict, before the spec validation: widths, activation, declared size."""
    if isinstance(obj, dict):
        _check_sizes(sorted(k for k in obj if type(k) is int))
        _check_activation(obj.get("activation_func"))
    declared = _declared_bytes(obj)
    if declared > file_size:
        raise IntakeRefused(f"the file declares {human_size(declared)} of weights but is only {human_size(file_size)} long "
                            "(damaged or hostile)")


def summarize(hn: Any) -> dict[str, Any]:
    """What the bot records, plus warnings; applies the policy checks to a validated Hypernetwork."""
    from engine.hypernet.layout import BATCH_DEPENDENT_ACTIVATIONS

    meta = hn.metadata
    _check_sizes(list(hn.sizes))
    activation = meta["activation_func"] or "linear"
    _check_activation(activation)
    warnings = []
    if activation in BATCH_DEPENDENT_ACTIVATIONS:
        warnings.append(f"activation {activation!r} normalises over the batch in A1111, so images in one batch "
                        "influence each other")
    if activation == "hardshrink":
        warnings.append("activation 'hardshrink' is discontinuous; fp16 results can differ visibly from fp32")
    return {
        "sizes": [int(s) for s in hn.sizes],
        "layer_structure": [float(x) for x in meta["layer_structure"]],
        "activation": activation,
        "base_model": meta.get("sd_checkpoint_name") or meta.get("sd_checkpoint") or None,
        "nbytes": int(hn.nbytes),
        "warnings": warnings,
    }


def _load_pt(data: bytes) -> object:
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:
        text = str(e)
        if "can't allocate memory" in text or "Cannot allocate memory" in text:
            raise MemoryError from None
        if "Unsupported global" in text or "Weights only load failed" in text:
            raise IntakeRefused("the file would run code when loaded (PyTorch's safe loader refused it)") from None
        first = " ".join(text.split())[:160] or type(e).__name__
        raise IntakeRefused(f"PyTorch could not read the file: {first}") from None


def _convert(args: argparse.Namespace) -> dict[str, Any]:
    from engine.hypernet import HypernetFormatError, from_state_dict, load_canonical, save_canonical

    try:
        if args.format == "safetensors":
            hn = load_canonical("/proc/self/fd/0", _DEFAULT_NAME, max_bytes=args.weight_cap)
        else:
            data = sys.stdin.buffer.read(args.weight_cap + 1)
            obj = _load_pt(data)
            del data
            _precheck_raw(obj, args.weight_cap)
            hn = from_state_dict(obj, _DEFAULT_NAME, max_bytes=args.weight_cap)
        summary = summarize(hn)
        save_canonical(hn, args.out)
    except HypernetFormatError as e:
        raise IntakeRefused(f"not a usable hypernetwork: {e}") from None
    return summary


def _verify(args: argparse.Namespace) -> dict[str, Any]:
    from engine.hypernet import HypernetFormatError, load_canonical

    try:
        return summarize(load_canonical("/proc/self/fd/0", _DEFAULT_NAME, max_bytes=args.weight_cap))
    except HypernetFormatError as e:
        raise IntakeRefused(f"not a usable hypernetwork: {e}") from None


def _probe(netns: bool) -> dict[str, Any]:
    """Try each forbidden thing; a guard is active when the attempt raises."""
    import socket
    import subprocess

    def blocked(fn: Any) -> bool:
        try:
            fn()
        except Exception:
            return True
        return False

    return {
        "network_namespace": netns,
        "socket": blocked(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        "os_system": blocked(lambda: os.system("true")),
        "subprocess": blocked(lambda: subprocess.run(["true"], check=False)),
        "file_write": blocked(lambda: open("sandbox-probe.txt", "w").close()),
        "environment": sorted(os.environ),
        "limits": {name: resource.getrlimit(getattr(resource, name))[0]
                   for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.intake.sandbox")
    parser.add_argument("mode", choices=("convert", "verify", "check"))
    parser.add_argument("--format", choices=("pt", "pt-legacy", "safetensors"), default="pt")
    parser.add_argument("--out")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--weight-cap", type=int, default=1 << 30)
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--cpu-s", type=int, required=True)
    parser.add_argument("--fsize-bytes", type=int, required=True)
    args = parser.parse_args(argv)

    answer_fd = os.dup(1)
    os.dup2(2, 1)  # whatever gets printed from now on lands in stderr, never in the answer
    _set_limits(args.memory_bytes, args.cpu_s, args.fsize_bytes)
    netns = _leave_network()
    try:
        import torch  # noqa: F401 - imported before the lock-down: torch's import uses ctypes

        import engine.hypernet  # noqa: F401
        from engine.hypernet.layout import ACTIVATIONS, activation_problem

        for name in ACTIVATIONS:  # probe every activation now: a first probe later may import more of torch
            activation_problem(name)
        _lock_down(args.workdir)
    except Exception:  # before any input was read: a setup problem, not the file's fault
        traceback.print_exc()
        _answer(answer_fd, {"ok": False, "refused": f"the intake sandbox could not start (is the memory limit of "
                                                     f"{args.memory_bytes >> 20} MiB too low for torch?)"})
        return 4
    try:
        if args.mode == "check":
            summary = _probe(netns)
        elif args.mode == "convert":
            summary = _convert(args)
        else:
            summary = _verify(args)
    except IntakeRefused as e:
        _answer(answer_fd, {"ok": False, "refused": str(e)})
        return 2
    except MemoryError:
        limit_mib = args.memory_bytes >> 20
        _answer(answer_fd, {"ok": False, "refused": f"reading the file needed more than the {limit_mib} MiB memory limit; "
                                                     "refused"})
        return 3
    except Exception as e:  # a file that breaks the parser in some other way: still one line, still refused
        traceback.print_exc()
        _answer(answer_fd, {"ok": False, "refused": f"the file could not be read safely ({type(e).__name__})"})
        return 2
    _answer(answer_fd, {"ok": True, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
