"""The intake child process: parse one untrusted model file under tight confinement, then exit.

Run only by :mod:`engine.intake.children` as ``python -E -s -m engine.intake.sandbox MODE ...`` with an empty
environment and the file on stdin (never its path).  Why a fresh interpreter and not a fork of the bot: a fork
would inherit the bot's memory (token included), sockets and threads.  What the child does, in this order:

1. lower its limits (:func:`engine.intake.confine.set_limits`) before anything else;
2. import torch and the hypernetwork code and run each code path once on a tiny built-in model, so nothing needs
   importing after the lock-down (the new user may not be able to read the Python installation);
3. lock down (:mod:`engine.intake.confine`): its own work folder, another user when started as root, no network
   namespace, Landlock, the audit hook;
4. ``convert``: ``torch.load(stdin, weights_only=True, map_location="cpu")`` (or the Hypercord safetensors reader),
   say what the file is when it is not a hypernetwork (:func:`engine.intake.identify.identify_loaded`), intake
   policy, ``engine.hypernet.from_state_dict`` and ``save_canonical`` into the work folder; ``verify``: load a
   Hypercord file (stdin) and report what it holds; ``check``: report which guards are active, and whether the
   ``--try-read`` files can be opened (before and after the Python-level hooks).

The answer is one JSON line on the original stdout; fd 1 is pointed at stderr first, so nothing a payload prints
can pose as the answer.  Exit 0 = ok, 2 = refused (with a one-line reason), 3 = out of memory, 4 = could not start.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import traceback
from typing import Any

from engine.intake import confine
from engine.intake.base import IntakeRefused, MiB, damaged, human_size
from engine.intake.containers import check_globals
from engine.intake.identify import identify_loaded, refusal
from engine.intake.ingest import UNET_WIDTHS
from engine.intake.kinds import Container, FileIdentity, FileKind

_DEFAULT_NAME = "hypernetwork"
_CANONICAL_NAME = "canonical.safetensors"
_UNSUPPORTED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")


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
        raise IntakeRefused("the file is a hypernetwork without any layers (it holds no weights), so it would change "
                            "nothing; use another version of it")
    odd = [s for s in sizes if s not in UNET_WIDTHS]
    if odd:
        known = ", ".join(str(s) for s in sorted(UNET_WIDTHS))
        raise IntakeRefused(f"the file has size {odd[0]}, which no Stable Diffusion UNet uses (expected {known}); it "
                            "cannot work with any model")


def _unusable(reason: object) -> IntakeRefused:
    text = " ".join(str(reason).replace("canonical", "Hypercord").split())[:300]
    return IntakeRefused(f"the file is not a usable hypernetwork ({text}); use another version of it")


def _check_activation(activation: object) -> None:
    from engine.hypernet.layout import activation_problem

    if isinstance(activation, str) and activation != "linear":
        problem = activation_problem(activation)
        if problem:
            raise _unusable(problem)


def _precheck_raw(obj: object, file_size: int, container: Container) -> None:
    """What the loaded object is, then intake policy before the spec validation: widths, activation, size."""
    identity = identify_loaded(obj, file_size, container)
    if identity.kind is FileKind.UNKNOWN:
        if not (isinstance(obj, dict) and {"layer_structure", "activation_func"} & set(obj)):
            raise IntakeRefused("the file is a PyTorch save but holds no hypernetwork (no layers of any size); check that "
                           "you picked the hypernetwork file itself", identity)
    elif identity.kind is not FileKind.HYPERNETWORK:
        raise IntakeRefused(refusal(identity) or "", identity)
    if isinstance(obj, dict):
        _check_sizes(sorted(k for k in obj if type(k) is int))
        _check_activation(obj.get("activation_func"))
    declared = _declared_bytes(obj)
    if declared > file_size:
        raise IntakeRefused(damaged(f"it declares {human_size(declared)} of weights but is only {human_size(file_size)} "
                                    "long"))


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
        print(f"torch.load failed: {type(e).__name__}: {text[:2000]}", file=sys.stderr)
        if "can't allocate memory" in text or "Cannot allocate memory" in text:
            raise MemoryError from None
        if "nsupported global" in text.lower() or "Weights only load failed" in text:
            found = _UNSUPPORTED_GLOBAL.search(text)
            if found:
                check_globals([found[1]])  # says "runs code" or "unusual data", as the parent's scan would
            raise IntakeRefused("the file would run code when loaded (PyTorch's safe loader refused it); refused, do "
                                "not load it anywhere else either") from None
        raise IntakeRefused(damaged("PyTorch cannot read it")) from None


def _stdin_as_memfd(limit: int) -> str:
    """The input copied into an anonymous memory file, as a path the safetensors reader can open (the input file
    itself may be closed to this process's user, and lies outside its Landlock folders)."""
    fd = os.memfd_create("intake-input")
    copied = 0
    while chunk := sys.stdin.buffer.read(4 * MiB):
        copied += len(chunk)
        if copied > limit:
            raise IntakeRefused(damaged("it is longer than it was when checked"))
        os.write(fd, chunk)
    return f"/proc/self/fd/{fd}"


def _load_safetensors(limit: int, weight_cap: int) -> Any:
    """The Hypercord file on stdin; the safetensors reader's own errors mean the data does not match the header."""
    from engine.hypernet import HypernetFormatError, load_canonical

    try:
        return load_canonical(_stdin_as_memfd(limit), _DEFAULT_NAME, max_bytes=weight_cap)
    except (HypernetFormatError, IntakeRefused, MemoryError):
        raise
    except Exception as e:
        print(f"safetensors failed: {type(e).__name__}: {str(e)[:2000]}", file=sys.stderr)
        raise IntakeRefused(damaged("its tensor data does not match its safetensors header")) from None


def _convert(args: argparse.Namespace) -> dict[str, Any]:
    from engine.hypernet import HypernetFormatError, from_state_dict, save_canonical

    try:
        if args.format == "safetensors":
            hn = _load_safetensors(args.weight_cap, args.weight_cap)
        else:
            data = sys.stdin.buffer.read(args.weight_cap + 1)
            obj = _load_pt(data)
            del data
            _precheck_raw(obj, args.weight_cap, args.format)
            hn = from_state_dict(obj, _DEFAULT_NAME, max_bytes=args.weight_cap)
        summary = summarize(hn)
        save_canonical(hn, _CANONICAL_NAME)
    except HypernetFormatError as e:
        raise _unusable(e) from None
    return summary


def _verify(args: argparse.Namespace) -> dict[str, Any]:
    from engine.hypernet import HypernetFormatError

    try:
        return summarize(_load_safetensors(args.weight_cap + 16 * MiB, args.weight_cap))
    except HypernetFormatError as e:
        raise _unusable(e) from None


def _try_reads(paths: list[str]) -> dict[str, str]:
    """``path -> "readable"`` or the error's name, for each path the ``check`` mode was asked to try."""
    found = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.read(1)
            found[path] = "readable"
        except OSError as error:
            found[path] = type(error).__name__
    return found


def _probe(confinement: confine.Confinement, os_reads: dict[str, str], paths: list[str]) -> dict[str, Any]:
    """Try each forbidden thing; a guard is active when the attempt raises."""
    def blocked(fn: Any) -> bool:
        try:
            fn()
        except Exception:
            return True
        return False

    import resource

    return {
        **confinement.as_dict(),
        "socket": blocked(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        "os_system": blocked(lambda: os.system("true")),
        "subprocess": blocked(lambda: subprocess.run(["true"], check=False)),
        "file_write": blocked(lambda: open("sandbox-probe.txt", "w").close()),
        "environment": sorted(os.environ),
        "reads_os_level": os_reads,
        "reads": _try_reads(paths),
        "limits": {name: resource.getrlimit(getattr(resource, name))[0]
                   for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")},
    }


def _warm_up(work_dir: str) -> None:
    """Run every code path once on a tiny model, so no import is left for after the lock-down."""
    import torch

    from engine.hypernet import from_state_dict, load_canonical, save_canonical
    from engine.hypernet.layout import ACTIVATIONS, activation_problem

    for name in ACTIVATIONS:  # probe every activation now: a first probe later may import more of torch
        activation_problem(name)
    sd = {"linear.0.weight": torch.zeros(320, 320), "linear.0.bias": torch.zeros(320)}
    tiny = {320: (dict(sd), dict(sd)), "layer_structure": [1, 1], "activation_func": "linear"}
    for zipped in (True, False):
        buf = io.BytesIO()
        torch.save(tiny, buf, _use_new_zipfile_serialization=zipped)
        loaded = torch.load(io.BytesIO(buf.getvalue()), map_location="cpu", weights_only=True)
    path = os.path.join(work_dir, "warm-up.safetensors")
    save_canonical(from_state_dict(loaded, _DEFAULT_NAME), path)
    summarize(load_canonical(path, _DEFAULT_NAME))
    os.remove(path)
    identify_loaded(loaded, 1, "pt")


def _lock_down(args: argparse.Namespace) -> tuple[confine.Confinement, dict[str, str]]:
    confinement = confine.Confinement()
    confinement.uid_dropped = confine.drop_privileges(args.workdir, args.uid, args.gid)
    confinement.network_namespace = confine.leave_network()
    readable = confine.read_roots()
    confinement.no_new_privs, confinement.landlock_abi = confine.restrict_files(readable, ".")
    os_reads = _try_reads(args.try_read) if args.mode == "check" else {}
    confine.install_hooks(os.getcwd(), readable)
    return confinement, os_reads


def _refusal_answer(error: IntakeRefused) -> dict[str, Any]:
    answer: dict[str, Any] = {"ok": False, "refused": str(error)}
    identity: FileIdentity | None = error.identity
    if identity is not None:
        answer.update(kind=identity.kind.value, label=identity.label, family=identity.family)
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.intake.sandbox")
    parser.add_argument("mode", choices=("convert", "verify", "check"))
    parser.add_argument("--format", choices=("pt", "pt-legacy", "safetensors"), default="pt")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--weight-cap", type=int, default=1 << 30)
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--cpu-s", type=int, required=True)
    parser.add_argument("--fsize-bytes", type=int, required=True)
    parser.add_argument("--uid", type=int, default=65534, help="the user to become when started as root")
    parser.add_argument("--gid", type=int, default=65534)
    parser.add_argument("--try-read", action="append", default=[], help="check mode: try to open this file")
    args = parser.parse_args(argv)

    answer_fd = os.dup(1)
    os.dup2(2, 1)  # whatever gets printed from now on lands in stderr, never in the answer
    try:
        confine.set_limits(args.memory_bytes, args.cpu_s, args.fsize_bytes)
        _warm_up(args.workdir)
        confinement, os_reads = _lock_down(args)
    except Exception:  # before any input was read: a setup problem, not the file's fault
        traceback.print_exc()
        _answer(answer_fd, {"ok": False, "setup": True, "refused": (
            "the intake sandbox could not start, so no file can be checked now; the bot's owner should read the log "
            f"(is intake.sandbox_memory_mb = {args.memory_bytes >> 20} too low for torch?)")})
        return 4
    try:
        if args.mode == "check":
            summary = _probe(confinement, os_reads, args.try_read)
        elif args.mode == "convert":
            summary = _convert(args)
        else:
            summary = _verify(args)
    except IntakeRefused as e:
        _answer(answer_fd, _refusal_answer(e))
        return 2
    except MemoryError:
        _answer(answer_fd, {"ok": False, "memory": True, "refused": "out of memory"})
        return 3
    except Exception as e:  # a file that breaks the parser in some other way: still one line, still refused
        traceback.print_exc()
        _answer(answer_fd, {"ok": False, "refused": damaged(f"reading it failed with {type(e).__name__}")})
        return 2
    _answer(answer_fd, {"ok": True, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
