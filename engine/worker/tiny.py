"""The built-in ``tiny`` checkpoint: a complete Stable Diffusion 1.x pipeline with small random weights.

Why it exists: tests, CI and smoke runs need a real UNet / VAE / text encoder / tokenizer without a hub
download or a multi-GB file.  Its UNet keeps SD1.x's attention *widths* (self-attention 320 and 640,
text context 768) with few layers, so real A1111 hypernetwork files — whose modules are keyed by those
widths — apply to it unchanged, while a 64x64 image renders in a fraction of a second on one CPU core.

Everything is built offline from configs with a fixed seed, so two processes build bit-identical
weights.  The tokenizer is a real byte-level BPE ``CLIPTokenizer`` (77 tokens, bos/eos/pad) built from
a generated vocabulary, so different prompts really give different embeddings.

Each call builds fresh modules (engines move them to a device/dtype and install attention processors
in place, so they must not be shared); only the tokenizer is cached per process.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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

# Words that become single tokens, so a prompt tokenizes roughly word by word like CLIP's does.
_COMMON_WORDS = (
    "a an the of and with in on at by for to from photo portrait painting drawing art style detailed "
    "woman man girl boy cat dog bird horse dragon castle city forest mountain sky sea ocean river lake "
    "water fire earth air ice light dark night day sun moon star red blue green yellow black white gold "
    "silver beautiful elemental magic fantasy landscape face hair eyes dress armor sword flower tree "
    "masterpiece best quality high resolution realistic anime cinematic lighting blurry ugly bad low "
    "hands text watermark"
)


@dataclass(frozen=True, slots=True)
class TinyComponents:
    """The parts of a Stable Diffusion pipeline, as the engine uses them."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, object]


def _byte_alphabet() -> list[str]:
    """One printable character per byte value (the byte-level BPE convention): printable ASCII and
    Latin-1 characters stand for themselves; the remaining bytes are shifted above U+0100."""
    direct = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = 0
    chars: list[str] = []
    for b in range(256):
        if b in direct:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the adjacent pair with the lowest rank."""
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(itertools.pairwise(pieces))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def build_tokenizer() -> CLIPTokenizer:
    """A CLIP-style tokenizer from a generated vocabulary: every byte (plain and word-final ``</w>``)
    plus merges that make ``_COMMON_WORDS`` single tokens; bos/eos/pad as in CLIP, 77 tokens max."""
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    alphabet = _byte_alphabet()
    for ch in alphabet:
        add(ch)
    for ch in alphabet:
        add(ch + "</w>")
    ranks: dict[tuple[str, str], int] = {}
    for word in _COMMON_WORDS.split():
        # Tokenize the word with the merges so far, then merge what is left left to right.  New merges rank
        # after all earlier ones, so words added before keep tokenizing to one token.
        pieces = _apply_merges([*word[:-1], word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            ranks.setdefault((left, right), len(ranks))
            add(left + right)
            left = left + right
    add("<|startoftext|>")
    add("<|endoftext|>")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(ranks))
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


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


def _build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CONTEXT_DIM,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=12,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


@functools.cache
def _tokenizer() -> CLIPTokenizer:
    return build_tokenizer()


def build_tiny() -> TinyComponents:
    """Fresh, independent tiny components; the same weights every time, in every process.

    Building from scratch (~0.6 s) is cheaper than deep-copying a cached prototype, so only the
    tokenizer (immutable once built) is cached.  The global RNG is left as it was (``fork_rng``).
    """
    tokenizer = _tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = _build_unet()
        vae = _build_vae()
        text_encoder = _build_text_encoder(tokenizer)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return TinyComponents(unet, vae, text_encoder, tokenizer, dict(SCHEDULER_CONFIG))
