"""Token chunks → hidden states of a CLIP text encoder, and A1111's "Original" emphasis on them.

One forward pass encodes any number of distinct chunks.  Embedding vectors go in through a forward hook on the
token-embedding module that lives only for that call (nothing is patched for longer), so the transformer itself
runs unchanged: ``transformers.CLIPTextModel`` 4.x and 5.x, SD1.x and SD2.x (diffusers' SD2 text encoder is a
``CLIPTextModel`` too).

Clip skip s (spec section 7): s <= 1 is the final output; s > 1 the hidden state s layers from the end, passed
through the final LayerNorm.  Emphasis: multiply each row by its multiplier, then rescale so the mean over the
whole batch (one chunk index of one schedule) is what it was before — in float32, as A1111.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from engine.lora.batch import RowLoras, build_lora_batch
from engine.lora.hooks import lora_batch_active

__all__ = ["apply_original_emphasis", "encode_chunk_batch", "encoder_layers", "encoder_width"]

Fixes = Sequence[tuple[int, torch.Tensor]]  # (content offset, vectors [n, width]) of one chunk


def encoder_width(text_encoder: torch.nn.Module) -> int:
    return int(text_encoder.get_input_embeddings().weight.shape[1])


def encoder_layers(text_encoder: torch.nn.Module) -> int:
    return int(text_encoder.config.num_hidden_layers)


def _final_layer_norm(text_encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers 4.x nests the model under .text_model; 5.x does not.
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def _fix_hook(fixes: Sequence[Fixes]):
    def put_vectors(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        last_row = output.shape[1] - 1
        for row, row_fixes in enumerate(fixes):
            for offset, vectors in row_fixes:
                count = min(vectors.shape[0], last_row - offset)  # rows offset+1 ... at most the last one
                output[row, offset + 1 : offset + 1 + count] = vectors[:count].to(output.device, output.dtype)
        return output

    return put_vectors


def _forward(text_encoder: torch.nn.Module, token_ids: torch.Tensor, fixes: Sequence[Fixes],
             clip_skips: Collection[int], lora_rows: Sequence[RowLoras] | None) -> dict[int, torch.Tensor]:
    need_hidden = any(skip > 1 for skip in clip_skips)
    hook = text_encoder.get_input_embeddings().register_forward_hook(_fix_hook(fixes))
    loras = None if lora_rows is None else build_lora_batch(text_encoder, "text_encoder", lora_rows)
    try:
        with torch.no_grad(), lora_batch_active(text_encoder, loras):
            output = text_encoder(input_ids=token_ids, output_hidden_states=need_hidden)
            final_norm = _final_layer_norm(text_encoder)
            return {
                skip: output.last_hidden_state if skip <= 1 else final_norm(output.hidden_states[-skip])
                for skip in clip_skips
            }
    finally:
        hook.remove()


def encode_chunk_batch(text_encoder: torch.nn.Module, token_ids: torch.Tensor, fixes: Sequence[Fixes],
                       clip_skips: Collection[int], *, rows_per_forward: int | None = None,
                       lora_rows: Sequence[RowLoras] | None = None) -> dict[int, torch.Tensor]:
    """Hidden states ``[N, 77, width]`` of N chunks for every requested clip skip, from one forward pass (or one
    per ``rows_per_forward`` chunks; 1 makes every chunk's result independent of what else is in the batch).

    ``lora_rows`` (one LoRA list per chunk, or None for none at all) applies each chunk's LoRAs to the text
    encoder for that chunk only (:mod:`engine.lora`'s per-row hooks; rows without one are untouched)."""
    layers = encoder_layers(text_encoder)
    for skip in clip_skips:
        if skip > layers:
            raise ValueError(f"clip skip {skip} is more than the text encoder's {layers} layers")
    size = rows_per_forward or len(token_ids)
    pieces = [_forward(text_encoder, token_ids[start : start + size], fixes[start : start + size], clip_skips,
                       None if lora_rows is None else lora_rows[start : start + size])
              for start in range(0, len(token_ids), size)]
    if len(pieces) == 1:
        return pieces[0]
    return {skip: torch.cat([piece[skip] for piece in pieces]) for skip in clip_skips}


def apply_original_emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """``z`` [B, 77, width], ``multipliers`` [B, 77]: scale rows, then restore the mean over the whole batch."""
    z = z.float()
    original_mean = z.mean()
    z = z * multipliers.to(device=z.device, dtype=torch.float32).unsqueeze(-1)
    return z * (original_mean / z.mean())
