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
from engine.sampling import evaluation_counts
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
    # One report per sampler step, also for samplers that run the UNet twice a step; A1111's DDIM/PLMS/UniPC grids
    # can have a step fewer than asked for.
    total = len(evaluation_counts(sampler, 2))
    assert steps == [(i, total) for i in range(1, total + 1)] and total in (1, 2)
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


def test_a_200_token_prompt_renders_whole_and_without_a_warning(engine, nets):
    words = " ".join(f"word{i}" for i in range(100))  # two tokens a word: 200 tokens, three chunks of 75
    [long] = engine.generate([request(prompt=words)], nets)
    [first_chunk] = engine.generate([request(prompt=" ".join(words.split()[:37]))], nets)
    assert long.warnings == []
    assert np.abs(pixels(long.images[0]) - pixels(first_chunk.images[0])).max() > 0  # the rest was not ignored


def test_an_overlong_prompt_is_refused_naming_its_job_and_the_limit(engine, nets):
    with pytest.raises(RequestError, match=r"^the negative prompt is too long: it needs 11 chunks of 75 tokens .*at most "
                                           r"8 are allowed; shorten it$") as err:
        engine.generate([request(9, negative_prompt="zebra, " * 400)], nets)
    assert err.value.job_id == 9


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
        ({"steps": 0}, "steps must lie between 1 and 1000"),
        ({"count": 0}, "count must be at least 1"),
        ({"seed": -1}, "seeds must lie"),
        ({"subseed": -5, "subseed_strength": 0.5}, "variation seeds must lie"),
        ({"prompt": "(cat:1.2.3)"}, "prompt cannot be used: emphasis weight '1.2.3' is not a number"),
        ({"clip_skip": 3}, "clip skip 3 is more than"),
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




# ---- A1111 prompt semantics in the render -------------------------------------------------------------------------


def latents_by_step(engine: Renderer, nets: dict[str, object], **kw: object) -> list[torch.Tensor]:
    """The latents after each sampler step of one request."""
    seen: list[torch.Tensor] = []
    engine.generate([request(**kw)], nets, on_report=lambda report: seen.append(report.x.clone()))
    return seen


def test_weight_one_is_the_plain_prompt_and_other_weights_are_not(engine, nets):
    assert np.array_equal(render_one(engine, nets, prompt="a (cat:1.0)"), render_one(engine, nets, prompt="a cat"))
    assert np.abs(render_one(engine, nets, prompt="a (cat:1.4)") - render_one(engine, nets, prompt="a cat")).max() > 0


def test_prompt_editing_switches_halfway_on_the_latents(engine, nets):
    common = {"sampler": "Euler", "steps": 4}
    edited = latents_by_step(engine, nets, prompt="a [cat:dog:0.5]", **common)
    cat = latents_by_step(engine, nets, prompt="a cat", **common)
    dog = latents_by_step(engine, nets, prompt="a dog", **common)
    # Evaluations 0-2 use "a cat" (A1111: the entry ends at step int(0.5 * 4) = 2, inclusive), then "a dog".
    for step in range(3):
        assert torch.equal(edited[step], cat[step])
    assert not torch.allclose(edited[3], cat[3]) and not torch.allclose(edited[3], dog[3])


def test_and_with_weight_zero_is_the_first_part_alone(engine, nets):
    alone = render_one(engine, nets, prompt="a cat")
    assert np.abs(render_one(engine, nets, prompt="a cat AND a dog :0") - alone).max() <= 1
    assert np.abs(render_one(engine, nets, prompt="a cat AND a dog") - alone).max() > 0


def test_clip_skip_two_differs_and_is_written_into_the_infotext(engine, nets):
    [one], [two] = engine.generate([request()], nets), engine.generate([request(clip_skip=2)], nets)
    assert np.abs(pixels(one.images[0]) - pixels(two.images[0])).max() > 0
    assert parse_infotext(Image.open(io.BytesIO(two.pngs[0])).text["parameters"])["Clip skip"] == "2"
    assert "Clip skip" not in parse_infotext(Image.open(io.BytesIO(one.pngs[0])).text["parameters"])


def test_an_embedding_changes_the_image_and_is_listed_with_its_hash(nets):
    from engine.conditioning import Embedding, EmbeddingSet

    vectors = torch.randn(2, 768, generator=torch.Generator().manual_seed(3))
    with_embedding = Renderer.load("tiny", device="cpu", embeddings=EmbeddingSet([Embedding("inkStyle", vectors,
                                                                                            sha256="ab" * 32)]))
    plain = Renderer.load("tiny", device="cpu")
    [styled] = with_embedding.generate([request(prompt="a cat", negative_prompt="(inkStyle:1.2)")], nets)
    [literal] = plain.generate([request(prompt="a cat", negative_prompt="(inkStyle:1.2)")], nets)
    assert np.abs(pixels(styled.images[0]) - pixels(literal.images[0])).max() > 0
    text = parse_infotext(Image.open(io.BytesIO(styled.pngs[0])).text["parameters"])
    assert text["TI hashes"] == "inkStyle: abababababab"
    assert "TI hashes" not in parse_infotext(Image.open(io.BytesIO(literal.pngs[0])).text["parameters"])


# ---- A1111 noise in the render ------------------------------------------------------------------------------------


def test_gpu_noise_is_drawn_as_nv_on_a_cpu_and_cpu_noise_differs(engine, nets):
    gpu, nv, cpu = (render_one(engine, nets, rng=rng) for rng in ("GPU", "NV", "CPU"))
    assert np.array_equal(gpu, nv)
    assert np.abs(cpu - nv).max() > 10


def test_variation_strength_one_is_the_variation_seed_for_a_deterministic_sampler(engine, nets):
    varied = render_one(engine, nets, sampler="Euler", seed=5, subseed=9, subseed_strength=1.0)
    assert np.abs(varied - render_one(engine, nets, sampler="Euler", seed=9)).max() <= 1
    half = render_one(engine, nets, sampler="Euler", seed=5, subseed=9, subseed_strength=0.5)
    assert np.abs(half - varied).max() > 0 and np.abs(half - render_one(engine, nets, sampler="Euler", seed=5)).max() > 0


def test_variations_of_a_count_keep_the_seed_and_step_the_variation_seed(engine, nets):
    [out] = engine.generate([request(seed=5, subseed=20, subseed_strength=0.3, count=2)], nets)
    assert out.seeds == [5, 5]
    texts = [parse_infotext(Image.open(io.BytesIO(png)).text["parameters"]) for png in out.pngs]
    assert [(t["Seed"], t["Variation seed"], t["Variation seed strength"]) for t in texts] == [
        ("5", "20", "0.3"), ("5", "21", "0.3")]
    assert np.abs(pixels(out.images[0]) - pixels(out.images[1])).max() > 0


def test_seed_resize_from_the_same_size_changes_nothing_and_another_size_does(engine, nets):
    plain = render_one(engine, nets)
    assert np.array_equal(render_one(engine, nets, seed_resize_from=(64, 64)), plain)
    assert np.abs(render_one(engine, nets, seed_resize_from=(32, 48)) - plain).max() > 0


def test_ensd_moves_ancestral_noise_only(engine, nets):
    assert np.abs(render_one(engine, nets, eta_noise_seed_delta=31337) - render_one(engine, nets)).max() > 0
    euler = {"sampler": "Euler"}
    assert np.array_equal(render_one(engine, nets, eta_noise_seed_delta=31337, **euler),
                          render_one(engine, nets, **euler))


def test_mixed_noise_settings_in_one_batch_match_each_alone(engine, nets):
    common = {"sampler": "Euler a", "steps": 3}
    reqs = [
        request(1, seed=5, subseed=11, subseed_strength=0.4, count=2, **common),
        request(2, prompt="red dragon " * 30, seed=6, eta_noise_seed_delta=31337, rng="CPU", clip_skip=2, **common),
        request(3, seed=7, seed_resize_from=(48, 48), negative_prompt="blurry AND ugly", **common),
        request(4, prompt="a [cat|dog] AND a castle :0.5", seed=8, hypernets=(ref("swish768", 0.6),), **common),
    ]
    batched = engine.generate(reqs, nets)
    for req, out in zip(reqs, batched, strict=True):
        [alone] = engine.generate([req], nets)
        for a, b in zip(alone.images, out.images, strict=True):
            assert np.abs(pixels(a) - pixels(b)).max() <= 1
        assert [Image.open(io.BytesIO(p)).text["parameters"] for p in alone.pngs] == [
            Image.open(io.BytesIO(p)).text["parameters"] for p in out.pngs]


def test_infotext_carries_every_noise_field_a1111_writes(engine, nets):
    [out] = engine.generate([request(sampler="DPM++ 2M", schedule="Karras", rng="CPU", eta_noise_seed_delta=31337,
                                     subseed=3, subseed_strength=0.25, seed_resize_from=(96, 64))], nets)
    text = parse_infotext(Image.open(io.BytesIO(out.pngs[0])).text["parameters"])
    assert (text["Sampler"], text["Schedule type"], text["RNG"], text["Seed resize from"]) == (
        "DPM++ 2M", "Karras", "CPU", "96x64")
    assert "ENSD" not in text  # DPM++ 2M draws no step noise: A1111 leaves ENSD out
    [ancestral] = engine.generate([request(eta_noise_seed_delta=31337)], nets)
    text = parse_infotext(Image.open(io.BytesIO(ancestral.pngs[0])).text["parameters"])
    assert text["ENSD"] == "31337" and "RNG" not in text and "Schedule type" not in text


def test_jobs_of_two_guilds_may_give_one_embedding_name_to_different_files(engine, nets):
    from engine.conditioning import Embedding
    from engine.render_settings import EmbeddingRef

    vectors = {d: torch.randn(2, width, generator=torch.Generator().manual_seed(seed)) for d, width, seed in (
        ("1" * 64, 768, 1), ("2" * 64, 768, 2), ("3" * 64, 1024, 3))}
    loaded = {d: Embedding(d, v) for d, v in vectors.items()}
    guild_a = request(1, negative_prompt="(inkStyle:1.2)", embeddings=(EmbeddingRef("inkStyle", "1" * 64, "aaaaaaaaaaaa"),))
    guild_b = request(2, negative_prompt="(inkStyle:1.2)", embeddings=(EmbeddingRef("inkStyle", "2" * 64, "bbbbbbbbbbbb"),))
    sd2 = request(3, negative_prompt="wideOne", embeddings=(EmbeddingRef("wideOne", "3" * 64),))
    batched = engine.generate([guild_a, guild_b, sd2], nets, embeddings=loaded)
    for req, out in zip([guild_a, guild_b, sd2], batched, strict=True):
        [alone] = engine.generate([req], nets, embeddings=loaded)
        assert np.abs(pixels(alone.images[0]) - pixels(out.images[0])).max() <= 1
    assert np.abs(pixels(batched[0].images[0]) - pixels(batched[1].images[0])).max() > 0
    hashes = [parse_infotext(Image.open(io.BytesIO(o.pngs[0])).text["parameters"]).get("TI hashes") for o in batched]
    assert hashes == ["inkStyle: aaaaaaaaaaaa", "inkStyle: bbbbbbbbbbbb", None]
    assert batched[2].warnings == ["embedding 'wideOne' cannot be used with this model: vectors are 1024 wide, the text "
                                   "encoder's are 768"]
    with pytest.raises(RequestError, match=r"^embedding 'inkStyle' \(1111111111\) is not loaded$"):
        engine.generate([guild_a], nets, embeddings={})
