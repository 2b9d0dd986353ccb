"""Module names: our diffusers/transformers paths, A1111's CompVis layer names, and LoRA key BASEs.

Why this module exists: LoRA files name modules the way their trainer saw them (kohya's diffusers-derived
``lora_unet_down_blocks_0_…``, CompVis ``lora_unet_input_blocks_1_1_…``, SDXL-era ``lora_te1_…``), A1111
resolves every name to its CompVis layer name with fixed rules (docs/a1111-lora.md §2), and we run
diffusers models.  Resolving through A1111's layer names keeps its exact behaviour — which names work and
which are silently ignored — instead of a second, subtly different rule set of our own.

Our module names are ``unet.`` + the ``UNet2DConditionModel`` path and ``text_encoder.`` + the
``CLIPTextModel`` path as transformers >= 5 names it (``text_encoder.text_model.…`` is accepted too).
Pure Python (no torch), so the intake side and the bot can use it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "CONV",
    "GROUP_NORM",
    "LAYER_NORM",
    "LINEAR",
    "OTHER",
    "PATCHED_KINDS",
    "ModuleEntry",
    "ModuleTable",
    "a1111_layer_name",
    "kohya_candidate",
    "normalize_name",
    "sd1_module_names",
    "sd1_table",
]

LINEAR, CONV, GROUP_NORM, LAYER_NORM, OTHER = "linear", "conv", "group_norm", "layer_norm", "other"
# The module kinds whose forward A1111 patches: an update on any other module is never applied.
PATCHED_KINDS = frozenset({LINEAR, CONV, GROUP_NORM, LAYER_NORM})

# ResnetBlock2D child -> CompVis ResBlock child, as A1111 renames the whole suffix (underscore form).
_RESNET_SUFFIX = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "norm1": "in_layers_0",
    "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}


def normalize_name(name: str) -> str:
    """``text_encoder.text_model.X`` (transformers 4) -> ``text_encoder.X`` (transformers 5); others unchanged."""
    prefix = "text_encoder.text_model."
    return "text_encoder." + name[len(prefix):] if name.startswith(prefix) else name


# ---- our name -> A1111 layer name ------------------------------------------------------------------------

def _under(rest: str | None) -> str:
    return "" if not rest else rest.replace(".", "_")


def _resnet_child(rest: str | None) -> str | None:
    if not rest:
        return ""
    child = _RESNET_SUFFIX.get(rest[1:])
    return None if child is None else "_" + child


_UNET_TO_A1111: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]], ...] = tuple(
    (re.compile(pattern), build) for pattern, build in (
        (r"conv_in", lambda m: "input_blocks_0_0"),
        (r"conv_norm_out", lambda m: "out_0"),
        (r"conv_out", lambda m: "out_2"),
        (r"time_embedding\.linear_([0-9]+)", lambda m: f"time_embed_{2 * int(m[1]) - 2}"),
        (r"down_blocks\.([0-9]+)\.attentions\.([0-9]+)(\..+)?",
         lambda m: f"input_blocks_{3 * int(m[1]) + int(m[2]) + 1}_1{_under(m[3])}"),
        (r"down_blocks\.([0-9]+)\.resnets\.([0-9]+)(\..+)?",
         lambda m: _join(f"input_blocks_{3 * int(m[1]) + int(m[2]) + 1}_0", _resnet_child(m[3]))),
        (r"down_blocks\.([0-9]+)\.downsamplers\.0\.conv", lambda m: f"input_blocks_{3 * int(m[1]) + 3}_0_op"),
        (r"mid_block\.attentions\.0(\..+)?", lambda m: f"middle_block_1{_under(m[1])}"),
        (r"mid_block\.resnets\.([0-9]+)(\..+)?", lambda m: _join(f"middle_block_{2 * int(m[1])}", _resnet_child(m[2]))),
        (r"up_blocks\.([0-9]+)\.attentions\.([0-9]+)(\..+)?",
         lambda m: f"output_blocks_{3 * int(m[1]) + int(m[2])}_1{_under(m[3])}"),
        (r"up_blocks\.([0-9]+)\.resnets\.([0-9]+)(\..+)?",
         lambda m: _join(f"output_blocks_{3 * int(m[1]) + int(m[2])}_0", _resnet_child(m[3]))),
        (r"up_blocks\.([0-9]+)\.upsamplers\.0\.conv",
         lambda m: f"output_blocks_{3 * int(m[1]) + 2}_{2 if int(m[1]) > 0 else 1}_conv"),
    )
)


def _join(head: str, tail: str | None) -> str | None:
    return None if tail is None else head + tail


def a1111_layer_name(name: str) -> str | None:
    """A1111's layer name for one of our module names, or None where CompVis has no such module.

    ``unet.down_blocks.0.resnets.0.conv1`` -> ``diffusion_model_input_blocks_1_0_in_layers_2``;
    ``text_encoder.encoder.layers.0.self_attn.q_proj`` -> ``transformer_text_model_encoder_layers_0_self_attn_q_proj``.
    The block arithmetic is SD's (2 layers per down block, 3 per up block), as in A1111's own key rules.
    """
    name = normalize_name(name)
    if name.startswith("text_encoder."):
        return "transformer_text_model_" + _under(name[len("text_encoder."):])
    if not name.startswith("unet."):
        return None
    path = name[len("unet."):]
    for pattern, build in _UNET_TO_A1111:
        m = pattern.fullmatch(path)
        if m:
            tail = build(m)
            return None if tail is None else "diffusion_model_" + tail
    return None


# ---- LoRA key BASE -> A1111 layer name (docs/a1111-lora.md §2, rules 1 and 3) ----------------------------

_KOHYA_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = tuple(
    (re.compile(pattern), build) for pattern, build in (
        (r"lora_unet_conv_in(.*)", lambda m: f"diffusion_model_input_blocks_0_0{m[1]}"),
        (r"lora_unet_conv_out(.*)", lambda m: f"diffusion_model_out_2{m[1]}"),
        (r"lora_unet_time_embedding_linear_([0-9]+)(.*)", lambda m: f"diffusion_model_time_embed_{2 * int(m[1]) - 2}{m[2]}"),
        (r"lora_unet_down_blocks_([0-9]+)_attentions_([0-9]+)_(.+)",
         lambda m: f"diffusion_model_input_blocks_{3 * int(m[1]) + int(m[2]) + 1}_1_{m[3]}"),
        (r"lora_unet_down_blocks_([0-9]+)_resnets_([0-9]+)_(.+)",
         lambda m: f"diffusion_model_input_blocks_{3 * int(m[1]) + int(m[2]) + 1}_0_{_RESNET_SUFFIX.get(m[3], m[3])}"),
        (r"lora_unet_mid_block_attentions_([0-9]+)_(.+)", lambda m: f"diffusion_model_middle_block_1_{m[2]}"),
        (r"lora_unet_mid_block_resnets_([0-9]+)_(.+)",
         lambda m: f"diffusion_model_middle_block_{2 * int(m[1])}_{_RESNET_SUFFIX.get(m[2], m[2])}"),
        (r"lora_unet_up_blocks_([0-9]+)_attentions_([0-9]+)_(.+)",
         lambda m: f"diffusion_model_output_blocks_{3 * int(m[1]) + int(m[2])}_1_{m[3]}"),
        (r"lora_unet_up_blocks_([0-9]+)_resnets_([0-9]+)_(.+)",
         lambda m: f"diffusion_model_output_blocks_{3 * int(m[1]) + int(m[2])}_0_{_RESNET_SUFFIX.get(m[3], m[3])}"),
        (r"lora_unet_down_blocks_([0-9]+)_downsamplers_0_conv",
         lambda m: f"diffusion_model_input_blocks_{3 * int(m[1]) + 3}_0_op"),
        (r"lora_unet_up_blocks_([0-9]+)_upsamplers_0_conv",
         lambda m: f"diffusion_model_output_blocks_{3 * int(m[1]) + 2}_{2 if int(m[1]) > 0 else 1}_conv"),
        (r"lora_te_text_model_encoder_layers_([0-9]+)_(.+)",
         lambda m: f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"),
    )
)


def kohya_candidate(base: str) -> list[str]:
    """The A1111 layer names a key BASE may resolve to, in A1111's order of trying.

    First the diffusers-style kohya rewrite (first rule matching at the start of BASE; BASE unchanged when
    none matches), then the CompVis fallbacks (``lora_unet`` -> ``diffusion_model``, else
    ``lora_te1_text_model`` -> ``transformer_text_model``).  A1111's second rule (``_q_proj`` stripped for
    OpenCLIP's MultiheadAttention) is left out: SD1 has no such module, so it never matches there.
    """
    first = base
    for pattern, build in _KOHYA_RULES:
        m = pattern.match(base)
        if m:
            first = build(m)
            break
    names = [first]
    if "lora_unet" in base:
        names.append(base.replace("lora_unet", "diffusion_model"))
    elif "lora_te1_text_model" in base:
        names.append(base.replace("lora_te1_text_model", "transformer_text_model"))
    return names


# ---- the table of a model's modules ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ModuleEntry:
    """One module of the model: our name and its kind (``linear``, ``conv``, ``group_norm``, ``layer_norm``,
    ``other`` for containers and embeddings, whose forward A1111 never patches)."""

    name: str
    kind: str


class ModuleTable:
    """A1111 layer name -> module of one model, the lookup A1111's key rules run against.

    Build it from the model's modules (``engine.lora.hooks.table_for_models``) or, without a model,
    use :func:`sd1_table` (SD1.x's layout).  Our names CompVis lacks (diffusers-only containers) are left out.
    """

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        table: dict[str, ModuleEntry] = {}
        for name, kind in entries:
            a1111 = a1111_layer_name(name)
            if a1111 is not None:
                table[a1111] = ModuleEntry(normalize_name(name), kind)
        self._table: Mapping[str, ModuleEntry] = table

    def __len__(self) -> int:
        return len(self._table)

    def get(self, a1111_name: str) -> ModuleEntry | None:
        return self._table.get(a1111_name)

    def resolve(self, base: str) -> tuple[str, ModuleEntry] | None:
        """(A1111 layer name, module) for a key BASE, or None when A1111 ignores the key."""
        for candidate in kohya_candidate(base):
            entry = self._table.get(candidate)
            if entry is not None:
                return candidate, entry
        return None


def _transformer2d(prefix: str) -> Iterator[tuple[str, str]]:
    block = f"{prefix}.transformer_blocks.0"
    yield prefix, OTHER
    yield f"{prefix}.norm", GROUP_NORM
    yield f"{prefix}.proj_in", CONV
    yield block, OTHER
    for attn in ("attn1", "attn2"):
        yield f"{block}.{attn}", OTHER
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            yield f"{block}.{attn}.{proj}", LINEAR
    for norm in ("norm1", "norm2", "norm3"):
        yield f"{block}.{norm}", LAYER_NORM
    yield f"{block}.ff", OTHER
    yield f"{block}.ff.net.0.proj", LINEAR
    yield f"{block}.ff.net.2", LINEAR
    yield f"{prefix}.proj_out", CONV


def _resnet(prefix: str, shortcut: bool) -> Iterator[tuple[str, str]]:
    yield prefix, OTHER
    for child, kind in (("norm1", GROUP_NORM), ("conv1", CONV), ("time_emb_proj", LINEAR), ("norm2", GROUP_NORM),
                        ("conv2", CONV)):
        yield f"{prefix}.{child}", kind
    if shortcut:
        yield f"{prefix}.conv_shortcut", CONV


def sd1_module_names(text_layers: int = 12) -> Iterator[tuple[str, str]]:
    """(our name, kind) of every module of an SD1.x UNet and CLIP text encoder that CompVis also has.

    SD1.x's layout: 4 down blocks of 2 resnets (cross-attention in the first 3), a mid block, 4 up blocks of
    3 resnets (cross-attention in the last 3), conv projections, one transformer layer per attention.
    """
    yield "unet.conv_in", CONV
    yield "unet.time_embedding.linear_1", LINEAR
    yield "unet.time_embedding.linear_2", LINEAR
    for i in range(4):
        for j in range(2):
            yield from _resnet(f"unet.down_blocks.{i}.resnets.{j}", shortcut=j == 0 and i in (1, 2))
            if i < 3:
                yield from _transformer2d(f"unet.down_blocks.{i}.attentions.{j}")
        if i < 3:
            yield f"unet.down_blocks.{i}.downsamplers.0.conv", CONV
    yield from _resnet("unet.mid_block.resnets.0", shortcut=False)
    yield from _transformer2d("unet.mid_block.attentions.0")
    yield from _resnet("unet.mid_block.resnets.1", shortcut=False)
    for i in range(4):
        for j in range(3):
            yield from _resnet(f"unet.up_blocks.{i}.resnets.{j}", shortcut=True)
            if i > 0:
                yield from _transformer2d(f"unet.up_blocks.{i}.attentions.{j}")
        if i < 3:
            yield f"unet.up_blocks.{i}.upsamplers.0.conv", CONV
    yield "unet.conv_norm_out", GROUP_NORM
    yield "unet.conv_out", CONV
    yield "text_encoder.embeddings", OTHER
    yield "text_encoder.embeddings.token_embedding", OTHER
    yield "text_encoder.embeddings.position_embedding", OTHER
    for n in range(text_layers):
        layer = f"text_encoder.encoder.layers.{n}"
        yield layer, OTHER
        yield f"{layer}.self_attn", OTHER
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield f"{layer}.self_attn.{proj}", LINEAR
        yield f"{layer}.layer_norm1", LAYER_NORM
        yield f"{layer}.mlp", OTHER
        yield f"{layer}.mlp.fc1", LINEAR
        yield f"{layer}.mlp.fc2", LINEAR
        yield f"{layer}.layer_norm2", LAYER_NORM
    yield "text_encoder.final_layer_norm", LAYER_NORM


@functools.cache
def sd1_table(text_layers: int = 12) -> ModuleTable:
    """The module table of an SD1.x model (CLIP ViT-L/14 has 12 text layers), for resolving keys without a model."""
    return ModuleTable(sd1_module_names(text_layers))
