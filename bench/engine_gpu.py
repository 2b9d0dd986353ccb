"""Engine throughput on a CUDA GPU with the SD1.5 architecture (random weights, nothing downloaded).

Builds an SD1.5-shaped diffusers folder in a temporary directory (UNet/VAE/CLIP-L text encoder configs
written here, random weights, the tiny model's offline tokenizer), then runs the same workload as
``bench/engine_throughput.py`` through the real EngineClient + worker at 512x512, 20 steps:
batched (``--max-batch``, default 4) against one by one, each with per-job hypernets and without any.
Prints one JSON line: img/s, ms per UNet step, hypernet overhead, latency p50/p95, and the command.

    .venv/bin/python bench/engine_gpu.py --users 4 --jobs 4
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_throughput import build_store, engine_parser, run

# Stable Diffusion 1.5's component configs (the published v1-5 values), so shapes and FLOPs match the real model.
UNET_SD15 = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
VAE_SD15 = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768}
SCHEDULER_SD15 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                  "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}


def build_sd15_folder(folder: Path) -> None:
    """Write a random-weight SD1.5-shaped pipeline (fp16 safetensors) that ``Renderer.load`` reads as a folder."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.worker.tiny import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **CLIP_L)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**UNET_SD15), vae=AutoencoderKL(**VAE_SD15), text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer, scheduler=DDIMScheduler(**SCHEDULER_SD15), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)


def main() -> int:
    parser = engine_parser(__doc__.splitlines()[0], jobs=4, steps=20, size=512)
    parser.add_argument("--max-batch", type=int, default=4)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("engine_gpu: no CUDA device here; this benchmark needs one (CPU figures: bench/engine_throughput.py)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder, store = Path(tmp) / "sd15-random", Path(tmp) / "store"
        store.mkdir()
        build_sd15_folder(folder)
        refs = build_store(store, args.fixtures, args.users * args.jobs)
        args.checkpoint, args.device = str(folder), "cuda"
        runs = {}
        for label, nets in (("hypernets", refs), ("plain", [])):
            for mode, batch in (("batched", args.max_batch), ("one_by_one", 1)):
                runs[f"{mode}_{label}"] = asyncio.run(run(batch, args, store, nets))
    out = {
        "bench": "engine_gpu",
        "device": torch.cuda.get_device_name(0),
        "model": "SD1.5 architecture, random weights, fp16",
        "size": args.size, "steps": args.steps, "users": args.users, "jobs_per_user": args.jobs,
        "distinct_hypernets": len(refs),
        **runs,
        "speedup_hypernets": round(
            runs["batched_hypernets"]["images_per_s"] / runs["one_by_one_hypernets"]["images_per_s"], 3),
        "hypernet_step_overhead_batched": round(
            runs["batched_hypernets"]["avg_step_ms"] / runs["batched_plain"]["avg_step_ms"] - 1, 3),
        "hypernet_step_overhead_one_by_one": round(
            runs["one_by_one_hypernets"]["avg_step_ms"] / runs["one_by_one_plain"]["avg_step_ms"] - 1, 3),
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
