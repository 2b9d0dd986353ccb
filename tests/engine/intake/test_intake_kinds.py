"""Intake of LoRAs and textual-inversion embeddings: the same sandboxed pipeline as hypernetworks, per kind.

Real sandbox children throughout (a few seconds each), so the good files are ingested once per module into one
store and the tests read those results; each refusal that needs a child costs one.  What is checked: the canonical
file the worker will read holds exactly the original tensors, the facts the registry records, A1111's short hashes
(computed here independently from the file's bytes), and that a file of another kind, an SDXL LoRA, a width no
checkpoint here has and a code-running pickle are refused with their reason, leaving nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

from engine.conditioning import load_embedding_safetensors
from engine.intake import FileKind, IntakeLimits, IntakeRefused, IntakeResult, ingest_file
from engine.intake.identify import identify_loaded, refusal
from engine.lora import load_lora_safetensors
from tests.loras import write_tiny_lora

LIMITS = IntakeLimits(max_bytes=8 << 20, sandbox_memory_bytes=2048 << 20, sandbox_cpu_s=60, sandbox_wall_s=120)
ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks" / "zoo"
PEFT = Path(__file__).resolve().parents[2] / "fixtures" / "lora" / "loras" / "pub_peft_diffusers.safetensors"
XL_KEY = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
SDXL_LORA = {f"{XL_KEY}.lora_down.weight": torch.zeros(4, 1280), f"{XL_KEY}.lora_up.weight": torch.zeros(1280, 4)}
SDXL_REASON = ("this is a LoRA for SDXL and this bot runs only SD 1.x and SD 2.x checkpoints, which cannot use it; look "
               "for its SD 1.x version")


def pt(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def addnet_hash(data: bytes) -> str:
    """A1111's LoRA hash of a safetensors file: sha256 of what follows the 8-byte length and the JSON header."""
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + length:]).hexdigest()[:12]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("files")
    lora = write_tiny_lora(folder / "tinyStyle.safetensors", seed=3).read_bytes()
    state = safetensors.torch.load(lora)
    embedding = {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(3, 768)}, "name": "ink", "step": 9}
    return {"lora.safetensors": lora, "lora.pt": pt(state), "embedding.pt": pt(embedding),
            "embedding.safetensors": safetensors.torch.save({"emb_params": torch.randn(2, 1024)})}


@pytest.fixture(scope="module")
def stored(made: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, IntakeResult]]:
    store = tmp_path_factory.mktemp("store")
    kinds = {"lora": FileKind.LORA, "embedding": FileKind.EMBEDDING}
    return store, {name: ingest_file(data, filename=name, store_dir=store, limits=LIMITS, kind=kinds[name.split(".")[0]])
                   for name, data in made.items()}


def refused(data: bytes, store: Path, kind: FileKind, filename: str = "model.pt") -> IntakeRefused:
    before = set(os.listdir(store)) if store.exists() else set()
    with pytest.raises(IntakeRefused) as info:
        ingest_file(data, filename=filename, store_dir=store, limits=LIMITS, kind=kind)
    assert set(os.listdir(store)) == before  # nothing stored, no temp folder left
    return info.value


def test_a_kohya_lora_is_stored_as_safetensors_the_worker_reads(made: dict[str, bytes],
                                                                  stored: tuple[Path, dict[str, IntakeResult]]) -> None:
    store, results = stored
    for name in ("lora.safetensors", "lora.pt"):
        result, data = results[name], made[name]
        assert result.sha256 == hashlib.sha256(data).hexdigest() and result.kind is FileKind.LORA
        canonical = store / f"{result.sha256}.safetensors"
        assert {k: v.tolist() for k, v in safetensors.torch.load_file(canonical).items()} == {
            k: v.tolist() for k, v in safetensors.torch.load(made["lora.safetensors"]).items()}
        network = load_lora_safetensors(canonical, key=result.sha256)
        assert len(network.modules) == 5 and network.key == result.sha256
        facts = result.facts
        assert (facts.label, facts.family, facts.unet_modules, facts.te_modules, facts.touches_text_encoder,
                facts.ignored_keys, facts.alias) == ("LoRA", "sd1", 3, 2, True, 0, None)
        assert (facts.context_width, facts.text_width, result.nbytes, result.warnings) == (768, 768, network.nbytes, ())
    # A1111's "Lora hashes": the addnet hash for safetensors, the file's sha256 for a pickle (first 12 hex digits).
    assert results["lora.safetensors"].facts.short_hash == addnet_hash(made["lora.safetensors"])
    assert addnet_hash(made["lora.safetensors"]) != results["lora.safetensors"].sha256[:12]
    assert results["lora.pt"].facts.short_hash == results["lora.pt"].sha256[:12]


def test_embeddings_are_stored_in_the_engines_form(made: dict[str, bytes],
                                                   stored: tuple[Path, dict[str, IntakeResult]]) -> None:
    store, results = stored
    original = torch.load(io.BytesIO(made["embedding.pt"]), weights_only=True)["string_to_param"]["*"]
    for name, vectors in (("embedding.pt", original),
                          ("embedding.safetensors", safetensors.torch.load(made["embedding.safetensors"])["emb_params"])):
        result = results[name]
        loaded = load_embedding_safetensors(store / f"{result.sha256}.safetensors", "ink", sha256=result.sha256)
        assert torch.equal(loaded.vectors, vectors)
        assert (result.kind, result.facts.vectors, result.facts.width) == (FileKind.EMBEDDING, *vectors.shape)
        assert result.facts.short_hash == hashlib.sha256(made[name]).hexdigest()[:12] == loaded.short_hash


def test_a_file_of_another_kind_is_named(made: dict[str, bytes], tmp_path: Path) -> None:
    # Decided in this process from the safetensors header, or by the child after the safe load of a pickle.
    error = refused(made["lora.safetensors"], tmp_path, FileKind.EMBEDDING, "tinyStyle.safetensors")
    assert str(error) == "this is a LoRA for SD 1.x, not an embedding; add it as a LoRA instead"
    error = refused((ZOO / "pub_zoo_relu.pt").read_bytes(), tmp_path, FileKind.LORA)
    assert str(error) == "this is a hypernetwork, not a LoRA; add it as a hypernetwork instead"
    assert error.identity is not None and error.identity.kind is FileKind.HYPERNETWORK


def test_an_sdxl_lora_and_a_foreign_width_are_refused_with_the_reason(tmp_path: Path) -> None:
    error = refused(safetensors.torch.save(SDXL_LORA), tmp_path, FileKind.LORA, "xl.safetensors")
    assert str(error) == SDXL_REASON
    # A pickled one is judged by the sandbox child after the safe load, with the same words.
    assert refusal(identify_loaded(SDXL_LORA, 1, "pt"), FileKind.LORA) == SDXL_REASON
    error = refused(pt({"string_to_param": {"*": torch.randn(2, 320)}}), tmp_path, FileKind.EMBEDDING)
    assert str(error) == ("the embedding's vectors are 320 wide, which matches no text encoder this bot can run (768 "
                          "for SD 1.x, 1024 for SD 2.x); use its SD 1.x or SD 2.x version")
    error = refused(PEFT.read_bytes(), tmp_path, FileKind.LORA, PEFT.name)
    assert str(error) == ("the LoRA uses diffusers/PEFT key names, which A1111 does not read (it would change nothing); "
                          "use another version of it")


def test_a_lora_pickle_that_runs_code_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    evil = pt({f"{key}.lora_down.weight": torch.zeros(4, 768), f"{key}.lora_up.weight": Exploit()})
    store = tmp_path / "store"
    store.mkdir()
    error = refused(evil, store, FileKind.LORA, "evil.pt")
    assert str(error) == ("the file would run code when loaded (it calls `posix.system`); refused unread, do not load "
                          "it anywhere else either")
    assert not marker.exists()
