"""Loading a Stable Diffusion checkpoint into the components the engine drives itself.

Why components and not a ``StableDiffusionPipeline``: the engine runs its own denoising loop (per-row CFG scales,
seeds and hypernet chains), so it needs the UNet, VAE, text encoder, tokenizer and the scheduler *config* — never
the pipeline's ``__call__``, its safety checker or its progress bars.

Accepted checkpoints (``docs/checkpoints.md``): ``"tiny"`` (built in, random weights); an A1111 single
``.safetensors`` file (SD 1.x / 2.x, loaded with no network access: :mod:`engine.worker.checkpoint_files`); a
diffusers folder; a hub id (on an owner's machine only — tests never touch the hub).  Every file and folder is
first inspected torch-free (:func:`engine.checkpoints.inspect_checkpoint`) and refused with its owner-facing
message (:class:`~engine.checkpoints.CheckpointRefused`) when it cannot be loaded: ``.ckpt`` pickles are never
opened.  A separate VAE file (A1111's ``models/VAE``) can replace any checkpoint's VAE; a per-checkpoint
``prediction`` overrides epsilon / v-prediction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from engine.checkpoints import CheckpointInfo, CheckpointRefused, HashCache, inspect_checkpoint, inspect_vae
from engine.checkpoints.info import PREDICTIONS

if TYPE_CHECKING:  # importing the pipeline class loads much of diffusers; only folders and hub ids need it
    from diffusers import StableDiffusionPipeline

__all__ = ["LoadedCheckpoint", "load_checkpoint", "resolve_device", "resolve_dtype"]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


@dataclass(slots=True)
class LoadedCheckpoint:
    """The parts of a checkpoint, on the CPU, plus what the PNG infotext says about it.

    ``family``: ``sd1`` / ``sd2`` (None for hub ids); ``prediction``: what ``scheduler_config`` says; ``vae_name`` /
    ``vae_hash``: A1111's ``VAE`` and ``VAE hash`` when a separate VAE file replaced the checkpoint's; ``info``: the
    inspection of a local file or folder.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    model_name: str
    model_hash: str | None  # A1111's "Model hash": first 10 hex digits of the file's sha256 (single files only)
    family: str | None = None
    prediction: str = "epsilon"
    vae_name: str | None = None
    vae_hash: str | None = None
    info: CheckpointInfo | None = None


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


def _from_pipeline(pipe: StableDiffusionPipeline, model_name: str, info: CheckpointInfo | None) -> LoadedCheckpoint:
    unet_cfg = pipe.unet.config
    if getattr(unet_cfg, "addition_embed_type", None) == "text_time":
        raise CheckpointRefused(f"`{model_name}` is an SDXL pipeline; Hypercord runs SD 1.x and SD 2.x checkpoints "
                                "only. Install an SD 1.x or SD 2.x checkpoint instead.")
    config = dict(pipe.scheduler.config)
    return LoadedCheckpoint(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, config, model_name, None,
                            info.family if info else None, str(config.get("prediction_type", "epsilon")), info=info)


def _pipeline(source: str, dtype: torch.dtype, *, local: bool) -> StableDiffusionPipeline:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(source, local_files_only=local, torch_dtype=dtype,
                                                   safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)


def _single_file(info: CheckpointInfo, dtype: torch.dtype, vae: Path | None, hash_cache: HashCache | None
                 ) -> LoadedCheckpoint:
    from engine.worker.checkpoint_files import load_single_file

    vae_info = inspect_vae(vae, cache=hash_cache) if vae is not None else None
    parts = load_single_file(info, dtype, vae=vae_info)
    return LoadedCheckpoint(parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, parts.scheduler_config,
                            info.name, info.model_hash, info.family, parts.prediction,
                            vae_info.name if vae_info else None,
                            vae_info.hashes.autov2 if vae_info and vae_info.hashes else None, info)


def _separate_vae(vae: Path, dtype: torch.dtype, hash_cache: HashCache | None) -> tuple[AutoencoderKL, str, str | None]:
    from engine.worker.checkpoint_files import load_vae_file

    vae_info = inspect_vae(vae, cache=hash_cache)
    return load_vae_file(vae_info, dtype), vae_info.name, vae_info.hashes.autov2 if vae_info.hashes else None


def _load(checkpoint: str, dtype: torch.dtype, vae: Path | None, prediction: str | None,
          hash_cache: HashCache | None) -> LoadedCheckpoint:
    from engine.worker.tiny import TINY_VARIANTS

    if checkpoint in TINY_VARIANTS:
        from engine.worker.tiny import build_tiny

        tiny = build_tiny(checkpoint)
        return LoadedCheckpoint(tiny.unet, tiny.vae, tiny.text_encoder, tiny.tokenizer, dict(tiny.scheduler_config),
                                checkpoint, None, "sd1")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    path = Path(checkpoint).expanduser()
    if path.exists():
        info = inspect_checkpoint(path, prediction=prediction, cache=hash_cache)
        if info.refusal is not None:
            raise CheckpointRefused(info.refusal)
        if path.is_file():
            return _single_file(info, dtype, vae, hash_cache)
        return _from_pipeline(_pipeline(str(path), dtype, local=True), path.name, info)
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
    if not _HUB_ID.fullmatch(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint} (not a folder, a .safetensors file or a hub id "
                                "like 'org/name')")
    # a hub id such as "stable-diffusion-v1-5/stable-diffusion-v1-5" (downloads on first use)
    return _from_pipeline(_pipeline(checkpoint, dtype, local=False), checkpoint.rsplit("/", 1)[-1], None)


def load_checkpoint(checkpoint: str | Path, dtype: torch.dtype, *, vae: Path | None = None,
                    prediction: str | None = None, hash_cache: HashCache | None = None) -> LoadedCheckpoint:
    """Load ``checkpoint`` (see the module docstring) in ``dtype``; modules stay on the CPU, in eval mode.

    ``vae``: a separate VAE file replacing the checkpoint's (its name and hash go to the infotext); ``prediction``:
    ``epsilon`` / ``v_prediction`` overriding what the checkpoint says or A1111's test decides (None / ``auto``:
    decide); ``hash_cache``: where file hashes are remembered.  Refusals raise :class:`CheckpointRefused`, a path
    that does not exist ``FileNotFoundError``.
    """
    if prediction not in (None, "", "auto", *PREDICTIONS):
        raise ValueError(f"unknown prediction type {prediction!r}; use auto, epsilon or v_prediction")
    loaded = _load(str(checkpoint), dtype, vae, prediction, hash_cache)
    if vae is not None and loaded.vae_name is None:  # folders, hub ids and tiny: swap the VAE in afterwards
        loaded.vae, loaded.vae_name, loaded.vae_hash = _separate_vae(vae, dtype, hash_cache)
    if prediction in PREDICTIONS and loaded.prediction != prediction:
        loaded.prediction = str(prediction)
        loaded.scheduler_config = {**loaded.scheduler_config, "prediction_type": prediction}
    for module in (loaded.unet, loaded.vae, loaded.text_encoder):
        if module.dtype != dtype:  # from_pretrained already loaded in dtype; tiny is built in float32
            module.to(dtype=dtype)
        module.eval().requires_grad_(False)
    return loaded
