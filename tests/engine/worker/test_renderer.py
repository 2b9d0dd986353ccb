"""The generation pipeline on the tiny model (CPU): seeds, per-row batching, hypernet chains, samplers, PNG text."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.hypernet import load
from engine.infotext import parse_infotext
from engine.protocol import GenerateRequest, HypernetRef
from engine.samplers import SAMPLER_NAMES
from engine.worker.renderer import Cancelled, Renderer, RequestError
from tests.requests import request as make_request

# diffusers' schedulers hand tensors to numpy 2.x functions that warn about the array protocol; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks"
FILES = {
    "relu320": FIXTURES / "pub_relu_11_320_ln.pt",
    "tanh320": FIXTURES / "zoo" / "pub_zoo_tanh.pt",
    "swish768": FIXTURES / "pub_swish_1-0.1-1_768_actout.pt",
    "gelu1024": FIXTURES / "pub_gelu_1-0.05-1_1024_sd2.pt",
}


@pytest.fixture(scope="module")
def engine() -> Renderer:
    return Renderer.load("tiny", device="cpu")


@pytest.fixture(scope="module")
def nets() -> dict[str, object]:
    return {_digest(key): load(path) for key, path in FILES.items()}


def _digest(key: str) -> str:
    return hashlib.sha256(FILES[key].read_bytes()).hexdigest()


def ref(key: str, multiplier: float = 1.0) -> HypernetRef:
    return HypernetRef(name=FILES[key].stem, sha256=_digest(key), multiplier=multiplier)


def request(job_id: int = 1, **kw: object) -> GenerateRequest:
    base: dict[str, object] = dict(prompt="water elemental woman", seed=42, steps=2, width=64, height=64)
    return make_request(job_id, 7, **{**base, **kw})


def changed(req: GenerateRequest, **changes: object) -> GenerateRequest:
    return dataclasses.replace(req, settings=dataclasses.replace(req.settings, **changes))  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def render_one(engine: Renderer, nets: dict[str, object], **kw: object) -> np.ndarray:
    [out] = engine.generate([request(**kw)], nets)
    return pixels(out.images[0])


def test_engine_describes_itself(engine):
    assert engine.context_dim == 768
    assert engine.attention_widths == {320, 640}
    assert engine.device == torch.device("cpu")
    assert engine.dtype == engine.hypernet_dtype == torch.float32
    assert engine.processor_count > 0


def test_same_seed_repeats_bit_identically(engine, nets):
    first = engine.generate([request(hypernets=(ref("relu320", 0.7),))], nets)[0]
    again = engine.generate([request(hypernets=(ref("relu320", 0.7),))], nets)[0]
    assert first.pngs == again.pngs
    assert first.images[0].size == (64, 64)
    assert first.seeds == [42]


def test_different_seeds_differ(engine, nets):
    assert np.abs(render_one(engine, nets, seed=1) - render_one(engine, nets, seed=2)).max() > 10


# Per-row generators (Euler a) and per-row Brownian trees (DPM++ SDE); 3 steps so that sampler noise matters.
@pytest.mark.parametrize(("sampler", "count"), [("Euler a", 2), ("DPM++ SDE Karras", 1)])
def test_batch_equals_each_request_rendered_alone(engine, nets, sampler, count):
    common = {"sampler": sampler, "steps": 3}
    reqs = [
        request(1, prompt="a cat", seed=5, cfg_scale=5.0, count=count, hypernets=(ref("relu320", 0.8),), **common),
        request(2, prompt="red dragon", negative_prompt="blurry", seed=77, cfg_scale=9.0,
                hypernets=(ref("swish768", 1.2), ref("tanh320", 0.5)), **common),
        request(3, prompt="a castle", seed=5, cfg_scale=7.0, **common),
    ]
    batched = engine.generate(reqs, nets)
    assert [o.job_id for o in batched] == [1, 2, 3]
    assert [o.seeds for o in batched] == [[5, 6][:count], [77], [5]]
    assert np.abs(pixels(batched[0].images[0]) - pixels(batched[2].images[0])).max() > 0  # same seed, other prompt
    for req, out in zip(reqs, batched, strict=True):
        [alone] = engine.generate([req], nets)
        for a, b in zip(alone.images, out.images, strict=True):
            assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_second_image_of_a_count_equals_its_seed_alone(engine, nets):
    [two] = engine.generate([request(seed=10, count=2)], nets)
    assert two.seeds == [10, 11]
    assert np.abs(pixels(two.images[1]) - render_one(engine, nets, seed=11)).max() <= 1


def test_multiplier_zero_is_bit_identical_to_no_hypernet(engine, nets):
    plain = engine.generate([request()], nets)[0]
    zero = engine.generate([request(hypernets=(ref("relu320", 0.0), ref("swish768", 0.0)))], nets)[0]
    assert np.array_equal(pixels(plain.images[0]), pixels(zero.images[0]))


@pytest.mark.parametrize("key", ["relu320", "swish768"])  # self-attention and cross-attention widths
def test_nonzero_multiplier_changes_the_image(engine, nets, key):
    plain = render_one(engine, nets)
    changed = render_one(engine, nets, hypernets=(ref(key, 1.0),))
    assert np.abs(plain - changed).max() > 0
    stronger = render_one(engine, nets, hypernets=(ref(key, 2.0),))
    assert np.abs(stronger - changed).max() > 0


def test_chain_order_matters(engine, nets):
    ab = render_one(engine, nets, hypernets=(ref("relu320"), ref("tanh320")))
    ba = render_one(engine, nets, hypernets=(ref("tanh320"), ref("relu320")))
    assert np.abs(ab - ba).max() > 0


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_renders_and_reports_each_step(engine, nets, sampler):
    steps: list[tuple[int, int]] = []
    [out] = engine.generate([request(sampler=sampler, steps=2)], nets, on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 2), (2, 2)]  # one report per step, also for samplers that run the UNet twice a step
    image = pixels(out.images[0])
    assert image.shape == (64, 64, 3)
    assert image.std() > 0


def test_unknown_sampler_lists_valid_names(engine, nets):
    with pytest.raises(ValueError, match="unknown sampler 'Euler b'") as err:
        engine.generate([request(sampler="Euler b")], nets)
    for name in SAMPLER_NAMES:
        assert name in str(err.value)


def test_png_carries_a1111_parameters(engine, nets):
    typed = "water elemental hypernet:pub_relu_11_320_ln:0.7 woman"
    [out] = engine.generate([request(prompt=typed, negative_prompt="ugly, blurry", cfg_scale=6.5, seed=1234,
                                     sampler="DPM++ 2M Karras", hypernets=(ref("relu320", 0.7),))], nets)
    text = Image.open(io.BytesIO(out.pngs[0])).text["parameters"]
    params = parse_infotext(text)
    assert params["Prompt"] == "water elemental <hypernet:pub_relu_11_320_ln:0.7> woman"  # as typed, A1111's tag form
    assert params["Negative prompt"] == "ugly, blurry"
    assert (params["Steps"], params["Sampler"], params["CFG scale"]) == ("2", "DPM++ 2M Karras", "6.5")
    assert (params["Seed"], params["Size"], params["Model"]) == ("1234", "64x64", "tiny")
    decoded = Image.open(io.BytesIO(out.pngs[0])).convert("RGB")
    assert np.array_equal(pixels(decoded), pixels(out.images[0]))


def test_hypernet_for_another_model_family_warns(engine, nets):
    plain = engine.generate([request()], nets)[0]
    [out] = engine.generate([request(hypernets=(ref("gelu1024", 1.0),))], nets)
    assert len(out.warnings) == 1
    assert "pub_gelu_1-0.05-1_1024_sd2" in out.warnings[0]
    assert "SD 2.x" in out.warnings[0] and "no effect" in out.warnings[0]
    assert np.array_equal(pixels(out.images[0]), pixels(plain.images[0]))
    assert engine.generate([request(hypernets=(ref("relu320"),))], nets)[0].warnings == []


def test_long_prompt_is_truncated_with_a_warning_for_each_job(engine, nets):
    outs = engine.generate([request(1, prompt="zebra " * 100), request(2, prompt="zebra " * 100, seed=3),
                            request(3, prompt="zebra")], nets)
    assert [any("prompt is longer than 75 tokens" in w for w in o.warnings) for o in outs] == [True, True, False]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 72}, "cannot share a batch"),
        ({"steps": 3}, "cannot share a batch"),
    ],
)
def test_incompatible_batches_are_refused(engine, nets, change, message):
    with pytest.raises(RequestError, match=message):
        engine.generate([request(1), changed(request(2), **change)], nets)


def test_one_job_twice_in_a_batch_is_refused(engine, nets):
    with pytest.raises(RequestError, match="same job id"):
        engine.generate([request(1), request(1, seed=3)], nets)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 60}, "multiples of 8"),
        ({"steps": 0}, "at least 1"),
        ({"count": 0}, "count must be at least 1"),
        ({"seed": -1}, "seeds must lie"),
        ({"cfg_scale": float("nan")}, "finite"),
        ({"hypernets": (HypernetRef("ghost", "0" * 64, 1.0),)}, "'ghost'.*not loaded"),
    ],
)
def test_bad_requests_are_refused_before_rendering(engine, nets, change, message):
    with pytest.raises(ValueError, match=message):
        engine.generate([request(**change)], nets)


def test_should_stop_true_cancels_the_batch(engine, nets):
    seen: list[int] = []
    with pytest.raises(Cancelled):
        engine.generate([request(steps=3)], nets, should_stop=lambda step: seen.append(step) or step >= 1)
    assert seen == [0, 1]


def test_cancelling_one_job_keeps_the_others_exact(engine, nets):
    reqs = [request(1, seed=3, hypernets=(ref("relu320"),)), request(2, prompt="a cat", seed=9, steps=2)]
    outs = engine.generate(reqs, nets, should_stop=lambda step: {1} if step >= 1 else set())
    assert [o.job_id for o in outs] == [2]
    [alone] = engine.generate([reqs[1]], nets)
    assert np.abs(pixels(outs[0].images[0]) - pixels(alone.images[0])).max() <= 1
    with pytest.raises(Cancelled):
        engine.generate(reqs, nets, should_stop=lambda step: {1, 2})


def test_load_errors_are_clear():
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        Renderer.load("/nonexistent/model.safetensors", device="cpu")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        Renderer.load("./no/such/thing", device="cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        Renderer.load("tiny", device="cpu", dtype="float64")


