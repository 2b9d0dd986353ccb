"""The sandbox child's hypernetwork path: an A1111 ``.pt`` (or a Hypercord safetensors file) validated and written
in Hypercord's canonical form.

Why these checks on top of the spec validator (:func:`engine.hypernet.from_state_dict`): intake policy refuses what
A1111 would load but what can never work or would mislead — widths no UNet has, a file without layers, activations
A1111 cannot run — and warns about what works oddly (activations normalising over the batch).
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from engine.checkpoints.hashes import checkpoint_title
from engine.intake.base import IntakeRefused, MiB, damaged
from engine.intake.identify import identify_loaded, refusal
from engine.intake.ingest import UNET_WIDTHS
from engine.intake.kinds import Container, FileKind
from engine.intake.sandbox.reading import (
    CANONICAL_NAME,
    check_weight_bytes,
    load_pt,
    read_stdin,
    stdin_as_memfd,
)

__all__ = ["convert", "summarize", "verify", "warm_up"]

_DEFAULT_NAME = "hypernetwork"


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
            raise IntakeRefused("the file is a PyTorch save but holds no hypernetwork (no layers of any size); check "
                                "that you picked the hypernetwork file itself", identity)
    elif (message := refusal(identity, FileKind.HYPERNETWORK)) is not None:
        raise IntakeRefused(message, identity)
    if isinstance(obj, dict):
        _check_sizes(sorted(k for k in obj if type(k) is int))
        _check_activation(obj.get("activation_func"))
    check_weight_bytes(_declared_bytes(obj), file_size)


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
        "base_model": checkpoint_title(_text(meta.get("sd_checkpoint_name")), _text(meta.get("sd_checkpoint"))),
        "nbytes": int(hn.nbytes),
        "warnings": warnings,
    }


def _text(value: object) -> str | None:
    """A metadata string as recorded (A1111 writes str), bounded; anything else counts as not recorded."""
    return value.strip()[:200] or None if isinstance(value, str) else None


def _load_safetensors(limit: int, weight_cap: int) -> Any:
    """The Hypercord file on stdin; the safetensors reader's own errors mean the data does not match the header."""
    from engine.hypernet import HypernetFormatError, load_canonical

    try:
        return load_canonical(stdin_as_memfd(limit), _DEFAULT_NAME, max_bytes=weight_cap)
    except (HypernetFormatError, IntakeRefused, MemoryError):
        raise
    except Exception as e:
        print(f"safetensors failed: {type(e).__name__}: {str(e)[:2000]}", file=sys.stderr)
        raise IntakeRefused(damaged("its tensor data does not match its safetensors header")) from None


def convert(container: Container, weight_cap: int) -> dict[str, Any]:
    from engine.hypernet import HypernetFormatError, from_state_dict, save_canonical

    try:
        if container == "safetensors":
            hn = _load_safetensors(weight_cap, weight_cap)
        else:
            data = read_stdin(weight_cap)
            obj = load_pt(data)
            del data
            _precheck_raw(obj, weight_cap, container)
            hn = from_state_dict(obj, _DEFAULT_NAME, max_bytes=weight_cap)
        summary = summarize(hn)
        save_canonical(hn, CANONICAL_NAME)
    except HypernetFormatError as e:
        raise _unusable(e) from None
    return summary


def verify(weight_cap: int) -> dict[str, Any]:
    from engine.hypernet import HypernetFormatError

    try:
        return summarize(_load_safetensors(weight_cap + 16 * MiB, weight_cap))
    except HypernetFormatError as e:
        raise _unusable(e) from None


def warm_up(work_dir: str) -> None:
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
        loaded = load_pt(buf.getvalue())
    path = os.path.join(work_dir, "warm-up.safetensors")
    save_canonical(from_state_dict(loaded, _DEFAULT_NAME), path)
    summarize(load_canonical(path, _DEFAULT_NAME))
    os.remove(path)
    _precheck_raw(loaded, 1 << 20, "pt")
