"""The built-in tiny checkpoint: offline, deterministic, SD1.x attention widths, SD1.5's own tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.hypernet import load
from engine.worker.tiny import CONTEXT_DIM, build_tiny

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks"


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


def _attention_inputs(unet: torch.nn.Module) -> list[tuple[int, bool]]:
    """(width of the k/v input, is cross-attention) for every attention layer."""
    return [(m.to_k.in_features, m.is_cross_attention) for m in unet.modules() if hasattr(m, "is_cross_attention")]


def test_unet_keeps_sd1_attention_widths(tiny):
    layers = _attention_inputs(tiny.unet)
    assert {w for w, cross in layers if not cross} == {320, 640}
    assert {w for w, cross in layers if cross} == {CONTEXT_DIM} == {768}
    assert tiny.unet.config.cross_attention_dim == tiny.text_encoder.config.hidden_size == 768


def test_real_a1111_file_widths_find_their_layers(tiny):
    # A1111 files hold modules keyed by width; every size of an SD1 file except 1280 must meet a tiny layer.
    widths = {w for w, _ in _attention_inputs(tiny.unet)}
    relu = load(FIXTURES / "pub_relu_11_320_ln.pt")
    swish = load(FIXTURES / "pub_swish_1-0.1-1_768_actout.pt")
    assert set(relu.sizes) <= widths
    assert set(swish.sizes) <= widths


def test_builds_are_identical_and_leave_the_global_rng_alone(tiny):
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    again = build_tiny()
    assert torch.equal(torch.rand(3), expected_next)
    for a, b in zip(tiny.unet.state_dict().values(), again.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(tiny.text_encoder.state_dict().values(), again.text_encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert again.unet is not tiny.unet  # engines mutate their modules; each build is its own


def test_tokenizer_is_sd15s_and_every_token_has_its_own_vector(tiny):
    tok = tiny.tokenizer
    assert tok.model_max_length == 77 and len(tok) == 49408
    assert tok("water elemental woman").input_ids == [49406, 1573, 2084, 3448, 2308, 49407]  # SD1.5 CLIP ids
    assert tok.pad_token_id == tok.eos_token_id  # SD1's CLIP pads with the end token
    table = tiny.text_encoder.get_input_embeddings().weight
    assert table.shape == (49408, CONTEXT_DIM) == (tiny.text_encoder.config.vocab_size, 768)
    assert torch.unique(table, dim=0).shape[0] == 49408


def test_hidden_states_average_away_from_zero(tiny):
    # A1111's emphasis rescales by the ratio of two means; a mean near 0 would make (cat:1.1) explode.
    ids = tiny.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert abs(float(tiny.text_encoder(ids)[0].mean())) > 0.1


def test_different_prompts_give_different_embeddings(tiny):
    tok = tiny.tokenizer

    def embed(text: str) -> torch.Tensor:
        ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return tiny.text_encoder(ids)[0]

    a, b = embed("a red dragon"), embed("a blue castle")
    assert a.shape == (1, 77, 768)
    assert not torch.allclose(a, b)
    assert torch.equal(embed("a red dragon"), a)
    assert torch.isfinite(a).all()
