"""A LoRA file's flat state dict -> :class:`LoraNetwork`, by A1111's rules (docs/a1111-lora.md §2-§4).

Why here and not in the loaders: the same rules must hold for a file the worker reads (safetensors) and for
what the intake sandbox unpickled, so the loaders only produce a ``dict[str, Tensor]`` and call this.

Rules kept from A1111: each key splits at its first ``.`` into BASE and PART; BASE resolves to a module of
the model (``ModuleTable.resolve``) or the key is ignored; the PARTs of a module pick its type, first match
wins; extra PARTs ride along unused.  Where A1111 refuses the file (a matched module whose PARTs fit no
type, LoRA factors on a norm or container) we refuse it too, with one line naming the module.  Where A1111
silently does something we will not — GLoRA and OFT, which we do not implement — we refuse as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypedDict

import torch

from engine.lora.errors import LoraFormatError
from engine.lora.modules import FullModule, HadaModule, Ia3Module, LokrModule, LoraModule, LowRankModule, NormModule
from engine.lora.names import CONV, LINEAR, PATCHED_KINDS, ModuleEntry, ModuleTable, sd1_table
from engine.lora.network import DORA_APPLIED_WARNING, DORA_IGNORED_WARNING, DoraMode, LoraNetwork, Precision

__all__ = ["module_type", "parse_state_dict"]

Parts = dict[str, torch.Tensor]


class _Head(TypedDict):
    """The fields every module type shares (see :class:`engine.lora.modules.LoraModule`)."""

    key: str
    target: str
    kind: str
    dora_scale: torch.Tensor | None

_LOKR_W1 = ("lokr_w1",), ("lokr_w1_a", "lokr_w1_b")
_LOKR_W2 = ("lokr_w2",), ("lokr_w2_a", "lokr_w2_b")


def _has(parts: Mapping[str, object], *names: str) -> bool:
    return all(n in parts for n in names)


def module_type(parts: Mapping[str, object]) -> str | None:
    """A1111's module type for a module's PART names (first match wins), or None when none accepts them."""
    if _has(parts, "lora_up.weight", "lora_down.weight"):
        return "lora"
    if _has(parts, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
        return "loha"
    if _has(parts, "weight"):
        return "ia3"
    if any(_has(parts, *w1) for w1 in _LOKR_W1) and any(_has(parts, *w2) for w2 in _LOKR_W2):
        return "lokr"
    if _has(parts, "diff"):
        return "full"
    if _has(parts, "w_norm", "b_norm"):
        return "norm"
    if _has(parts, "a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"):
        return "glora"
    if "oft_blocks" in parts or "oft_diag" in parts:
        return "oft"
    return None


def _scalar(t: torch.Tensor | None) -> float | None:
    """A stored scalar read as stored (a float16 alpha of 2.7 is 2.69921875)."""
    return None if t is None else float(t.reshape(-1)[0].item())


def _scale(parts: Parts, dim: int | None) -> float:
    """The ``scale`` PART, else ``alpha / dim`` when both exist, else 1.0 (a missing alpha is not alpha = 1)."""
    scale = _scalar(parts.get("scale"))
    if scale is not None:
        return scale
    alpha = _scalar(parts.get("alpha"))
    if alpha is not None and dim is not None:
        return alpha / dim
    return 1.0


class _Builder:
    """Makes one typed module from its PARTs, casting tensors by the precision policy."""

    def __init__(self, precision: Precision) -> None:
        self.precision = precision

    def cast(self, t: torch.Tensor | None, low_rank: bool = False) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.detach()
        if low_rank or self.precision == "float32":
            return t.to(torch.float32)
        return t

    def build(self, kind: str, parts: Parts, head: _Head) -> LoraModule:
        return _BUILDERS[kind](self, parts, head)

    def lora(self, parts: Parts, head: _Head) -> LoraModule:
        c = self.cast
        return LowRankModule(**head, scale=_scale(parts, parts["lora_down.weight"].shape[0]),
                             up=c(parts["lora_up.weight"], True), down=c(parts["lora_down.weight"], True),
                             mid=c(parts.get("lora_mid.weight"), True), bias=c(parts.get("bias"), True))

    def loha(self, parts: Parts, head: _Head) -> LoraModule:
        c = self.cast
        return HadaModule(**head, scale=_scale(parts, parts["hada_w1_b"].shape[0]),
                          w1_a=c(parts["hada_w1_a"]), w1_b=c(parts["hada_w1_b"]), w2_a=c(parts["hada_w2_a"]),
                          w2_b=c(parts["hada_w2_b"]), t1=c(parts.get("hada_t1")), t2=c(parts.get("hada_t2")))

    def ia3(self, parts: Parts, head: _Head) -> LoraModule:
        if "on_input" not in parts:
            raise KeyError("on_input")
        return Ia3Module(**head, scale=_scale(parts, None), w=self.cast(parts["weight"]),
                         on_input=bool(_scalar(parts["on_input"])))

    def lokr(self, parts: Parts, head: _Head) -> LoraModule:
        c = self.cast
        dim = None
        if "lokr_w2_b" in parts:
            dim = parts["lokr_w2_b"].shape[0]
        elif "lokr_w1_b" in parts:
            dim = parts["lokr_w1_b"].shape[0]
        full_w1, full_w2 = "lokr_w1" in parts, "lokr_w2" in parts
        return LokrModule(**head, scale=_scale(parts, dim),
                          w1=c(parts.get("lokr_w1")), w1_a=None if full_w1 else c(parts["lokr_w1_a"]),
                          w1_b=None if full_w1 else c(parts["lokr_w1_b"]),
                          w2=c(parts.get("lokr_w2")), w2_a=None if full_w2 else c(parts["lokr_w2_a"]),
                          w2_b=None if full_w2 else c(parts["lokr_w2_b"]),
                          t2=None if full_w2 else c(parts.get("lokr_t2")))

    def full(self, parts: Parts, head: _Head) -> LoraModule:
        return FullModule(**head, scale=_scale(parts, None), diff=self.cast(parts["diff"]),
                          diff_b=self.cast(parts.get("diff_b")))

    def norm(self, parts: Parts, head: _Head) -> LoraModule:
        return NormModule(**head, scale=_scale(parts, None), w_norm=self.cast(parts["w_norm"]),
                          b_norm=self.cast(parts["b_norm"]))


_BUILDERS: dict[str, Callable[[_Builder, Parts, _Head], LoraModule]] = {
    "lora": _Builder.lora, "loha": _Builder.loha, "ia3": _Builder.ia3, "lokr": _Builder.lokr,
    "full": _Builder.full, "norm": _Builder.norm,
}


def _group(state: Mapping[str, torch.Tensor], table: ModuleTable, name: str
           ) -> tuple[dict[str, tuple[str, ModuleEntry, Parts]], list[str]]:
    """Keys grouped by the module they resolve to (A1111 layer name -> (first BASE, module, PARTs))."""
    groups: dict[str, tuple[str, ModuleEntry, Parts]] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise LoraFormatError(f"{name}: entry {key!r} is not a named tensor (a LoRA file is a flat dict of tensors)")
        base, _, part = key.partition(".")
        hit = table.resolve(base)
        if hit is None:
            ignored.append(key)
            continue
        layer, entry = hit
        group = groups.setdefault(layer, (base, entry, {}))
        group[2][part] = value  # two BASEs naming one module share one weight set; a later key overwrites
    return groups, ignored


def parse_state_dict(state: Mapping[str, torch.Tensor], name: str, *, table: ModuleTable | None = None,
                     dora: DoraMode = "apply", precision: Precision = "float32", key: str = "",
                     metadata: Mapping[str, str] | None = None) -> LoraNetwork:
    """Parse one LoRA-family state dict (A1111's rules, module docstring) against ``table`` (SD1.x by default).

    Raises :class:`LoraFormatError` (one line) for a file A1111 refuses or we do not support; never for
    ignored keys — a file whose keys all miss the model (diffusers/PEFT naming) parses to no modules.
    """
    table = table or sd1_table()
    groups, ignored = _group(state, table, name)
    builder = _Builder(precision)
    modules: dict[str, LoraModule] = {}
    has_dora = False
    for layer, (base, entry, parts) in groups.items():
        kind = module_type(parts)
        if kind is None:
            raise LoraFormatError(f"{name}: module {base} has keys no LoRA type accepts: {', '.join(sorted(parts))}")
        if kind in ("glora", "oft"):
            raise LoraFormatError(f"{name}: module {base} is a {kind.upper()} module, which is not supported")
        if kind == "lora" and entry.kind not in (LINEAR, CONV):
            raise LoraFormatError(f"{name}: module {base} puts LoRA factors on {entry.name}, which is not a Linear "
                                  "or Conv2d layer")
        if entry.kind not in PATCHED_KINDS:
            ignored.extend(f"{base}.{part}" for part in parts)  # A1111 never patches this module's forward
            continue
        has_dora = has_dora or "dora_scale" in parts
        dora_scale = parts.get("dora_scale") if dora == "apply" else None
        head: _Head = {"key": layer, "target": entry.name, "kind": entry.kind,
                       "dora_scale": None if dora_scale is None else dora_scale.detach().float()}
        try:
            modules[entry.name] = builder.build(kind, parts, head)
        except KeyError as exc:
            raise LoraFormatError(f"{name}: module {base} ({kind}) lacks its {exc.args[0]} key") from None
    warnings: tuple[str, ...] = ()
    if has_dora:
        warnings = (DORA_APPLIED_WARNING if dora == "apply" else DORA_IGNORED_WARNING,)
    return LoraNetwork(name=name, modules=modules, key=key, ignored_keys=tuple(ignored), warnings=warnings,
                       metadata=dict(metadata or {}), dora=dora, precision=precision)
