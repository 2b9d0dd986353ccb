"""A parsed LoRA-family file: its modules by our module name, what it ignored, and what to tell the user.

Why a separate, inert record: the parser decides (A1111's rules), the checker interface and the per-row
batch only read.  Identity matters: rows sharing a LoRA are grouped by object, and ``key`` (the content
hash the engine passes, else the name) is what conditioning caches use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from engine.lora.modules import LoraModule

__all__ = ["DORA_APPLIED_WARNING", "DORA_IGNORED_WARNING", "DoraMode", "LoraNetwork", "Precision"]

DoraMode = Literal["apply", "ignore"]
# "a1111": LoRA/LoCon factors in float32 (A1111 with --no-half), the other types in the file's dtype, as
# A1111 computes them; "float32": everything in float32 from the stored values (the engine's default).
Precision = Literal["a1111", "float32"]

DORA_APPLIED_WARNING = "applied DoRA magnitude; A1111 1.8 ignores it"
DORA_IGNORED_WARNING = "ignored DoRA magnitude (dora_scale), as A1111 1.8 does"


@dataclass(frozen=True, eq=False)
class LoraNetwork:
    """One LoRA / LyCORIS file ready to apply.

    ``modules`` maps our module names (``unet.…``, ``text_encoder.…``) to typed weight sets;
    ``ignored_keys`` are the keys A1111 ignores (no such module in the model); ``warnings`` are short
    user-facing notes (DoRA handling); ``metadata`` the safetensors header metadata.
    Compared by identity: two loads of one file are two networks.
    """

    name: str
    modules: Mapping[str, LoraModule]
    key: str = ""
    ignored_keys: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    dora: DoraMode = "apply"
    precision: Precision = "float32"

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)

    @property
    def alias(self) -> str:
        """A1111's alias: the kohya ``ss_output_name`` metadata, else the name."""
        return self.metadata.get("ss_output_name") or self.name

    def targets(self) -> set[str]:
        return set(self.modules)

    def part_modules(self, part: str) -> dict[str, LoraModule]:
        """The modules of one model part (``unet`` or ``text_encoder``), keyed by their path inside it."""
        prefix = part + "."
        return {name[len(prefix):]: mod for name, mod in self.modules.items() if name.startswith(prefix)}

    @property
    def nbytes(self) -> int:
        """Bytes its modules hold (the worker's cache is bounded in bytes)."""
        return sum(module.nbytes for module in self.modules.values())

    def to(self, device: torch.device | str) -> LoraNetwork:
        """The same network with its tensors on ``device`` (a new object: identity groups rows)."""
        return dataclasses.replace(self, modules={name: m.to(device) for name, m in self.modules.items()})

    @property
    def has_text_encoder(self) -> bool:
        return any(name.startswith("text_encoder.") for name in self.modules)

    @property
    def has_unet(self) -> bool:
        return any(name.startswith("unet.") for name in self.modules)
