"""LoRAs per row in the tiny model's renders: mixed batches with hypernets stay exact, multipliers mean A1111's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.hypernet import load
from engine.lora import load_lora_safetensors, table_for_models
from engine.protocol import GenerateRequest, HypernetRef
from engine.render_settings import LoraRef
from engine.worker.renderer import Renderer, RequestError
from tests.loras import write_tiny_lora
from tests.requests import request as make_request

HYPERNET = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks" / "pub_swish_1-0.1-1_768_actout.pt"
H = HypernetRef("swishy", "e" * 64, 0.8)
X, C = "a" * 64, "c" * 64  # LoRA X (linear layers, text encoder too), LoCon C (also a conv)


@pytest.fixture(scope="module")
def engine() -> Renderer:
    return Renderer.load("tiny", device="cpu")


@pytest.fixture(scope="module")
def models(engine, tmp_path_factory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("loras")
    table = table_for_models(engine.unet, engine.text_encoder)
    loras = {X: load_lora_safetensors(write_tiny_lora(folder / "x.safetensors", seed=1), key=X, table=table),
             C: load_lora_safetensors(write_tiny_lora(folder / "c.safetensors", seed=2, conv=True, text_encoder=False),
                                      key=C, table=table)}
    return {H.sha256: load(HYPERNET)}, loras


def request(job_id: int = 1, prompt: str = "a lighthouse", loras: tuple[LoraRef, ...] = (), **kw) -> GenerateRequest:
    tags = " ".join(f"<lora:{x.name}:{x.te}:{x.unet}>" for x in loras)
    return make_request(job_id, 7, f"{prompt} {tags}".strip(), loras=loras,
                        **{"seed": 11, "steps": 2, "width": 64, "height": 64, "sampler": "Euler a", **kw})


def pixels(engine: Renderer, models, *reqs: GenerateRequest) -> list[np.ndarray]:
    hypernets, loras = models
    return [np.asarray(out.images[0]).astype(np.int16) for out in engine.generate(list(reqs), hypernets, loras=loras)]


def test_a_lora_changes_the_image_and_multiplier_zero_is_no_lora(engine, models):
    [plain] = pixels(engine, models, request())
    [with_lora] = pixels(engine, models, request(loras=(LoraRef("x", X, 0.8, 0.8),)))
    [zero] = pixels(engine, models, request(loras=(LoraRef("x", X, 0.0, 0.0),)))
    assert np.abs(with_lora - plain).max() > 0
    assert np.array_equal(zero, plain)


def test_text_encoder_and_unet_multipliers_act_separately(engine, models):
    both, unet_only, te_only = pixels(engine, models, request(1, loras=(LoraRef("x", X, 0.8, 0.8),)),
                                      request(2, loras=(LoraRef("x", X, 0.0, 0.8),)),
                                      request(3, loras=(LoraRef("x", X, 0.8, 0.0),)))
    [plain] = pixels(engine, models, request())
    assert np.abs(both - unet_only).max() > 0 and np.abs(both - te_only).max() > 0
    assert np.abs(te_only - plain).max() > 0 and np.abs(unet_only - plain).max() > 0


def test_a_mixed_batch_of_loras_and_hypernets_equals_each_alone(engine, models):
    reqs = [
        request(1, loras=(LoraRef("x", X, 0.8, 0.8),)),                                   # A: LoRA X at 0.8
        request(2, prompt="a lighthouse <hypernet:swishy:0.8>", hypernets=(H,)),          # B: hypernet H
        request(3, prompt="a lighthouse <hypernet:swishy:0.8>", hypernets=(H,),           # C: both, and a LoCon
                loras=(LoraRef("x", X, 0.5, 1.1), LoraRef("c", C, 1.0, 1.0))),
        request(4),                                                                       # D: none
    ]
    batched = pixels(engine, models, *reqs)
    for req, image in zip(reqs, batched, strict=True):
        [alone] = pixels(engine, models, req)
        assert np.abs(alone - image).max() <= 1
    assert len({image.tobytes() for image in batched}) == 4


def test_a_lora_that_is_not_loaded_is_refused_naming_the_job(engine, models):
    hypernets, _ = models
    with pytest.raises(RequestError, match=r"^LoRA 'x' \(aaaaaaaaaa\) is not loaded$") as err:
        engine.generate([request(5, loras=(LoraRef("x", X, 1.0, 1.0),))], hypernets, loras={})
    assert err.value.job_id == 5


def test_lora_conditioning_is_cached_per_lora_set(engine, models):
    _, loras = models
    from engine.conditioning import PromptRequest
    from engine.lora import LoraUse

    use = (LoraUse(loras[X], 1.0, 0.7),)
    plain, styled, again = engine.encoder.encode([PromptRequest("a cat", 2), PromptRequest("a cat", 2, loras=use),
                                                  PromptRequest("a cat", 2, loras=use)])
    assert not torch.equal(plain[0].schedule[0].cond, styled[0].schedule[0].cond)
    assert torch.equal(styled[0].schedule[0].cond, again[0].schedule[0].cond)
