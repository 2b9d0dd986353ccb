"""A1111 single-file checkpoints loaded for real: no network, the file's own weights, SD 2.x prediction, separate
VAEs, refusals at load time, and a render through ``Renderer.load(path)``."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file

from engine.checkpoints import CheckpointRefused, HashCache
from engine.checkpoints.assets import CLIP_TOKENIZER, config_folder, template
from engine.infotext import parse_infotext
from engine.worker import checkpoint_files
from engine.worker.checkpoint_files import family_tokenizer
from engine.worker.checkpoints import load_checkpoint
from engine.worker.renderer import Renderer
from tests.engine.checkpoints.files import (
    TinyModels,
    checkpoint_state,
    save_checkpoint,
    tiny_models,
    write_sd1,
    write_sd2,
    write_tensors,
    write_vae,
)
from tests.requests import request

pytestmark = [  # diffusers' schedulers hand tensors to numpy 2.x functions that warn; not ours to fix
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
F32 = torch.float32


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("a1111")
    paths = {name: folder / f"{name}.safetensors" for name in ("sd1", "sd2_v", "vae")}
    write_sd1(paths["sd1"])
    write_sd2(paths["sd2_v"], output_bias=-2.0)  # A1111's test reads this UNet as v-prediction
    write_vae(paths["vae"])
    return paths


class NoNetwork:
    """Every way out of the process fails while active, and each attempt is recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[object] = []
        for name in ("connect", "connect_ex", "sendto"):
            monkeypatch.setattr(socket.socket, name, self.refuse)
        monkeypatch.setattr(socket, "create_connection", self.refuse)
        monkeypatch.setattr(socket, "getaddrinfo", self.refuse)

    def refuse(self, *args: object, **kwargs: object) -> None:
        self.attempts.append(args)
        raise OSError("network access in a test")


@pytest.fixture(scope="module")
def loads(files: dict[str, Path]) -> dict[str, object]:
    """The test files loaded once, with the network blocked throughout."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        guard = NoNetwork(monkeypatch)
        loaded: dict[str, object] = {
            "sd1": load_checkpoint(files["sd1"], F32), "sd1+vae": load_checkpoint(files["sd1"], F32, vae=files["vae"]),
            "sd2_v": load_checkpoint(files["sd2_v"], F32)}
        with pytest.raises(OSError, match="network access in a test"):  # the guard itself works
            socket.create_connection(("huggingface.co", 443))
        loaded["attempts"] = guard.attempts[:-1]
    return loaded


def _same_weights(loaded: torch.nn.Module, source: torch.nn.Module, file_dtype: torch.dtype = torch.float16) -> None:
    """Every tensor of ``loaded`` is ``source``'s as stored in the file (rounded to ``file_dtype``)."""
    expected = source.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        stored = tensor.to(file_dtype).to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(got[name].to(stored.dtype), stored), name


def test_single_files_load_without_the_network(loads: dict[str, Any]) -> None:
    assert [(x.family, x.prediction) for x in (loads["sd1"], loads["sd1+vae"], loads["sd2_v"])] == \
        [("sd1", "epsilon"), ("sd1", "epsilon"), ("sd2", "v_prediction")]
    assert loads["attempts"] == []


def test_sd1_parts_hold_exactly_the_files_weights(files: dict[str, Path], loads: dict[str, Any]) -> None:
    source = tiny_models("sd1")  # write_sd1's models (same seed)
    loaded = loads["sd1"]
    _same_weights(loaded.unet, source.unet)
    _same_weights(loaded.vae, source.vae)
    _same_weights(loaded.text_encoder, source.text_encoder)
    assert (loaded.model_name, loaded.model_hash) == ("sd1", hashlib.sha256(files["sd1"].read_bytes()).hexdigest()[:10])
    assert (loaded.prediction, loaded.scheduler_config["prediction_type"], loaded.tokenizer.pad_token_id) == \
        ("epsilon", "epsilon", 49407)
    assert (loaded.vae_name, loaded.vae_hash) == (None, None)


def test_sd2_parts_hold_the_files_weights_without_the_unused_last_block(loads: dict[str, Any]) -> None:
    source = tiny_models("sd2")
    with torch.no_grad():
        source.unet.conv_out.weight.zero_()
        source.unet.conv_out.bias.fill_(-2.0)
    loaded = loads["sd2_v"]
    _same_weights(loaded.unet, source.unet)
    _same_weights(loaded.text_encoder, source.text_encoder)  # 2 layers: the file's third block is left out
    assert (loaded.text_encoder.config.num_hidden_layers, loaded.tokenizer.pad_token_id) == (2, 0)


def test_old_transformers_clip_names_load(tmp_path: Path) -> None:
    source = tiny_models("sd1", seed=3)
    path = save_checkpoint(tmp_path / "old.safetensors", checkpoint_state(source, "sd1", old_clip_layout=True))
    assert not any(k.startswith("cond_stage_model.transformer.text_model.") for k in load_file(str(path)))
    _same_weights(load_checkpoint(path, F32).text_encoder, source.text_encoder)


def test_sd2_prediction_is_a1111s_test_unless_overridden(files: dict[str, Path], loads: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    v = loads["sd2_v"]
    assert (v.prediction, v.scheduler_config["prediction_type"], v.unet.config.sample_size) == \
        ("v_prediction", "v_prediction", 96)  # the 768-v variant's native size
    monkeypatch.setattr(checkpoint_files, "a1111_predicts_v", lambda unet: pytest.fail("the test ran"))
    eps = load_checkpoint(files["sd2_v"], F32, prediction="epsilon")  # the owner's override wins
    assert (eps.prediction, eps.scheduler_config["prediction_type"], eps.unet.config.sample_size) == \
        ("epsilon", "epsilon", 64)
    beside = tmp_path / "v2-1_512.safetensors"
    shutil.copy(files["sd2_v"], beside)
    beside.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: eps\n", encoding="utf-8")
    assert load_checkpoint(beside, F32).scheduler_config["prediction_type"] == "epsilon"  # A1111's config file wins
    with pytest.raises(ValueError, match="unknown prediction type 'x'"):
        load_checkpoint(files["sd2_v"], F32, prediction="x")


def test_a1111s_test_reads_the_unet_output(loads: dict[str, Any]) -> None:
    unet = copy.deepcopy(loads["sd2_v"].unet)
    with torch.no_grad():
        unet.conv_out.bias.fill_(-0.6)  # conv_out's weights are zero: mean(output - 0.5) = -1.1 < -1
    assert checkpoint_files.a1111_predicts_v(unet)
    with torch.no_grad():
        unet.conv_out.bias.fill_(-0.4)  # -0.9
    assert not checkpoint_files.a1111_predicts_v(unet)


def test_a_separate_vae_replaces_the_checkpoints(files: dict[str, Path], loads: dict[str, Any], tmp_path: Path) -> None:
    vae_model = write_vae(tmp_path / "unused.safetensors")  # the same VAE as files["vae"] (same seed)
    loaded = loads["sd1+vae"]
    _same_weights(loaded.vae, vae_model, torch.float32)
    # A1111's infotext: `VAE: vae.safetensors` (the file's name), `VAE hash:` its sha256's first 10 hex digits.
    assert (loaded.vae_name, loaded.vae_hash) == \
        ("vae.safetensors", hashlib.sha256(files["vae"].read_bytes()).hexdigest()[:10])
    diffusers_layout = tmp_path / "diffusion_pytorch_model.safetensors"
    write_vae(diffusers_layout, diffusers_layout=True)
    cache = HashCache(tmp_path / "hashes.json")
    _same_weights(load_checkpoint(files["sd1"], F32, vae=diffusers_layout, hash_cache=cache).vae, vae_model, torch.float32)
    assert set(json.loads(cache.path.read_text(encoding="utf-8"))["files"]) == \
        {str(files["sd1"].resolve()), str(diffusers_layout.resolve())}


def test_a_checkpoint_without_vae_needs_one(files: dict[str, Path], tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "novae.safetensors", checkpoint_state(tiny_models("sd1"), "sd1", with_vae=False))
    with pytest.raises(CheckpointRefused) as refused:
        load_checkpoint(path, F32)
    assert str(refused.value) == ("`novae.safetensors` holds no VAE. Give it a VAE file in its settings (for example "
                                  "vae-ft-mse-840000-ema-pruned.safetensors from models/vae/).")
    assert load_checkpoint(path, F32, vae=files["vae"]).vae_name == "vae.safetensors"


def test_refusals_at_load_time(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pickle = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4)}}, pickle)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(CheckpointRefused, match=r"^`model.ckpt` is a pickled PyTorch checkpoint, and Hypercord never "):
        load_checkpoint(pickle, F32)
    xl = write_tensors(tmp_path / "xl.safetensors", {"conditioner.embedders.1.model.positional_embedding": (77, 1),
                                                     "model.diffusion_model.input_blocks.0.0.weight": (4, 4, 3, 3)})
    with pytest.raises(CheckpointRefused) as refused:
        Renderer.load(str(xl), device="cpu")
    assert str(refused.value) == ("`xl.safetensors` is an SDXL base checkpoint; Hypercord runs SD 1.x and SD 2.x "
                                  "checkpoints only. Install an SD 1.x or SD 2.x checkpoint instead.")
    with pytest.raises(CheckpointRefused) as refused:
        load_checkpoint(files["sd1"], F32, vae=files["sd2_v"])
    assert str(refused.value) == ("`sd2_v.safetensors` is an SD 2.x checkpoint, not a VAE Hypercord can load. Choose "
                                  "a VAE saved as .safetensors instead (for example "
                                  "vae-ft-mse-840000-ema-pruned.safetensors).")


def test_missing_or_misshapen_weights_are_refused_not_left_uninitialised(tmp_path: Path) -> None:
    state = checkpoint_state(tiny_models("sd1"), "sd1")
    to_q = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    with pytest.raises(CheckpointRefused) as refused:
        load_checkpoint(save_checkpoint(tmp_path / "holey.safetensors", {**state, to_q: state[to_q][:, :16]}), F32)
    assert str(refused.value).startswith("`holey.safetensors` looks like an SD 1.x checkpoint, but diffusers could not "
                                         "load its UNet (")
    del state[to_q]
    with pytest.raises(CheckpointRefused) as refused:
        load_checkpoint(save_checkpoint(tmp_path / "holey.safetensors", state), F32)
    assert str(refused.value) == (
        "`holey.safetensors` looks like an SD 1.x checkpoint, but its UNet lacks weights its architecture needs; the "
        "file may be damaged or a variant Hypercord does not know. Download it again or install another checkpoint.")


def test_sd2_tokenizer_pads_with_token_zero() -> None:
    sd1, sd2 = family_tokenizer("sd1"), family_tokenizer("sd2")
    assert (sd1.pad_token_id, sd2.pad_token_id, sd2.pad_token) == (49407, 0, "!")
    assert sd1("a photo of a cat").input_ids == sd2("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368,
                                                                                      49407]


def test_a_diffusers_folder_takes_overrides(files: dict[str, Path], tmp_path: Path) -> None:
    models: TinyModels = tiny_models("sd1", seed=4)
    folder = tmp_path / "my-sd15"
    for name in ("unet", "vae", "text_encoder"):
        getattr(models, name).save_pretrained(folder / name)
    shutil.copytree(CLIP_TOKENIZER, folder / "tokenizer")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(template(config_folder("sd1", None),
                                                                                   "scheduler")), encoding="utf-8")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None]}), encoding="utf-8")
    loaded = load_checkpoint(folder, F32, vae=files["vae"], prediction="v_prediction")
    assert isinstance(loaded.unet, UNet2DConditionModel)
    _same_weights(loaded.unet, models.unet, torch.float32)
    assert (loaded.model_name, loaded.model_hash, loaded.family, loaded.vae_name) == \
        ("my-sd15", None, "sd1", "vae.safetensors")
    assert loaded.scheduler_config["prediction_type"] == "v_prediction"


def test_an_a1111_single_file_renders_through_the_renderer(files: dict[str, Path]) -> None:
    renderer = Renderer.load(str(files["sd1"]), device="cpu")
    [out] = renderer.generate([request(1, 7, prompt="a castle on a hill", seed=3, steps=3, width=64, height=64)], {})
    assert out.images[0].size == (64, 64) and out.warnings == []
    fields = parse_infotext(Image.open(io.BytesIO(out.pngs[0])).text["parameters"])
    assert (fields["Model"], fields["Model hash"]) == ("sd1", hashlib.sha256(files["sd1"].read_bytes()).hexdigest()[:10])
    assert (renderer.context_dim, renderer.v_prediction) == (32, False)
    [again] = renderer.generate([request(1, 7, prompt="a castle on a hill", seed=3, steps=3, width=64, height=64)], {})
    assert again.pngs == out.pngs
