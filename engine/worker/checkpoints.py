"""Loading a Stable Diffusion checkpoint into the components the engine drives itself.

Why components and not a ``StableDiffusionPipeline``: the engine runs its own denoising loop (per-row CFG scales,
seeds and hypernet chains), so it needs the UNet, VAE, text encoder, tokenizer and the scheduler *config* — never
the pipeline's ``__call__``, its safety checker or its progress bars.

Accepted checkpoints (``design.md``, "Checkpoints"): ``"tiny"`` (built in, random weights); a diffusers folder; a
single ``.safetensors`` / ``.ckpt`` file; a hub id (on an owner's machine only — tests never touch the hub).
SD 1.x and SD 2.x (text context 768 / 1024, epsilon or v-prediction: the scheduler config carries it).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

if TYPE_CHECKING:  # importing the pipeline class loads much of diffusers; only real checkpoints need it
    from diffusers import StableDiffusionPipeline

__all__ = ["LoadedCheckpoint", "load_checkpoint", "resolve_device", "resolve_dtype"]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


@dataclass(slots=True)
class LoadedCheckpoint:
    """The parts of a checkpoint, on the CPU, plus what the PNG infotext says about it."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    model_name: str
    model_hash: str | None  # A1111's "Model hash": first 10 hex digits of the file's sha256 (single files only)


def resolve_device(device: str) -> torch.device:
    """``auto`` = the first CUDA device when there is one, else the CPU."""
    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device, *, what: str = "dtype") -> torch.dtype:
    """``auto`` = float16 on CUDA, float32 elsewhere (half precision on a CPU is slow and poorly supported)."""
    if dtype in ("", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown {what} {dtype!r}; use auto, float16, bfloat16 or float32") from None


def _sha256_short(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:10]


def _from_pipeline(pipe: StableDiffusionPipeline, model_name: str, model_hash: str | None) -> LoadedCheckpoint:
    unet_cfg = pipe.unet.config
    if getattr(unet_cfg, "addition_embed_type", None) == "text_time":
        raise ValueError("SDXL checkpoints are not supported (this engine runs SD 1.x and 2.x)")
    return LoadedCheckpoint(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config),
                            model_name, model_hash)


def _pipeline_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    return {"torch_dtype": dtype, "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def load_checkpoint(checkpoint: str, dtype: torch.dtype) -> LoadedCheckpoint:
    """Load ``checkpoint`` (see the module docstring) in ``dtype``; modules stay on the CPU, in eval mode."""
    if checkpoint == "tiny":
        from engine.worker.tiny import build_tiny

        tiny = build_tiny()
        loaded = LoadedCheckpoint(tiny.unet, tiny.vae, tiny.text_encoder, tiny.tokenizer, tiny.scheduler_config,
                                  "tiny", None)
    else:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, **_pipeline_kwargs(dtype))
            loaded = _from_pipeline(pipe, path.name, None)
        elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
            pipe = StableDiffusionPipeline.from_single_file(str(path), **_pipeline_kwargs(dtype))
            loaded = _from_pipeline(pipe, path.stem, _sha256_short(path))
        elif not _HUB_ID.fullmatch(checkpoint):
            raise FileNotFoundError(f"checkpoint not found: {checkpoint} (not a folder, a .safetensors/.ckpt file "
                                    "or a hub id like 'org/name')")
        else:  # a hub id such as "stable-diffusion-v1-5/stable-diffusion-v1-5"
            pipe = StableDiffusionPipeline.from_pretrained(checkpoint, **_pipeline_kwargs(dtype))
            loaded = _from_pipeline(pipe, checkpoint.rsplit("/", 1)[-1], None)
    for module in (loaded.unet, loaded.vae, loaded.text_encoder):
        if module.dtype != dtype:  # from_pretrained already loaded in dtype; tiny is built in float32
            module.to(dtype=dtype)
        module.eval().requires_grad_(False)
    return loaded
