"""Files we refuse, with their exact one-line reasons, and the loaders' boundaries (safetensors only in the
engine; ``torch.load(weights_only=True)`` only for the checker / intake)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import engine.lora as lora
from engine.lora.loaders import read_file_for_checker

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "lora"
Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def refusal(state: dict, parse=lora.parse_state_dict) -> str:
    with pytest.raises(lora.LoraFormatError) as info:
        parse(state, "t")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_module_whose_keys_fit_no_type_refuses_the_file() -> None:
    state = {f"{Q}.lora_down.weight": torch.ones(2, 8), f"{Q}.alpha": torch.tensor(1.0),
             "lora_unet_conv_in.lora_up.weight": torch.ones(8, 2),
             "lora_unet_conv_in.lora_down.weight": torch.ones(2, 4, 3, 3)}
    assert refusal(state) == f"t: module {Q} has keys no LoRA type accepts: alpha, lora_down.weight"


def test_keys_of_modules_the_model_lacks_are_ignored_even_when_malformed() -> None:
    state = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_7_attn1_to_q.lora_down.weight": torch.ones(2, 8),
             f"{Q}.lora_up.weight": torch.ones(8, 2), f"{Q}.lora_down.weight": torch.ones(2, 8)}
    net = lora.parse_state_dict(state, "t")
    assert net.ignored_keys == ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_7_attn1_to_q.lora_down.weight",)
    assert net.targets() == {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"}


def test_lora_factors_on_a_norm_refuse_the_file_but_other_updates_on_embeddings_are_ignored() -> None:
    norm = "lora_unet_down_blocks_0_resnets_0_norm1"
    assert refusal({f"{norm}.lora_up.weight": torch.ones(8, 2), f"{norm}.lora_down.weight": torch.ones(2, 8)}) == (
        f"t: module {norm} puts LoRA factors on unet.down_blocks.0.resnets.0.norm1, which is not a Linear or Conv2d layer")
    emb = "lora_te1_text_model_embeddings_token_embedding"
    net = lora.parse_state_dict({f"{emb}.diff": torch.ones(128, 32)}, "t")
    assert net.targets() == set() and net.ignored_keys == (f"{emb}.diff",)


@pytest.mark.parametrize(("parts", "kind"), [
    ({"a1.weight": (2, 8), "a2.weight": (8, 2), "b1.weight": (2, 8), "b2.weight": (8, 2), "alpha": ()}, "GLORA"),
    ({"oft_blocks": (4, 2, 2)}, "OFT"),
])
def test_glora_and_oft_are_refused(parts: dict, kind: str) -> None:
    state = {f"{Q}.{k}": torch.ones(shape) for k, shape in parts.items()}
    assert refusal(state) == f"t: module {Q} is a {kind} module, which is not supported"


def test_ia3_without_on_input_and_non_tensor_entries_are_refused() -> None:
    assert refusal({f"{Q}.weight": torch.ones(8)}) == f"t: module {Q} (ia3) lacks its on_input key"
    assert refusal({f"{Q}.lora_up.weight": [1, 2]}) == (
        f"t: entry '{Q}.lora_up.weight' is not a named tensor (a LoRA file is a flat dict of tensors)")


def test_a_broken_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(lora.LoraFormatError) as info:
        lora.load_lora_safetensors(path)
    assert str(info.value) == "broken: not a readable safetensors file (SafetensorError)"


def test_the_engine_loader_reads_safetensors_whatever_the_name(tmp_path: Path) -> None:
    path = tmp_path / "pickled.safetensors"
    torch.save({f"{Q}.lora_up.weight": torch.ones(8, 2)}, path)
    with pytest.raises(lora.LoraFormatError, match=r"^pickled: not a readable safetensors file"):
        lora.load_lora_safetensors(path)


def test_intake_validator_refuses_non_finite_values_and_files_that_change_nothing() -> None:
    good = {f"{Q}.lora_up.weight": torch.ones(8, 2), f"{Q}.lora_down.weight": torch.ones(2, 8)}
    target = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert lora.lora_from_state_dict(good, "ok").targets() == {target}
    bad = dict(good, **{f"{Q}.alpha": torch.tensor(float("nan"))})
    assert refusal(bad, lora.lora_from_state_dict) == f"t: {Q}.alpha holds NaN or infinite values"
    peft = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.ones(2, 8),
            "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.ones(8, 2)}
    assert refusal(peft, lora.lora_from_state_dict) == (
        "t: no key names a module of the model (2 keys ignored, "
        "e.g. unet.down_blocks.0.attentions.0.proj_in.lora_A.weight); A1111 would apply nothing")
    assert lora.parse_state_dict(peft, "t").targets() == set()  # A1111 loads it and applies nothing
    with pytest.raises(lora.LoraFormatError, match=r"^t: not a dict of tensors \(got list\)$"):
        lora.lora_from_state_dict([], "t")  # type: ignore[arg-type]


def test_checker_reader_loads_pt_with_weights_only(tmp_path: Path) -> None:
    source = FIXTURES / "loras" / "pub_kohya_r4_a2.safetensors"
    state, metadata = read_file_for_checker(source)
    assert metadata["ss_output_name"] == "pubStyle"
    pt = tmp_path / "same.pt"
    torch.save({"state_dict": state}, pt)
    via_pt, via_st = lora.load(pt), lora.load(source)
    name = "unet.down_blocks.1.attentions.0.proj_in"
    w = torch.zeros(16, 16, 1, 1)
    assert torch.equal(lora.layer_delta(via_pt, name, w, 1.0), lora.layer_delta(via_st, name, w, 1.0))

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        lora.load(evil)
