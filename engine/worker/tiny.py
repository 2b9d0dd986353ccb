"""The built-in ``tiny`` checkpoint: a complete Stable Diffusion 1.x pipeline with small random weights.

Why it exists: tests, CI and smoke runs need a real UNet / VAE / text encoder / tokenizer without a hub
download or a multi-GB file.  Its UNet keeps SD1.x's attention *widths* (self-attention 320 and 640,
text context 768) with few layers, so real A1111 hypernetwork files — whose modules are keyed by those
widths — apply to it unchanged, while a 64x64 image renders in a fraction of a second on one CPU core.

Everything is built offline from configs with a fixed seed, so two processes build bit-identical
weights.  The tokenizer is SD1.5's own CLIP tokenizer (shipped in ``engine/assets/clip_tokenizer``), so token
counts, 75-token chunks, embeddings' names and every prompt message are what they are on a real checkpoint; the
text encoder has SD1.x's vocabulary and width with two small layers.

Each call builds fresh modules (engines move them to a device/dtype and install attention processors
in place, so they must not be shared); only the tokenizer is cached per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from engine.checkpoints import BUILT_IN_CHECKPOINTS
from engine.conditioning import load_clip_tokenizer

TINY_SEED = 20240229
CONTEXT_DIM = 768
MAX_TOKENS = 77

# SD1.5's noise schedule (scheduler_config.json of the v1-5 release); samplers are built from this.
SCHEDULER_CONFIG: dict[str, object] = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

@dataclass(frozen=True, slots=True)
class TinyComponents:
    """The parts of a Stable Diffusion pipeline, as the engine uses them."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, object]


def _build_unet() -> UNet2DConditionModel:
    # Both down blocks carry a transformer block (self-attention at 320 and 640, cross-attention to 768);
    # plain up blocks and no mid block: more attention would only repeat those widths and cost time
    # (the 640-wide resnets dominate the run time).
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type=None,
        up_block_types=("UpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640),
        layers_per_block=1,
        cross_attention_dim=CONTEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _build_vae() -> AutoencoderKL:
    # Three downsamples, like SD's VAE, so the latent is 1/8 of the image and SD's sizes keep their meaning.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def _token_embedding(vocab_size: int) -> torch.nn.Embedding:
    """CLIP's 49408 x 768 token table without drawing 38M random numbers at every start-up (~0.4 s).

    Row ``i`` is ``low[i % 256] + high[i // 256]`` for two small random tables, so every token still gets its own
    vector (no two ids share both parts) and the weights are as deterministic as the rest of the model.
    """
    low = torch.randn(256, CONTEXT_DIM) * 0.02
    high = torch.randn((vocab_size + 255) // 256, CONTEXT_DIM) * 0.02
    ids = torch.arange(vocab_size)
    return torch.nn.Embedding.from_pretrained(low[ids % 256] + high[ids // 256], freeze=True)


def _build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    vocab_size = len(tokenizer)
    # The config is made for the real vocabulary (what every reader of it sees); the model is built with a
    # one-row table that _token_embedding replaces at once.
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CONTEXT_DIM,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=12,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = CLIPTextModel(CLIPTextConfig(**{**config.to_dict(), "vocab_size": 1, "bos_token_id": None,
                                             "eos_token_id": None, "pad_token_id": None}))
    model.set_input_embeddings(_token_embedding(vocab_size))
    model.config = config
    model.eos_token_id = config.eos_token_id  # read by the pooled output; copied from the config at construction
    # A freshly initialised LayerNorm has zero bias, so every output row would average to ~0, and A1111's emphasis
    # (rescale to the original mean) would divide by ~0.  A trained CLIP's final norm has a bias; give ours one
    # whose mean is clearly away from 0.
    torch.nn.init.normal_(getattr(model, "text_model", model).final_layer_norm.bias, mean=0.3, std=0.1)
    return model


@functools.cache
def _tokenizer() -> CLIPTokenizer:
    return load_clip_tokenizer()


#: The built-in tiny checkpoints by name: the same architecture, other weights (tests of several checkpoints).
TINY_VARIANTS = {name: k for k, name in enumerate(BUILT_IN_CHECKPOINTS)}


def build_tiny(variant: str = "tiny") -> TinyComponents:
    """Fresh, independent tiny components; the same weights every time, in every process.

    ``variant`` is a name in :data:`TINY_VARIANTS`: each has its own weights (same shapes, same tokenizer).
    Building from scratch (~0.6 s) is cheaper than deep-copying a cached prototype, so only the
    tokenizer (immutable once built) is cached.  The global RNG is left as it was (``fork_rng``).
    """
    tokenizer = _tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + TINY_VARIANTS[variant])
        unet = _build_unet()
        vae = _build_vae()
        text_encoder = _build_text_encoder(tokenizer)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return TinyComponents(unet, vae, text_encoder, tokenizer, dict(SCHEDULER_CONFIG))
