"""The shipped configs and the configs derived from a file's shapes: real SD 1.x / 2.x shapes give the shipped ones."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from engine.checkpoints.architecture import derive_configs
from engine.checkpoints.assets import CHECKPOINT_CONFIGS, config_folder, template
from engine.checkpoints.families import Kind, detect
from engine.checkpoints.layout import ArchitectureError
from tests.engine.checkpoints.files import (
    TinyModels,
    checkpoint_state,
    clip_to_ldm,
    openclip_to_ldm,
    tiny_models,
    unet_to_ldm,
    vae_to_ldm,
)
from tests.engine.checkpoints.make_configs import write_configs

_VERSIONS = ("_diffusers_version", "transformers_version")


def _tree(root: Path) -> dict[str, Any]:
    return {str(p.relative_to(root)): {k: v for k, v in json.loads(p.read_text(encoding="utf-8")).items()
                                       if k not in _VERSIONS}
            for p in sorted(root.rglob("*.json"))}


def test_shipped_configs_are_what_the_generator_writes(tmp_path: Path) -> None:
    write_configs(tmp_path)
    shipped = _tree(CHECKPOINT_CONFIGS)
    assert shipped == _tree(tmp_path)
    assert len(shipped) == 3 * 4 + 2 * 2  # three folders of four parts, SD 2.x's two tokenizer files
    assert template(config_folder("sd2", "v_prediction"), "scheduler")["prediction_type"] == "v_prediction"
    assert template(config_folder("sd2", None), "scheduler")["prediction_type"] == "epsilon"


def _full_size_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of a real-size checkpoint of ``family`` in A1111's names, built on the meta device (no memory)."""
    folder = config_folder(family, None)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(template(folder, "unet"))
        vae = AutoencoderKL.from_config(template(folder, "vae"))
        text = CLIPTextModel(CLIPTextConfig(**template(folder, "text_encoder")))
    state = unet_to_ldm(unet.state_dict(), unet.config) | vae_to_ldm(vae.state_dict(), 4)
    text_state = text.state_dict()
    if family == "sd1":
        state |= clip_to_ldm(text_state)
    else:
        state |= openclip_to_ldm(text_state, text.config.num_hidden_layers, torch.Generator())
    return {name: tuple(t.shape) for name, t in state.items()}


@pytest.mark.parametrize(("family", "context"), [("sd1", 768), ("sd2", 1024)])
def test_real_shapes_derive_exactly_the_shipped_configs(family: str, context: int) -> None:
    shapes = _full_size_shapes(family)
    found = detect(shapes)
    assert (found.kind, found.family, found.context_dim, found.text_dim) == (Kind.CHECKPOINT, family, context, context)
    configs = derive_configs(shapes, family, config_folder(family, None))
    assert configs.equals_shipped(config_folder(family, None))


def _structure(models: TinyModels) -> dict[str, Any]:
    unet, vae, text = models.unet.config, models.vae.config, models.text_encoder.config
    return {"unet": {k: list(v) if isinstance(v, tuple) else v for k, v in unet.items() if k in _UNET_FIELDS},
            "vae": {k: list(v) if isinstance(v, tuple) else v for k, v in vae.items() if k in _VAE_FIELDS},
            "text": {k: getattr(text, k) for k in _TEXT_FIELDS}}


_UNET_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                "up_block_types", "mid_block_type", "cross_attention_dim", "use_linear_projection",
                "attention_head_dim", "transformer_layers_per_block")
_VAE_FIELDS = ("block_out_channels", "layers_per_block", "latent_channels", "in_channels", "out_channels")
_TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings")


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_small_models_derive_their_own_structure(family: str) -> None:
    models = tiny_models(family)
    state = checkpoint_state(models, family)
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    configs = derive_configs(shapes, family, config_folder(family, None))
    assert configs.vae is not None
    derived = {"unet": {k: configs.unet[k] for k in _UNET_FIELDS}, "vae": {k: configs.vae[k] for k in _VAE_FIELDS},
               "text": {k: configs.text_encoder[k] for k in _TEXT_FIELDS}}
    assert derived == _structure(models)
    assert not configs.equals_shipped(config_folder(family, None))


def test_a_unet_missing_a_level_is_an_architecture_error() -> None:
    state = checkpoint_state(tiny_models("sd1"), "sd1")
    shapes = {n: tuple(t.shape) for n, t in state.items() if not n.startswith("model.diffusion_model.output_blocks.3.")}
    with pytest.raises(ArchitectureError, match="its UNet has 3 output blocks where 4 belong"):
        derive_configs(shapes, "sd1", config_folder("sd1", None))


def test_every_shipped_file_is_package_data() -> None:
    """``pip install .`` (the Docker image) must carry the configs: pyproject's globs cover every shipped file."""
    engine = CHECKPOINT_CONFIGS.parents[1]
    globs = tomllib.loads((engine.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["engine"]
    packaged = {p for pattern in globs for p in engine.glob(pattern) if p.is_file()}
    shipped = {p for p in CHECKPOINT_CONFIGS.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert shipped and shipped <= packaged
