"""The "what is this file" detector: kind and base model from names and shapes, and intake's refusal reasons."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from engine.lora import compatibility_problem, describe_shapes, read_safetensors_shapes

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "lora"
ATTN2 = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2"


def kohya(context: int, text: int | None, extra: dict | None = None) -> dict[str, tuple[int, ...]]:
    shapes = {f"{ATTN2}_to_k.lora_down.weight": (4, context), f"{ATTN2}_to_k.lora_up.weight": (640, 4),
              f"{ATTN2}_to_q.lora_down.weight": (4, 640)}
    if text is not None:
        shapes["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = (4, text)
    return shapes | (extra or {})


def test_sd1_lora_fits_sd1_and_not_sdxl_or_sd2() -> None:
    info = describe_shapes(kohya(768, 768))
    assert (info.family, info.context_width, info.text_width, info.label) == ("sd1", 768, 768, "LoRA for SD 1.x")
    assert compatibility_problem(info, context_width=768, text_width=768) is None
    assert compatibility_problem(info, context_width=1024) == (
        "is made for SD 1.x (cross-attention width 768); this model's is 1024")


def test_sdxl_lora_is_refused_for_an_sd15_model() -> None:
    shapes = kohya(2048, None, {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
                                "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280)})
    info = describe_shapes(shapes)
    assert (info.family, info.context_width, info.text_width) == ("sdxl", 2048, 768)
    assert compatibility_problem(info, context_width=768) == (
        "is an SDXL LoRA (has a second text encoder (lora_te2_); cross-attention context width 2048; "
        "text-encoder width 768); this model's cross-attention width is 768")
    assert compatibility_problem(info, context_width=2048) is None


def test_sd2_lora_by_its_widths_and_an_unshaped_file_by_its_metadata() -> None:
    info = describe_shapes(kohya(1024, 1024))
    assert info.family == "sd2"
    assert compatibility_problem(info, context_width=768, text_width=768) == (
        "is made for SD 2.x (cross-attention width 1024); this model's is 768")
    text_only = describe_shapes({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1024)})
    assert compatibility_problem(text_only, context_width=768, text_width=768) == (
        "is made for SD 2.x (text-encoder width 1024); this model's is 768")
    norm_only = describe_shapes({"lora_unet_conv_in.diff": (320, 4, 3, 3)}, {"ss_base_model_version": "sdxl_base_v1-0"})
    assert norm_only.family == "sdxl" and norm_only.evidence == ("metadata ss_base_model_version=sdxl_base_v1-0",)


def test_peft_files_and_unsupported_types_get_a_reason() -> None:
    peft = describe_shapes({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 768),
                            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (640, 4)})
    assert peft.naming == {"peft"} and peft.context_width == 768
    assert compatibility_problem(peft, context_width=768) == (
        "uses diffusers/PEFT key names, which A1111 does not read (it would change nothing)")
    oft = describe_shapes({f"{ATTN2}_to_k.oft_blocks": (4, 160, 160)})
    assert compatibility_problem(oft, context_width=768) == "holds OFT modules, which are not supported"


@pytest.mark.parametrize(("stem", "types", "naming"), [
    ("pub_kohya_r4_a2", {"lora"}, {"kohya"}),
    ("pub_locon_kohya_r4c2", {"lora", "locon"}, {"kohya"}),
    ("pub_locon_tucker_r4", {"lora", "locon", "tucker"}, {"kohya"}),
    ("pub_loha_r4_a2", {"loha"}, {"kohya"}),
    ("pub_lokr_w1_w2lr", {"lokr"}, {"kohya"}),
    ("pub_full_and_norm", {"full", "norm"}, {"kohya"}),
    ("pub_dora_r4", {"lora", "dora"}, {"kohya"}),
    ("pub_compvis_names", {"lora", "locon", "norm"}, {"compvis", "kohya"}),
    ("pub_peft_diffusers", {"lora"}, {"peft"}),
])
def test_fixture_files_from_their_header_alone(stem: str, types: set, naming: set) -> None:
    path = FIXTURES / "loras" / f"{stem}.safetensors"
    shapes, metadata = read_safetensors_shapes(path)
    with safe_open(path, "pt") as handle:
        assert shapes == {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
        assert metadata == handle.metadata()
    info = describe_shapes(shapes, metadata)
    assert (set(info.types), set(info.naming)) == (types, naming)


def test_a_file_that_is_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors_shapes(path)
