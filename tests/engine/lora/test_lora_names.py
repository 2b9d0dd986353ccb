"""Module names: ours <-> A1111's CompVis layer names, and A1111's rules for LoRA key BASEs (spec §2)."""

from __future__ import annotations

import pytest

from engine.lora.hooks import table_for_models
from engine.lora.names import (
    CONV,
    GROUP_NORM,
    LAYER_NORM,
    LINEAR,
    a1111_layer_name,
    kohya_candidate,
    sd1_module_names,
    sd1_table,
)


def test_our_names_map_to_a1111s_layer_names_for_every_fixture_module(manifest: dict) -> None:
    got = {name: a1111_layer_name(name) for name in manifest["modules"]}
    assert got == {name: t["a1111_layer_name"] for name, t in manifest["modules"].items()}
    assert a1111_layer_name("text_encoder.text_model.encoder.layers.0.mlp.fc1") == \
        "transformer_text_model_encoder_layers_0_mlp_fc1"
    assert a1111_layer_name("unet.down_blocks.0.resnets.0.dropout") is None
    assert a1111_layer_name("vae.decoder.conv_in") is None


def test_the_sd1_table_lists_the_real_models_modules_with_their_kinds(models, manifest: dict) -> None:
    real = {name: entry for name, entry in _entries(table_for_models(*models)).items()}
    generated = {name: entry for name, entry in _entries(sd1_table(text_layers=2)).items()}
    assert generated == {name: kind for name, kind in real.items() if name in generated}
    weighted = {name for name, kind in real.items() if kind in (LINEAR, CONV, GROUP_NORM, LAYER_NORM)}
    assert weighted <= set(generated)
    assert weighted == {name for name, t in manifest["modules"].items() if t["type"] != "Embedding"}
    assert real["text_encoder.embeddings.token_embedding"] == generated["text_encoder.embeddings.token_embedding"] == "other"
    assert sum(1 for _ in sd1_module_names()) > len(list(sd1_module_names(text_layers=2)))


def _entries(table) -> dict[str, str]:
    return {entry.name: entry.kind for entry in table._table.values()}


@pytest.mark.parametrize(("base", "module"), [
    ("lora_unet_conv_in", "unet.conv_in"),
    ("lora_unet_conv_out", "unet.conv_out"),
    ("lora_unet_time_embedding_linear_2", "unet.time_embedding.linear_2"),
    ("lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k",
     "unet.down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k"),
    ("lora_unet_down_blocks_2_resnets_0_conv_shortcut", "unet.down_blocks.2.resnets.0.conv_shortcut"),
    ("lora_unet_down_blocks_0_resnets_1_time_emb_proj", "unet.down_blocks.0.resnets.1.time_emb_proj"),
    ("lora_unet_down_blocks_1_downsamplers_0_conv", "unet.down_blocks.1.downsamplers.0.conv"),
    ("lora_unet_mid_block_resnets_1_norm2", "unet.mid_block.resnets.1.norm2"),
    ("lora_unet_mid_block_attentions_0_proj_out", "unet.mid_block.attentions.0.proj_out"),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", "unet.up_blocks.0.upsamplers.0.conv"),
    ("lora_unet_up_blocks_2_upsamplers_0_conv", "unet.up_blocks.2.upsamplers.0.conv"),
    ("lora_unet_up_blocks_3_resnets_2_conv1", "unet.up_blocks.3.resnets.2.conv1"),
    ("lora_te_text_model_encoder_layers_1_self_attn_out_proj", "text_encoder.encoder.layers.1.self_attn.out_proj"),
    # CompVis names and SDXL-era lora_te1_ names fall back to A1111's own layer names
    ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("lora_unet_output_blocks_3_0_in_layers_2", "unet.up_blocks.1.resnets.0.conv1"),
    ("lora_unet_out_0", "unet.conv_norm_out"),
    ("lora_te1_text_model_final_layer_norm", "text_encoder.final_layer_norm"),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "text_encoder.encoder.layers.0.mlp.fc1"),
])
def test_a1111_resolves_key_bases(base: str, module: str) -> None:
    hit = sd1_table().resolve(base)
    assert hit is not None and hit[1].name == module


@pytest.mark.parametrize("base", [
    "lora_unet_conv_norm_out",                          # A1111 has no rule for it (use lora_unet_out_0)
    "lora_te_text_model_final_layer_norm",              # only lora_te1_ reaches non-layer text modules
    "lora_te_text_model_embeddings_token_embedding",
    "lora_te2_text_model_encoder_layers_0_mlp_fc1",     # SDXL's second text encoder
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_1_attn1_to_q",  # a module SD1 lacks
    "lora_unet_down_blocks_0_resnets_0_dropout",
    "unet",                                             # diffusers/PEFT keys split at their first '.'
])
def test_a1111_ignores_key_bases(base: str) -> None:
    assert sd1_table().resolve(base) is None


def test_the_rewrite_is_tried_before_the_compvis_fallback() -> None:
    assert kohya_candidate("lora_unet_down_blocks_0_resnets_0_norm1") == [
        "diffusion_model_input_blocks_1_0_in_layers_0", "diffusion_model_down_blocks_0_resnets_0_norm1"]
    assert kohya_candidate("lora_te1_text_model_final_layer_norm") == [
        "lora_te1_text_model_final_layer_norm", "transformer_text_model_final_layer_norm"]
    assert kohya_candidate("lora_te_text_model_encoder_layers_3_mlp_fc2") == [
        "transformer_text_model_encoder_layers_3_mlp_fc2"]
