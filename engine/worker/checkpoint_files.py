"""Loading an A1111 single-file checkpoint (and a separate VAE file) with diffusers, never touching the network.

Why this way: diffusers' single-file loader converts A1111's (ldm) tensor names itself; what it lacks offline is
a config per component, which it otherwise downloads from the hub.  The configs come from the file's own shapes
and our shipped family configs (:mod:`engine.checkpoints.architecture`): for a released SD 1.x / 2.x file they are
the shipped folder itself, for anything smaller (test models) a temporary folder written for the load.  Every
call passes ``local_files_only=True`` and a local folder, so no code path has a hub id to fetch.

Only the tensors a part needs are read (``safe_open``; EMA copies, training buffers and a replaced VAE are
skipped).  Two renames happen first, as A1111 does them on load: SD 1.x text towers saved by old transformers
versions get their ``text_model.`` segment, and SD 2.x's last OpenCLIP block (unused: SD 2.x conditions on the
penultimate block's output) is left out.  A part whose weights are missing from the file is refused, not left
as uninitialised memory.

SD 2.x single files do not say whether they predict epsilon or v; without an override or an A1111 ``.yaml``
(:mod:`engine.checkpoints.info`), :func:`a1111_predicts_v` runs A1111's own test on the loaded UNet.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from engine.checkpoints.architecture import clip_l_prefix
from engine.checkpoints.assets import CLIP_TOKENIZER, COMPONENT_FILES, config_folder, template
from engine.checkpoints.info import CheckpointInfo, VaeInfo
from engine.checkpoints.layout import CLIP_L, OPEN_CLIP, UNET, VAE, indices
from engine.checkpoints.refusals import CheckpointRefused, mismatch_refusal, no_vae_refusal
from engine.intake.base import clean_text

__all__ = ["SingleFileParts", "a1111_predicts_v", "family_tokenizer", "load_single_file", "load_vae_file"]

_M = TypeVar("_M", bound=torch.nn.Module)
_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_TOKENIZER_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length")


@dataclass(slots=True)
class SingleFileParts:
    """What :func:`load_single_file` returns: the modules (on the CPU, eval mode) and the decided prediction."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    prediction: str


def _read_tensors(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The file's tensors whose names start with one of ``prefixes`` (nothing else is read)."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {name: f.get_tensor(name) for name in f.keys() if name.startswith(prefixes)}  # noqa: SIM118


def _a1111_renames(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    if family == "sd1" and clip_l_prefix(state) == CLIP_L:  # old transformers layout: no "text_model." segment
        return {f"{CLIP_L}text_model.{k[len(CLIP_L):]}" if k.startswith(CLIP_L) else k: v for k, v in state.items()}
    if family == "sd2":
        blocks = indices(state, f"{OPEN_CLIP}transformer.resblocks.")
        unused = f"{OPEN_CLIP}transformer.resblocks.{blocks[-1]}." if blocks else None
        return {k: v for k, v in state.items() if not (unused and k.startswith(unused))}
    return state


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers 0.42 warns about fp32 modules on every dtype cast of a model that has none; keep the log clean."""
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


@contextlib.contextmanager
def _config_dir(configs: Mapping[str, dict[str, Any]], shipped: Path) -> Iterator[Path]:
    """``shipped`` when every config equals its shipped file, else a temporary folder holding ``configs``."""
    if all(config == template(shipped, name) for name, config in configs.items()):
        yield shipped
        return
    with tempfile.TemporaryDirectory(prefix="hypercord-configs-") as tmp:
        for name, config in configs.items():
            target = Path(tmp) / COMPONENT_FILES[name]
            target.parent.mkdir(parents=True)
            target.write_text(json.dumps(config), encoding="utf-8")
        yield Path(tmp)


def _load_part(load: Callable[[], _M], part: str, name: str, family: str | None) -> _M:
    """``load()``, refused when the file lacked some of the part's weights.  Those stay on the meta device, and
    diffusers' own final move of the part to the CPU fails on them; a part that got past it is checked as well."""
    try:
        module = load()
    except NotImplementedError as error:
        if "meta tensor" not in str(error):
            raise
        module = None
    except (KeyError, ValueError, AttributeError, RuntimeError) as error:  # weights that do not fit the architecture
        problem = f"diffusers could not load its {part} ({clean_text(error, 160)})"
        raise CheckpointRefused(mismatch_refusal(name, family, problem)) from error
    missing = [] if module is None else [n for n, t in [*module.named_parameters(), *module.named_buffers()]
                                         if t.is_meta]
    if module is None or missing:
        which = f"the weight `{missing[0]}`" if missing else "weights its architecture needs"
        raise CheckpointRefused(mismatch_refusal(name, family, f"its {part} lacks {which}"))
    return module


@functools.cache
def family_tokenizer(family: str) -> CLIPTokenizer:
    """The CLIP tokenizer of ``family``: SD 1.x's shipped files; SD 2.x the same vocabulary with its own special
    tokens (padding with ``!``, id 0) from ``engine/assets/checkpoints/sd2-*/tokenizer/``.  One per process and
    family, shared by every checkpoint (as the tiny checkpoint shares its tokenizer)."""
    overrides: dict[str, Any] = {}
    if family == "sd2":
        folder = config_folder("sd2", None) / "tokenizer"
        for file in _TOKENIZER_FILES:
            values = json.loads((folder / file).read_text(encoding="utf-8"))
            overrides.update({k: v for k, v in values.items() if k in _TOKENIZER_KEYS})
    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER), local_files_only=True, **overrides)


def a1111_predicts_v(unet: UNet2DConditionModel) -> bool:
    """A1111's test for SD 2.x v-prediction: run the UNet in float32 on a latent of 0.5s (1x4x8x8) at timestep 999
    with a two-token context of 0.5s; v-prediction when the output minus the input averages below -1."""
    with torch.no_grad():
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=unet.dtype)
        context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=unet.dtype)
        out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
        return (out.float() - x.float()).mean().item() < -1


def _load_vae(state: dict[str, torch.Tensor], config: dict[str, Any], shipped: Path, dtype: torch.dtype, name: str,
              family: str | None) -> AutoencoderKL:
    with _quiet_diffusers(), _config_dir({"vae": config}, shipped) as folder:
        return _load_part(lambda: AutoencoderKL.from_single_file(state, config=str(folder), subfolder="vae",
                                                                 local_files_only=True, torch_dtype=dtype),
                          "VAE", name, family)


def load_vae_file(vae: VaeInfo, dtype: torch.dtype) -> AutoencoderKL:
    """A separate VAE file (A1111's ``models/VAE``, e.g. the ft-MSE VAE), checked by ``inspect_vae`` first."""
    if vae.refusal is not None or vae.config is None:
        raise CheckpointRefused(vae.refusal or f"{vae.path.name} was not inspected as a VAE")
    state = _read_tensors(vae.path, (vae.prefix,))
    if vae.prefix:
        state = {k[len(vae.prefix):]: v for k, v in state.items()}
    return _load_vae(state, vae.config, config_folder("sd1", None), dtype, vae.path.name, None)


def load_single_file(info: CheckpointInfo, dtype: torch.dtype, *, vae: VaeInfo | None = None) -> SingleFileParts:
    """Load an inspected SD 1.x / 2.x single file (``info.usable``) in ``dtype``; ``vae`` replaces the file's VAE."""
    if info.refusal is not None or info.configs is None or info.family is None:
        raise CheckpointRefused(info.refusal or f"{info.path.name} was not inspected as a checkpoint")
    if vae is None and info.configs.vae is None:
        raise CheckpointRefused(no_vae_refusal(info.path.name))
    family, configs = info.family, info.configs
    shipped = config_folder(family, info.prediction)
    prefixes = (UNET, "cond_stage_model.") if vae is not None else (UNET, "cond_stage_model.", VAE)
    state = _a1111_renames(_read_tensors(info.path, prefixes), family)
    probe = info.prediction is None  # A1111 runs its test in float32 before the model is cast
    name = info.path.name
    with _quiet_diffusers(), _config_dir({"unet": configs.unet, "text_encoder": configs.text_encoder}, shipped) as folder:
        unet = _load_part(lambda: UNet2DConditionModel.from_single_file(
            state, config=str(folder), subfolder="unet", local_files_only=True,
            torch_dtype=torch.float32 if probe else dtype), "UNet", name, family)
        text_encoder = _load_part(lambda: create_diffusers_clip_model_from_ldm(
            CLIPTextModel, state, subfolder="text_encoder", config=str(folder), torch_dtype=dtype,
            local_files_only=True), "text encoder", name, family)
    if vae is not None:
        vae_model = load_vae_file(vae, dtype)
    else:
        assert configs.vae is not None
        vae_model = _load_vae(state, configs.vae, shipped, dtype, name, family)
    state.clear()  # the parts hold what they need; let the rest go before the test run
    prediction = info.prediction or ("v_prediction" if a1111_predicts_v(unet) else "epsilon")
    if probe:  # now cast, and give the UNet its variant's native size (SD 2.x 768-v: 96 latents)
        with _quiet_diffusers():
            unet.to(dtype=dtype)
        unet.register_to_config(sample_size=template(config_folder(family, prediction), "unet")["sample_size"])
    scheduler = {**template(config_folder(family, prediction), "scheduler"), "prediction_type": prediction}
    return SingleFileParts(unet, vae_model, text_encoder, family_tokenizer(family), scheduler, prediction)
