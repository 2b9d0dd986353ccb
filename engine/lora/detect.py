""""What is this file": a LoRA file's kind and base model from its tensor names and shapes alone.

Why: intake should refuse an SDXL LoRA offered for an SD1.5 model, or a diffusers/PEFT file A1111 would
silently ignore, with that reason — before loading any tensor.  A safetensors header holds every name and
shape, so :func:`read_safetensors_shapes` reads only the header (pure Python, no torch).

Evidence used: the cross-attention context width (input width of ``attn2`` ``to_k``/``to_v``: 768 SD1.x,
1024 SD2.x, 2048 SDXL), the text-encoder width (768 CLIP-L, 1024 OpenCLIP-H), SDXL's second text encoder
(``lora_te2_``) and its deeper transformer stacks (``transformer_blocks_1`` and up); kohya's
``ss_base_model_version`` / ``ss_v2`` metadata only when the shapes say nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["FAMILY_LABELS", "LoraFileInfo", "compatibility_problem", "describe_shapes", "read_safetensors_shapes"]

FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_CONTEXT_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TEXT_FAMILY = {768: "sd1", 1024: "sd2"}
_MAX_HEADER = 64 * 1024 * 1024
_TEXT_ATTENTION = re.compile(r"(te1?|text_model|text_encoder).*self_attn_[qkv]_proj$")

_PART_TYPES = (
    ("lora_down.weight", "lora"), ("lora_mid.weight", "tucker"), ("hada_w1_a", "loha"), ("lokr_w1", "lokr"),
    ("lokr_w1_a", "lokr"), ("diff", "full"), ("w_norm", "norm"), ("on_input", "ia3"), ("dora_scale", "dora"),
    ("a1.weight", "glora"), ("oft_blocks", "oft"), ("oft_diag", "oft"), ("lora_A.weight", "lora"),
)


@dataclass(frozen=True, slots=True)
class LoraFileInfo:
    """What a LoRA file looks like.  ``naming``: key styles found (``kohya``, ``compvis``, ``peft``,
    ``diffusers``, ``other``); ``types``: module types (``lora``, ``locon``, ``tucker``, ``loha``, ``lokr``,
    ``ia3``, ``full``, ``norm``, ``dora``, ``glora``, ``oft``); ``family``: ``sd1`` / ``sd2`` / ``sdxl`` or None;
    ``context_width`` / ``text_width`` as read from the shapes; ``evidence``: how the family was decided."""

    naming: frozenset[str]
    types: frozenset[str]
    family: str | None
    context_width: int | None
    text_width: int | None
    has_unet: bool
    has_text_encoder: bool
    evidence: tuple[str, ...]

    @property
    def label(self) -> str:
        """e.g. ``LoRA (locon, dora) for SD 1.x``."""
        kinds = sorted(self.types - {"lora"})
        head = "LyCORIS" if self.types & {"loha", "lokr", "ia3", "full", "norm", "glora", "oft"} else "LoRA"
        tail = f" ({', '.join(kinds)})" if kinds else ""
        return f"{head}{tail} for {FAMILY_LABELS.get(self.family or '', 'an unknown model')}"


def read_safetensors_shapes(path: str | os.PathLike[str]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(name -> shape, metadata) from a safetensors header, without reading any tensor data."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError("not a safetensors file (shorter than its header length)")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise ValueError(f"not a safetensors file (header of {size} bytes)")
        header = json.loads(handle.read(size))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    shapes = {str(k): tuple(int(d) for d in v["shape"]) for k, v in header.items()}
    return shapes, {str(k): str(v) for k, v in metadata.items()}


def _naming(key: str) -> str:
    if ".lora_A." in key or ".lora_B." in key or key.startswith(("base_model.model.", "unet.", "text_encoder.")):
        return "peft"
    if "_lora.down." in key or "_lora.up." in key or ".processor." in key:
        return "diffusers"
    if re.match(r"lora_unet_(input_blocks|middle_block|output_blocks|out_)", key) or key.startswith("lora_te1_"):
        return "compvis"
    if key.startswith(("lora_unet_", "lora_te_", "lora_te2_")):
        return "kohya"
    return "other"


def _input_width(parts: Mapping[str, Sequence[int]]) -> int | None:
    """The input width of a Linear module from one module's PART shapes, for the types where shapes tell."""
    for part in ("lora_down.weight", "lora_A.weight", "lora.down.weight", "hada_w1_b", "diff"):
        shape = parts.get(part)
        if shape is not None and len(shape) == 2:
            return int(shape[1])
    w1, w2 = parts.get("lokr_w1") or parts.get("lokr_w1_b"), parts.get("lokr_w2") or parts.get("lokr_w2_b")
    if w1 is not None and w2 is not None and len(w1) == 2 and len(w2) == 2:
        return int(w1[1]) * int(w2[1])
    return None


def _modules(shapes: Mapping[str, Sequence[int]]) -> dict[str, dict[str, Sequence[int]]]:
    """PART shapes per module, the module named by its key with PEFT/diffusers suffixes stripped, ``.`` -> ``_``."""
    modules: dict[str, dict[str, Sequence[int]]] = {}
    for key, shape in shapes.items():
        m = re.match(r"(.+?)\.(lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight)$", key)
        if m:
            base, part = m[1], m[2]
        else:
            base, _, part = key.partition(".")
        modules.setdefault(base.replace(".", "_"), {})[part] = shape
    return modules


def _types(modules: Mapping[str, Mapping[str, Sequence[int]]]) -> set[str]:
    found = set()
    for parts in modules.values():
        for part, kind in _PART_TYPES:
            if part in parts:
                found.add(kind)
        if "lora_mid.weight" in parts:
            found.add("locon")
        down = parts.get("lora_down.weight")
        if down is not None and len(down) == 4 and math.prod(down[2:]) > 1:
            found.add("locon")
    return found


def _widths(modules: Mapping[str, Mapping[str, Sequence[int]]]) -> tuple[int | None, int | None]:
    context = text = None
    for base, parts in modules.items():
        width = _input_width(parts)
        if width is None:
            continue
        if re.search(r"attn2_to_[kv]$", base) and context is None:
            context = width
        elif text is None and "te2" not in base and _TEXT_ATTENTION.search(base):
            text = width
    return context, text


def describe_shapes(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None) -> LoraFileInfo:
    """Describe a LoRA file from ``name -> shape`` (and optionally its safetensors metadata)."""
    modules = _modules(shapes)
    naming = frozenset(_naming(key) for key in shapes)
    context, text = _widths(modules)
    evidence: list[str] = []
    family = None
    if any(key.startswith("lora_te2_") or "text_encoder_2" in key for key in shapes):
        family = "sdxl"
        evidence.append("has a second text encoder (lora_te2_)")
    if context is not None:
        evidence.append(f"cross-attention context width {context}")
        family = family or _CONTEXT_FAMILY.get(context)
    if text is not None:
        evidence.append(f"text-encoder width {text}")
        family = family or _TEXT_FAMILY.get(text)
    if family is None and any(re.search(r"transformer_blocks[._][1-9][0-9]*[._]", key) for key in shapes):
        family = "sdxl"
        evidence.append("has transformer stacks deeper than one block")
    if family is None and metadata:
        version = str(metadata.get("ss_base_model_version", ""))
        if version.startswith("sdxl"):
            family = "sdxl"
        elif version.startswith("sd_v2") or str(metadata.get("ss_v2", "")) == "True":
            family = "sd2"
        elif version.startswith("sd_v1"):
            family = "sd1"
        if family:
            evidence.append(f"metadata ss_base_model_version={version or '?'}")
    has_unet = any(k.startswith(("lora_unet_", "unet.")) for k in shapes)
    has_te = any(k.startswith(("lora_te", "text_encoder")) for k in shapes)
    return LoraFileInfo(naming=naming, types=frozenset(_types(modules)), family=family, context_width=context,
                        text_width=text, has_unet=has_unet, has_text_encoder=has_te, evidence=tuple(evidence))


def compatibility_problem(info: LoraFileInfo, *, context_width: int, text_width: int | None = None) -> str | None:
    """Why this file cannot be used with a model of these widths (one line), or None.

    ``context_width`` is the UNet's ``cross_attention_dim`` (768 for SD1.x and the tiny model),
    ``text_width`` the text encoder's hidden size.
    """
    if info.naming and info.naming <= {"peft", "diffusers"}:
        return "uses diffusers/PEFT key names, which A1111 does not read (it would change nothing)"
    if info.types & {"glora", "oft"}:
        return f"holds {'/'.join(sorted(t.upper() for t in info.types & {'glora', 'oft'}))} modules, which are not supported"
    made_for = FAMILY_LABELS.get(_CONTEXT_FAMILY.get(info.context_width or 0, ""), "another model")
    if info.family == "sdxl" and _CONTEXT_FAMILY.get(context_width) != "sdxl":
        return f"is an SDXL LoRA ({'; '.join(info.evidence)}); this model's cross-attention width is {context_width}"
    if info.context_width is not None and info.context_width != context_width:
        return (f"is made for {made_for} (cross-attention width {info.context_width}); this model's is {context_width}")
    if info.text_width is not None and text_width is not None and info.text_width != text_width:
        text_family = FAMILY_LABELS.get(_TEXT_FAMILY.get(info.text_width, ""), "another model")
        return f"is made for {text_family} (text-encoder width {info.text_width}); this model's is {text_width}"
    return None
