"""Family detection from safetensors headers, and the exact refusal for every file that is not a loadable checkpoint."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from engine.checkpoints import Kind, inspect_checkpoint
from tests.engine.checkpoints.files import (
    checkpoint_state,
    save_checkpoint,
    tiny_models,
    write_sd1,
    write_sd2,
    write_tensors,
)

ONLY = "Hypercord runs SD 1.x and SD 2.x checkpoints only. Install an SD 1.x or SD 2.x checkpoint instead."
PICKLE = ("`{}` is a pickled PyTorch checkpoint, and Hypercord never unpickles checkpoints (a pickle can run code when "
          "it is opened). Convert it to .safetensors once on a machine you trust (for example in A1111's Checkpoint "
          "Merger: this file as the primary model, interpolation \"No interpolation\", checkpoint format "
          "\"safetensors\") and install the .safetensors file instead.")
U = "model.diffusion_model."
CONV_IN = f"{U}input_blocks.0.0.weight"
TO_K = f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
CLIP_TOKENS = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
OPENCLIP_TOKENS = "cond_stage_model.model.token_embedding.weight"

HEADERS: dict[str, tuple[dict[str, tuple[int, ...]], Kind, str]] = {
    "sdxl_base": ({CONV_IN: (4, 4, 3, 3), f"{U}label_emb.0.0.weight": (4, 4), TO_K: (1, 2048),
                   "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (77, 1),
                   "conditioner.embedders.1.model.positional_embedding": (77, 1),
                   "first_stage_model.encoder.conv_in.weight": (1, 3, 3, 3)},
                  Kind.SDXL_BASE, f"`sdxl_base.safetensors` is an SDXL base checkpoint; {ONLY}"),
    "sdxl_refiner": ({CONV_IN: (4, 4, 3, 3), f"{U}label_emb.0.0.weight": (4, 4), TO_K: (1, 1280),
                      "conditioner.embedders.0.model.positional_embedding": (77, 1)},
                     Kind.SDXL_REFINER, f"`sdxl_refiner.safetensors` is an SDXL refiner checkpoint; {ONLY}"),
    "sd3": ({f"{U}joint_blocks.0.context_block.attn.qkv.weight": (3, 1),
             "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight": (77, 1)},
            Kind.SD3, f"`sd3.safetensors` is a Stable Diffusion 3 checkpoint; {ONLY}"),
    "flux": ({"double_blocks.0.img_attn.qkv.weight": (3, 1), "single_blocks.0.linear1.weight": (3, 1),
              "img_in.weight": (1, 1)},
             Kind.FLUX, f"`flux.safetensors` is a Flux checkpoint; {ONLY}"),
    "inpaint_sd1": ({CONV_IN: (4, 9, 3, 3), TO_K: (4, 8), CLIP_TOKENS: (10, 8)}, Kind.INPAINTING,
                    "`inpaint_sd1.safetensors` is an SD 1.x inpainting checkpoint (its UNet takes 9 input channels); "
                    "Hypercord renders from text only and cannot use inpainting models. Install the model's regular "
                    "(non-inpainting) version instead."),
    "inpaint_sd2": ({CONV_IN: (4, 9, 3, 3), TO_K: (4, 8), OPENCLIP_TOKENS: (10, 8)}, Kind.INPAINTING,
                    "`inpaint_sd2.safetensors` is an SD 2.x inpainting checkpoint (its UNet takes 9 input channels); "
                    "Hypercord renders from text only and cannot use inpainting models. Install the model's regular "
                    "(non-inpainting) version instead."),
    "pix2pix": ({CONV_IN: (4, 8, 3, 3), TO_K: (4, 768), CLIP_TOKENS: (10, 768)}, Kind.OTHER_INPUTS,
                "`pix2pix.safetensors` is an SD 1.x model whose UNet takes 8 input channels (a depth, instruct-pix2pix "
                "or upscaler model); Hypercord renders from text only, with 4-channel UNets. Install a regular SD 1.x "
                "or SD 2.x checkpoint instead."),
    "unet_only": ({CONV_IN: (4, 4, 3, 3), TO_K: (4, 1024)}, Kind.UNET_ONLY,
                  "`unet_only.safetensors` holds only an SD 2.x UNet, without the text encoder a checkpoint needs. "
                  "Install the complete checkpoint (UNet, text encoder and VAE in one file) instead."),
    "lora": ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
              "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4)},
             Kind.LORA, "`lora.safetensors` is a LoRA for SD 1.x, not a checkpoint. Install it as a LoRA instead; "
                        "prompts apply it with <lora:NAME:weight>."),
    "loha": ({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": (320, 4),
              "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_b": (4, 320)},
             Kind.LORA, "`loha.safetensors` is a LyCORIS (LoHa), not a checkpoint. Install it as a LoRA instead; "
                        "prompts apply it with <lora:NAME:weight>."),
    "embedding": ({"emb_params": (2, 768)}, Kind.EMBEDDING,
                  "`embedding.safetensors` is a textual-inversion embedding for SD 1.x, not a checkpoint. Install it "
                  "as an embedding instead; prompts use it by its name."),
    "vae": ({"encoder.conv_in.weight": (1, 3, 3, 3), "decoder.conv_in.weight": (1, 4, 3, 3)}, Kind.VAE,
            "`vae.safetensors` is a VAE on its own, not a checkpoint. Put it in models/vae/ and choose it as a "
            "checkpoint's VAE instead."),
    "unknown": ({"transformer.h.0.attn.weight": (2, 2)}, Kind.UNKNOWN,
                "`unknown.safetensors` is not a checkpoint Hypercord knows: its 1 tensor matches neither the SD 1.x nor "
                "the SD 2.x layout of A1111's single-file checkpoints. Install an SD 1.x or SD 2.x checkpoint instead."),
}


@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    write_sd1(folder / "anything-v3.safetensors")
    (folder / "sub").mkdir()
    write_sd2(folder / "sub" / "v2-1_768.safetensors")
    return {"sd1": folder / "anything-v3.safetensors", "sd2": folder / "sub" / "v2-1_768.safetensors", "root": folder}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_headers_are_named_and_refused_exactly(tmp_path: Path, name: str) -> None:
    tensors, kind, message = HEADERS[name]
    info = inspect_checkpoint(write_tensors(tmp_path / f"{name}.safetensors", tensors))
    assert (info.kind, info.refusal, info.usable, info.hashes) == (kind, message, False, None)


def test_sd1_single_file_is_detected_with_a1111_names_and_hashes(real_files: dict[str, Path]) -> None:
    path = real_files["sd1"]
    info = inspect_checkpoint(path, root=real_files["root"])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    old = hashlib.sha256(path.read_bytes()[1 << 20:(1 << 20) + (1 << 16)]).hexdigest()[:8]
    assert (info.kind, info.family, info.what, info.refusal) == (Kind.CHECKPOINT, "sd1", "SD 1.x checkpoint", None)
    assert (info.name, info.sd_checkpoint_name, info.format, info.size) == \
        ("anything-v3", "anything-v3", "safetensors", path.stat().st_size)
    assert (info.prediction, info.prediction_source, info.context_dim, info.has_vae) == ("epsilon", "family", 32, True)
    assert (info.model_hash, info.hashes and info.hashes.sha256, info.hashes and info.hashes.autov1) == \
        (digest[:10], digest, old)


def test_sd2_single_file_leaves_prediction_to_the_load(real_files: dict[str, Path]) -> None:
    info = inspect_checkpoint(real_files["sd2"], root=real_files["root"], with_hashes=False)
    assert (info.kind, info.family, info.what, info.context_dim) == (Kind.CHECKPOINT, "sd2", "SD 2.x checkpoint", 64)
    assert (info.prediction, info.prediction_source, info.hashes) == (None, "", None)
    # A1111's model_name: the path under the checkpoint folder, separators as "_" (what hypernets record).
    assert (info.name, info.sd_checkpoint_name) == ("v2-1_768", "sub_v2-1_768")


def test_prediction_comes_from_override_then_a1111_yaml(tmp_path: Path, real_files: dict[str, Path]) -> None:
    path = tmp_path / "v2.safetensors"
    path.write_bytes(real_files["sd2"].read_bytes())
    assert inspect_checkpoint(path, prediction="v_prediction", with_hashes=False).prediction == "v_prediction"
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n', encoding="utf-8")
    info = inspect_checkpoint(path, with_hashes=False)
    assert (info.prediction, info.prediction_source) == ("v_prediction", "yaml")
    path.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n", encoding="utf-8")
    assert inspect_checkpoint(path, with_hashes=False).prediction == "epsilon"
    override = inspect_checkpoint(path, prediction="v_prediction", with_hashes=False)
    assert (override.prediction, override.prediction_source) == ("v_prediction", "override")
    with pytest.raises(ValueError, match="unknown prediction type 'v'; use auto, epsilon or v_prediction"):
        inspect_checkpoint(path, prediction="v")


def test_content_decides_not_the_suffix(tmp_path: Path, real_files: dict[str, Path]) -> None:
    renamed = tmp_path / "model.ckpt"
    renamed.write_bytes(real_files["sd1"].read_bytes())  # a safetensors file someone named .ckpt
    assert inspect_checkpoint(renamed, with_hashes=False).family == "sd1"


def test_pickled_checkpoints_are_refused_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zipped = tmp_path / "v1-5-pruned.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4)}}, zipped)
    legacy = tmp_path / "old.pt"
    legacy.write_bytes(b"\x80\x02}q\x00.")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    for path in (zipped, legacy):
        info = inspect_checkpoint(path)
        assert (info.refusal, info.format, info.hashes) == (PICKLE.format(path.name), "other", None)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "`x.safetensors` is empty (0 bytes). Download it again."),
    (b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>",
     "`x.safetensors` is a web page (HTML), not a checkpoint. Download the checkpoint again with its direct link."),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 2132625894\n",
     "`x.safetensors` is a Git LFS pointer, not the checkpoint itself. Download the real file (on Hugging Face, the "
     "link with /resolve/ in it)."),
    (b"GGUF\x03\x00\x00\x00" + bytes(64),
     "`x.safetensors` is not a safetensors file (it does not start with a safetensors header). Download it again, or "
     "convert it to .safetensors."),
    (struct.pack("<Q", 12) + b"{not json!!}",
     "`x.safetensors` cannot be read: its safetensors header is not valid JSON. Download it again."),
])
def test_files_that_are_not_safetensors_say_what_they_are(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    assert inspect_checkpoint(path).refusal == message


def test_parts_that_do_not_fit_are_a_mismatch(tmp_path: Path) -> None:
    state = checkpoint_state(tiny_models("sd1"), "sd1")
    state[CLIP_TOKENS] = torch.zeros(49408, 16)  # a text encoder narrower than the UNet's cross-attention
    info = inspect_checkpoint(save_checkpoint(tmp_path / "franken.safetensors", state))
    assert info.refusal == ("`franken.safetensors` looks like an SD 1.x checkpoint, but its UNet expects a 32-wide text "
                            "context while its text encoder is 16 wide; the file may be damaged or a variant Hypercord "
                            "does not know. Download it again or install another checkpoint.")


def test_diffusers_folders_are_named_by_their_configs(tmp_path: Path) -> None:
    xl = tmp_path / "sdxl-base"
    (xl / "unet").mkdir(parents=True)
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}), encoding="utf-8")
    (xl / "unet" / "config.json").write_text(json.dumps({"addition_embed_type": "text_time",
                                                         "cross_attention_dim": 2048}), encoding="utf-8")
    info = inspect_checkpoint(xl)
    assert (info.kind, info.format, info.refusal) == (Kind.SDXL_BASE, "diffusers",
                                                      f"`sdxl-base` is an SDXL base checkpoint; {ONLY}")
    empty = tmp_path / "photos"
    empty.mkdir()
    assert inspect_checkpoint(empty).refusal == (
        "`photos` is a folder but not a diffusers Stable Diffusion pipeline (it needs a model_index.json and unet, vae, "
        "text_encoder, tokenizer and scheduler folders). Install a single .safetensors file or a complete diffusers "
        "folder instead.")


def test_a_missing_path_is_not_a_refusal(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        inspect_checkpoint(tmp_path / "gone.safetensors")
