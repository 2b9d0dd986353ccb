"""Test files in A1111's single-file layout: tiny random checkpoints that load, and headers that only get detected.

Why written here and not downloaded: real checkpoints are gigabytes.  :func:`write_sd1` / :func:`write_sd2` build
small diffusers models (random weights, fixed seed), rename their tensors to the original Stable Diffusion (ldm)
names A1111 saves — our own inverse of the layout, checked by the round trip in the tests: what the loader reads
back equals what was written — and add the extras real files carry (``position_ids``, DDPM buffers, an EMA copy,
SD 2.x's unused last OpenCLIP block).  :func:`write_tensors` writes any names and shapes as zeros with a pure-Python
safetensors writer, for detection tests (SDXL, LoRA, inpainting headers...).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

_DTYPE_BYTES = {"F16": 2, "F32": 4, "I64": 8, "BF16": 2}


def write_tensors(path: Path, tensors: Mapping[str, tuple[int, ...]], dtype: str = "F16",
                  metadata: Mapping[str, str] | None = None) -> Path:
    """A valid safetensors file holding ``tensors`` (name -> shape) as zeros."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, shape in tensors.items():
        size = _DTYPE_BYTES[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


# ------------------------------------------------------------------------------------------ diffusers -> ldm names

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    head, tail = rest.split(".", 1)
    return f"{_RESNET[head]}.{tail}"


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers UNet's state dict under A1111's ``model.diffusion_model.`` names."""
    per_level = config["layers_per_block"] + 1
    up_attention = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
             "mid_block.resnets.1.": "middle_block.2."}
    out = {}
    for key, value in state.items():
        p = key.split(".")
        if any(key.startswith(k) for k in fixed):
            src = next(k for k in fixed if key.startswith(k))
            rest = key[len(src):]
            name = fixed[src] + (_resnet(rest) if ".resnets." in src else rest)
        elif p[0] == "down_blocks":
            level, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            if kind == "downsamplers":
                name = f"input_blocks.{(level + 1) * per_level}.0.op.{rest.removeprefix('conv.')}"
            else:
                block = 1 + level * per_level + j
                name = f"input_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}"
        elif p[0] == "up_blocks":
            level, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            if kind == "upsamplers":
                name = f"output_blocks.{level * per_level + per_level - 1}.{2 if up_attention[level] else 1}.{rest}"
            else:
                block = level * per_level + j
                name = f"output_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{block}.1.{rest}"
        else:
            raise KeyError(key)
        out[f"model.diffusion_model.{name}"] = value
    return out


def vae_to_ldm(state: Mapping[str, torch.Tensor], levels: int, prefix: str = "first_stage_model."
               ) -> dict[str, torch.Tensor]:
    """A diffusers VAE's state dict under A1111's names (attention as 1x1 convolutions, as ldm saves them)."""
    out = {}
    for key, value in state.items():
        p = key.split(".")
        name = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        if "mid_block" in key:
            side, kind, j, rest = p[0], p[2], int(p[3]), ".".join(p[4:])
            if kind == "resnets":
                name = f"{side}.mid.block_{j + 1}.{rest}".replace("conv_shortcut", "nin_shortcut")
            else:
                module, leaf = rest.rsplit(".", 1)
                name = f"{side}.mid.attn_1.{_VAE_ATTENTION[module]}.{leaf}"
                if leaf == "weight" and value.ndim == 2:
                    value = value[:, :, None, None]
        elif p[1] in ("down_blocks", "up_blocks"):
            side, level, kind, j, rest = p[0], int(p[2]), p[3], p[4], ".".join(p[5:])
            ldm_level = level if side == "encoder" else levels - 1 - level
            part = "down" if side == "encoder" else "up"
            if kind in ("downsamplers", "upsamplers"):
                name = f"{side}.{part}.{ldm_level}.{part}sample.{rest}"
            else:
                name = f"{side}.{part}.{ldm_level}.block.{j}.{rest}".replace("conv_shortcut", "nin_shortcut")
        out[prefix + name] = value
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor], *, old_layout: bool = False) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model under A1111's SD 1.x names (``old_layout``: without ``text_model.``)."""
    prefix = "cond_stage_model.transformer." + ("" if old_layout else "text_model.")
    out = {prefix + k.removeprefix("text_model."): v for k, v in state.items()}
    positions = state["embeddings.position_embedding.weight"].shape[0]
    out[prefix + "embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def openclip_to_ldm(state: Mapping[str, torch.Tensor], layers: int, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model under OpenCLIP's SD 2.x names, plus the unused last block, a projection and
    ``logit_scale`` as real files have them."""
    p = "cond_stage_model.model."
    width = state["embeddings.token_embedding.weight"].shape[1]
    out = {f"{p}token_embedding.weight": state["embeddings.token_embedding.weight"],
           f"{p}positional_embedding": state["embeddings.position_embedding.weight"],
           f"{p}ln_final.weight": state["final_layer_norm.weight"], f"{p}ln_final.bias": state["final_layer_norm.bias"],
           f"{p}text_projection": torch.randn(width, width, generator=generator),
           f"{p}logit_scale": torch.tensor(4.6)}
    for i in range(layers + 1):  # the last block is in the file but SD 2.x never uses it
        src = f"encoder.layers.{min(i, layers - 1)}."
        dst = f"{p}transformer.resblocks.{i}."
        noise = 0.0 if i < layers else 1.0  # the extra block differs from every real one
        for kind in ("weight", "bias"):
            qkv = [state[f"{src}self_attn.{x}_proj.{kind}"] for x in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv) + noise
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{theirs}.{kind}"] = state[f"{src}{ours}.{kind}"] + noise
    return out


# --------------------------------------------------------------------------------------------- tiny checkpoints

@dataclass
class TinyModels:
    """The diffusers models a test file was made from (to compare what the loader reads back)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel


TINY_VAE = {"block_out_channels": (32, 32, 32, 32), "layers_per_block": 1, "latent_channels": 4,
            "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
            "norm_num_groups": 32, "scaling_factor": 0.18215}
TINY_UNET = {"block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 32,
             "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}
TINY_UNET_SD2 = {**TINY_UNET, "block_out_channels": (64, 128), "use_linear_projection": True, "attention_head_dim": (1, 2)}


def tiny_models(family: str, seed: int = 0, *, in_channels: int = 4) -> TinyModels:
    """Random small models of ``family``'s kind (SD 1.x: 32-wide CLIP; SD 2.x: 64-wide, GELU, linear projections)."""
    torch.manual_seed(seed)
    width = 32 if family == "sd1" else 64
    unet_kwargs = TINY_UNET if family == "sd1" else TINY_UNET_SD2
    unet = UNet2DConditionModel(**unet_kwargs, in_channels=in_channels, cross_attention_dim=width,
                                **({"attention_head_dim": 8} if family == "sd1" else {}))
    vae = AutoencoderKL(**TINY_VAE)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=77,
                                        hidden_act="quick_gelu" if family == "sd1" else "gelu"))
    for module in (unet, vae, text):
        module.eval()
    return TinyModels(unet, vae, text)


def checkpoint_state(models: TinyModels, family: str, *, old_clip_layout: bool = False, with_vae: bool = True,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """The models as one A1111 single-file state dict, with the extras real files carry."""
    generator = torch.Generator().manual_seed(seed)
    state = unet_to_ldm(models.unet.state_dict(), models.unet.config)
    if with_vae:
        state |= vae_to_ldm(models.vae.state_dict(), len(models.vae.config.block_out_channels))
    text = models.text_encoder.state_dict()
    if family == "sd1":
        state |= clip_to_ldm(text, old_layout=old_clip_layout)
    else:
        state |= openclip_to_ldm(text, models.text_encoder.config.num_hidden_layers, generator)
    state["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)  # DDPM buffers A1111 saves; not model weights
    first = next(iter(k for k in state if k.startswith("model.diffusion_model.")))
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema." + first.removeprefix("model.").replace(".", "")] = torch.zeros_like(state[first])
    return state


def save_checkpoint(path: Path, state: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float16) -> Path:
    """Write ``state`` as a safetensors file, floating tensors in ``dtype`` (A1111's pruned files are fp16)."""
    save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(path))
    return path


def write_sd1(path: Path, seed: int = 0, **options: Any) -> TinyModels:
    models = tiny_models("sd1", seed)
    save_checkpoint(path, checkpoint_state(models, "sd1", seed=seed, **options))
    return models


def write_sd2(path: Path, seed: int = 0, *, output_bias: float | None = None, **options: Any) -> TinyModels:
    """A tiny SD 2.x file; ``output_bias`` makes the UNet output that constant (zero weights into ``conv_out``),
    which decides A1111's v-prediction test: below -0.5 reads as v-prediction, above as epsilon."""
    models = tiny_models("sd2", seed)
    if output_bias is not None:
        with torch.no_grad():
            models.unet.conv_out.weight.zero_()
            models.unet.conv_out.bias.fill_(output_bias)
    save_checkpoint(path, checkpoint_state(models, "sd2", seed=seed, **options))
    return models


def write_vae(path: Path, seed: int = 5, *, diffusers_layout: bool = False) -> AutoencoderKL:
    """A separate VAE file as A1111's ``models/VAE`` holds them (ldm names without prefix), or diffusers' layout."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE).eval()
    state = vae.state_dict() if diffusers_layout else vae_to_ldm(vae.state_dict(), 4, prefix="")
    save_checkpoint(path, state, torch.float32)
    return vae
