"""A checkpoint's diffusers configs, derived from its tensor shapes and its family's shipped configs.

Why derive: the shipped configs (:mod:`engine.checkpoints.assets`) describe the real SD 1.x / 2.x architectures,
and every released fine-tune of those has exactly their shapes — for such a file the derived configs *equal* the
shipped ones and the loader passes the shipped folder to diffusers.  Reading the structure from the shapes (levels,
channels, res blocks per level, attention, context width, text-tower size) also lets a smaller model in the same
layout load (the test suite's tiny A1111-layout files), and it checks the file before any weight is read: a
missing block or a width that does not fit is an :class:`~engine.checkpoints.layout.ArchitectureError` here,
not a traceback from inside diffusers.

What shapes cannot tell comes from the family: attention heads (SD 1.x: 8 per block; SD 2.x: 64 channels per
head; text towers: 64 channels per head), GroupNorm groups (32), the VAE's scaling factor (0.18215), activations.
SD 2.x's text tower keeps all 24 OpenCLIP blocks in the file but uses the output of the 23rd, so the derived text
encoder has one layer fewer than the file (the loader leaves the last block's tensors out).  Torch-free.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.checkpoints.assets import template
from engine.checkpoints.layout import CLIP_L, OPEN_CLIP, UNET, ArchitectureError, Shapes, indices, shape_of, with_prefix

__all__ = ["DerivedConfigs", "clip_l_prefix", "derive_configs", "text_encoder_config", "unet_config", "vae_config",
           "vae_prefix"]

_HEAD_WIDTH = 64


@dataclass(frozen=True, slots=True)
class DerivedConfigs:
    """The diffusers configs of one checkpoint's parts; ``vae`` is None when the file holds no VAE."""

    unet: dict[str, Any]
    vae: dict[str, Any] | None
    text_encoder: dict[str, Any]

    def equals_shipped(self, folder: Path) -> bool:
        """Whether every derived config is the shipped one of ``folder`` (then the shipped folder can be used)."""
        parts = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        return all(value is None or value == template(folder, name) for name, value in parts.items())


def _heads(width: int) -> int:
    return width // _HEAD_WIDTH if width >= _HEAD_WIDTH and width % _HEAD_WIDTH == 0 else 1


def _transformer_depth(shapes: Shapes, block: str) -> int:
    """Transformer layers of the attention module at ``block`` (``input_blocks.4.1.``); 0 when there is none."""
    if f"{block}proj_in.weight" not in shapes:
        return 0
    return len(indices(shapes, f"{block}transformer_blocks."))


def _down_levels(shapes: Shapes) -> list[list[tuple[int, int]]]:
    """The UNet's down path as levels of ``(res block channels, transformer depth)``, split at the downsamplers."""
    levels: list[list[tuple[int, int]]] = [[]]
    for i in indices(shapes, f"{UNET}input_blocks.")[1:]:
        block = f"{UNET}input_blocks.{i}."
        if f"{block}0.op.weight" in shapes:
            levels.append([])
            continue
        channels = shape_of(shapes, f"{block}0.out_layers.3.weight", 4)[0]
        levels[-1].append((channels, _transformer_depth(shapes, f"{block}1.")))
    if not all(levels):
        raise ArchitectureError("its UNet has a level without res blocks")
    return levels


def _first(shapes: Shapes, suffix: str) -> tuple[int, ...]:
    """The shape of the first UNet tensor (in name order) whose name ends with ``suffix``."""
    for name in sorted(shapes):
        if name.startswith(UNET) and name.endswith(suffix):
            return shapes[name]
    raise ArchitectureError(f"its UNet has no tensor ending in `{suffix}`")


def _up_block_types(shapes: Shapes, levels: int, layers: int) -> list[str]:
    count = len(indices(shapes, f"{UNET}output_blocks."))
    if count != levels * (layers + 1):
        raise ArchitectureError(f"its UNet has {count} output blocks where {levels * (layers + 1)} belong")
    types = []
    for level in range(levels):
        blocks = range(level * (layers + 1), (level + 1) * (layers + 1))
        attention = [_transformer_depth(shapes, f"{UNET}output_blocks.{b}.1.") > 0 for b in blocks]
        if any(attention) != all(attention):
            raise ArchitectureError("its UNet mixes blocks with and without attention in one up level")
        types.append("CrossAttnUpBlock2D" if attention[0] else "UpBlock2D")
    return types


def unet_config(shapes: Shapes, family: str, base: dict[str, Any]) -> dict[str, Any]:
    """The UNet's diffusers config: ``base`` (the family's shipped one) with what the shapes say put in."""
    conv_in = shape_of(shapes, f"{UNET}input_blocks.0.0.weight", 4)
    levels = _down_levels(shapes)
    layers = len(levels[0])
    if any(len(level) != layers for level in levels) or any(len(set(level)) != 1 for level in levels):
        raise ArchitectureError("its UNet's levels differ in block count or width")
    channels = [level[0][0] for level in levels]
    depths = [level[0][1] for level in levels]
    down = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths]
    up = _up_block_types(shapes, len(levels), layers)
    if up != [t.replace("Down", "Up") for t in reversed(down)]:
        raise ArchitectureError("its UNet's up path does not mirror its down path")
    if _transformer_depth(shapes, f"{UNET}middle_block.1.") > 0:
        mid: str | None = "UNetMidBlock2DCrossAttn"
    elif with_prefix(shapes, f"{UNET}middle_block."):
        raise ArchitectureError("its UNet's middle block has no attention")
    else:
        mid = None
    attention_depths = {d for d in depths if d} or {1}
    if len(attention_depths) != 1:
        raise ArchitectureError("its UNet's attention levels differ in depth")
    heads: int | list[int] = base["attention_head_dim"] if family == "sd1" else [_heads(c) for c in channels]
    return {**base, "in_channels": conv_in[1], "out_channels": shape_of(shapes, f"{UNET}out.2.weight", 4)[0],
            "block_out_channels": channels, "layers_per_block": layers, "down_block_types": down,
            "up_block_types": up, "mid_block_type": mid, "cross_attention_dim": _first(shapes, "attn2.to_k.weight")[1],
            "use_linear_projection": len(_first(shapes, ".proj_in.weight")) == 2, "attention_head_dim": heads,
            "transformer_layers_per_block": attention_depths.pop()}


def vae_prefix(shapes: Shapes) -> str | None:
    """Where a VAE's tensors start: ``first_stage_model.`` inside a checkpoint, ``""`` in a VAE file, None if absent."""
    for prefix in ("first_stage_model.", ""):
        if f"{prefix}encoder.conv_in.weight" in shapes and f"{prefix}decoder.conv_in.weight" in shapes:
            return prefix
    return None


def vae_config(shapes: Shapes, prefix: str, base: dict[str, Any]) -> dict[str, Any]:
    """The VAE's config from its A1111 (ldm) names, or from diffusers' names in a diffusers-layout VAE file."""
    diffusers_names = with_prefix(shapes, f"{prefix}encoder.down_blocks.")
    down, blocks = ("down_blocks.", "resnets.") if diffusers_names else ("down.", "block.")
    levels = indices(shapes, f"{prefix}encoder.{down}")
    if not levels:
        raise ArchitectureError("its VAE encoder has no levels")
    channels = [shape_of(shapes, f"{prefix}encoder.{down}{i}.{blocks}0.conv2.weight", 4)[0] for i in levels]
    latent = shape_of(shapes, f"{prefix}encoder.conv_out.weight", 4)[0] // 2  # mean and log-variance
    return {**base, "in_channels": shape_of(shapes, f"{prefix}encoder.conv_in.weight", 4)[1],
            "out_channels": shape_of(shapes, f"{prefix}decoder.conv_out.weight", 4)[0], "block_out_channels": channels,
            "layers_per_block": len(indices(shapes, f"{prefix}encoder.{down}0.{blocks}")), "latent_channels": latent,
            "down_block_types": ["DownEncoderBlock2D"] * len(channels),
            "up_block_types": ["UpDecoderBlock2D"] * len(channels)}


def clip_l_prefix(shapes: Collection[str]) -> str:
    """SD 1.x text-tower prefix: ``cond_stage_model.transformer.text_model.``, or without ``text_model.`` (old
    transformers saves, which A1111 renames on load)."""
    return f"{CLIP_L}text_model." if with_prefix(shapes, f"{CLIP_L}text_model.") else CLIP_L


def text_encoder_config(shapes: Shapes, family: str, base: dict[str, Any]) -> dict[str, Any]:
    """The text encoder's CLIPTextConfig values: SD 1.x from Hugging Face CLIP names, SD 2.x from OpenCLIP names."""
    if family == "sd1":
        p = clip_l_prefix(shapes)
        vocab, width = shape_of(shapes, f"{p}embeddings.token_embedding.weight", 2)
        positions = shape_of(shapes, f"{p}embeddings.position_embedding.weight", 2)[0]
        layers = len(indices(shapes, f"{p}encoder.layers."))
        inner = shape_of(shapes, f"{p}encoder.layers.0.mlp.fc1.weight", 2)[0]
        projection = base["projection_dim"]
    else:
        vocab, width = shape_of(shapes, f"{OPEN_CLIP}token_embedding.weight", 2)
        positions = shape_of(shapes, f"{OPEN_CLIP}positional_embedding", 2)[0]
        layers = len(indices(shapes, f"{OPEN_CLIP}transformer.resblocks.")) - 1  # the last block is not used
        inner = shape_of(shapes, f"{OPEN_CLIP}transformer.resblocks.0.mlp.c_fc.weight", 2)[0]
        projection = shapes.get(f"{OPEN_CLIP}text_projection", (0, base["projection_dim"]))[-1]
    if layers < 1:
        raise ArchitectureError("its text encoder has no layers")
    return {**base, "vocab_size": vocab, "hidden_size": width, "max_position_embeddings": positions,
            "num_hidden_layers": layers, "intermediate_size": inner, "num_attention_heads": _heads(width),
            "projection_dim": projection}


def derive_configs(shapes: Shapes, family: str, folder: Path) -> DerivedConfigs:
    """Every part's config for a ``family`` checkpoint with these ``shapes``, based on the shipped ``folder``."""
    prefix = vae_prefix(shapes)
    vae = None if prefix is None else vae_config(shapes, prefix, template(folder, "vae"))
    unet = unet_config(shapes, family, template(folder, "unet"))
    text = text_encoder_config(shapes, family, template(folder, "text_encoder"))
    if unet["cross_attention_dim"] != text["hidden_size"]:
        raise ArchitectureError(f"its UNet expects a {unet['cross_attention_dim']}-wide text context while its text "
                                f"encoder is {text['hidden_size']} wide")
    return DerivedConfigs(unet, vae, text)
