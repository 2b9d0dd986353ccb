"""Kohya-format LoRA files for the built-in tiny model, written by tests (seeded, so every run writes the same file).

The public LoRA fixtures (tests/fixtures/lora) fit the fixture model's narrow channels; renders with the tiny model
need files whose modules have its shapes.  Keys follow kohya's naming (``lora_unet_`` / ``lora_te_text_model_`` +
the diffusers path with ``.`` → ``_``), the form A1111 reads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

# kohya base name -> (in features/channels, out features/channels, kernel size; 0 for a Linear)
TINY_MODULES: dict[str, tuple[int, int, int]] = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (320, 320, 0),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (768, 320, 0),
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2": (2560, 640, 0),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768, 0),
    "lora_te_text_model_encoder_layers_1_mlp_fc1": (768, 1024, 0),
}
# A LoCon file also adapts convolutions (kohya conv_dim): one 3x3 conv of a resnet.
TINY_CONV_MODULES: dict[str, tuple[int, int, int]] = {"lora_unet_down_blocks_0_resnets_0_conv1": (320, 320, 3)}


def write_tiny_lora(path: Path, *, seed: int, rank: int = 4, alpha: float = 4.0, conv: bool = False,
                    text_encoder: bool = True, strength: float = 0.5) -> Path:
    """A LoRA (LoCon with ``conv=True``) for the tiny model; ``strength`` scales the up factors so the effect shows."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    modules = {**TINY_MODULES, **(TINY_CONV_MODULES if conv else {})}
    for base, (inputs, outputs, kernel) in modules.items():
        if not text_encoder and base.startswith("lora_te_"):
            continue
        down_shape = (rank, inputs, kernel, kernel) if kernel else (rank, inputs)
        up_shape = (outputs, rank, 1, 1) if kernel else (outputs, rank)
        state[f"{base}.lora_down.weight"] = torch.randn(down_shape, generator=generator) / inputs ** 0.5
        state[f"{base}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * strength
        state[f"{base}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora"})
    return path
