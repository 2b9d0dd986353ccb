"""Writes ``engine/assets/checkpoints/``: the diffusers configs of the SD 1.x and SD 2.x families.

Why a script and not copied files: the configs are ours, written from the architectures' published
hyper-parameters (CompVis' ``v1-inference.yaml``, Stability's ``v2-inference.yaml`` / ``v2-inference-v.yaml``, the
CLIP ViT-L/14 and OpenCLIP ViT-H/14 text towers) through diffusers' and transformers' own config classes, so every
field a loader reads is spelled the way the installed library expects.  ``test_shipped_configs.py`` runs
:func:`write_configs` into a temporary folder and compares, so the shipped files never drift from this table.

Regenerate (after changing the table or upgrading diffusers):
``python -m tests.engine.checkpoints.make_configs`` from the repository root.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "engine" / "assets" / "checkpoints"

#: ldm's noise schedule for every SD 1.x / 2.x model: linear_start 0.00085, linear_end 0.012, 1000 steps.
_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}

#: The UNet: model_channels 320, channel_mult 1,2,4,4, two res blocks per level, attention at the first three
#: levels, one transformer layer.  SD 1.x: 8 heads, a conv proj_in, context 768.  SD 2.x: 64 channels per head,
#: linear proj_in/out, context 1024.  sample_size is the native latent size (512 px / 8, 768 px / 8).
_UNET_COMMON: dict[str, Any] = {
    "in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "transformer_layers_per_block": 1, "upcast_attention": False,
}
_UNET = {
    "sd1": {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False},
    "sd2": {"sample_size": 64, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True},
}

#: The KL-f8 autoencoder: ch 128, ch_mult 1,2,4,4, two res blocks, z_channels 4, scale_factor 0.18215.
_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215,
}

#: Text towers.  SD 1.x: CLIP ViT-L/14 (12 layers, 768 wide, quick_gelu).  SD 2.x: OpenCLIP ViT-H/14 (24 layers,
#: 1024 wide, gelu), of which SD 2.x uses the output of the 23rd ("penultimate"), so the model has 23 layers.
_TEXT_COMMON: dict[str, Any] = {"vocab_size": 49408, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
                                "bos_token_id": 49406, "eos_token_id": 49407}
_TEXT = {
    "sd1": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "hidden_act": "quick_gelu", "projection_dim": 768, "pad_token_id": 49407},
    "sd2": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
            "hidden_act": "gelu", "projection_dim": 1024, "pad_token_id": 0},
}

#: SD 2.x's tokenizer is SD 1.x's BPE vocabulary padding with token 0 ("!"); only these two files differ.
_SD2_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "!"}
_SD2_TOKENIZER_CONFIG = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                         "add_prefix_space": False, "errors": "replace", **_SD2_TOKENS}

#: folder -> (family, prediction type, native image size)
FOLDERS = {"sd1": ("sd1", "epsilon", 512), "sd2-512-base": ("sd2", "epsilon", 512),
           "sd2-768-v": ("sd2", "v_prediction", 768)}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_folder(folder: Path, family: str, prediction: str, image_size: int) -> None:
    """One family folder: unet/, vae/, text_encoder/, scheduler/ (+ tokenizer/ for SD 2.x)."""
    unet_kwargs = {**_UNET_COMMON, **_UNET[family], "sample_size": image_size // 8}
    with torch.device("meta"):  # only the config is wanted; meta tensors make building the 860M-parameter UNet free
        UNet2DConditionModel(**unet_kwargs).save_config(folder / "unet")
        AutoencoderKL(**_VAE, sample_size=image_size).save_config(folder / "vae")
    CLIPTextConfig(**_TEXT_COMMON, **_TEXT[family]).save_pretrained(folder / "text_encoder")
    PNDMScheduler(**_SCHEDULE, prediction_type=prediction).save_config(folder / "scheduler")
    if family == "sd2":
        _write_json(folder / "tokenizer" / "special_tokens_map.json", _SD2_TOKENS)
        _write_json(folder / "tokenizer" / "tokenizer_config.json", _SD2_TOKENIZER_CONFIG)


def write_configs(target: Path = ASSETS) -> None:
    for name, (family, prediction, size) in FOLDERS.items():
        write_folder(target / name, family, prediction, size)


if __name__ == "__main__":
    write_configs(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSETS)
    print(f"wrote {', '.join(FOLDERS)} under {ASSETS if len(sys.argv) == 1 else sys.argv[1]}")
