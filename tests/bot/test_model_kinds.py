"""LoRAs and embeddings in the registry and the model service: a real SQLite file, the real intake and folder scan.

The registry rules are the hypernetworks' (tests/bot/test_store.py), per kind: checked here on rows written
directly.  The service runs real sandbox children, so files are few: one LoRA by attachment, and the drop-in folders
(``Lora``, ``LyCORIS``, ``embeddings`` next to the hypernetworks folder) with one file each.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from bot.config import IntakeSettings, ModelSettings, Settings
from bot.models import ModelError, ModelOptions, ModelService
from bot.store import DuplicateModel, NameTaken, NewEmbedding, NewHypernet, NewLora, Store, prompt_names
from engine.fit import ModelShape
from tests.loras import write_tiny_lora

pytestmark = pytest.mark.asyncio

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "hypernetworks" / "zoo"
GUILD, ADMIN = 111, 42
SD1 = ModelShape(768, frozenset({320, 640, 1280}))
SD2 = ModelShape(1024, frozenset({320, 640, 1280}))


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await Store.open(tmp_path / "db.sqlite3") as s:
        yield s


def models(store: Store, root: Path, shape: ModelShape | None = SD1) -> ModelService:
    settings = Settings(models=ModelSettings(hypernetwork_dir=str(root / "models" / "hypernetworks"),
                                             store_dir=str(root / "store")), intake=IntakeSettings(sandbox_cpu_s=30))
    return ModelService(store, settings, model_shape=lambda: shape)


def lora_row(name: str, guild_id: int | None = GUILD, *, sha: str | None = None, **changes: object) -> NewLora:
    sha = sha or hashlib.sha256(f"lora/{name}/{guild_id}".encode()).hexdigest()
    fields: dict[str, object] = dict(
        name=name, guild_id=guild_id, sha256=sha, file_name=f"{sha}.safetensors", file_size=10, source="attachment",
        lora_format="LyCORIS (LoHa)", family="sd1", context_width=768, text_width=None, unet_modules=12,
        te_modules=0, alias="inkOut", short_hash=sha[:12])
    return NewLora(**{**fields, **changes})  # type: ignore[arg-type]


async def test_loras_and_embeddings_are_registries_of_their_own(store: Store) -> None:
    lora = await store.loras.add(lora_row("ink", default_multiplier=0.8, description="wet ink"))
    assert (lora.lora_format, lora.family, lora.unet_modules, lora.te_modules, lora.touches_text_encoder, lora.alias,
            lora.short_hash, lora.default_multiplier) == ("LyCORIS (LoHa)", "sd1", 12, 0, False, "inkOut",
                                                          lora.sha256[:12], 0.8)
    assert await store.loras.get(lora.id) == lora == await store.loras.by_name("ink", GUILD)
    emb = await store.embeddings.add(NewEmbedding(name="ink", guild_id=None, sha256="e" * 64,
                                                  file_name="e" * 64 + ".safetensors", file_size=5, source="folder",
                                                  source_detail="ink.pt", vectors=3, width=768, short_hash="e" * 12))
    # One name per kind: a hypernetwork, a LoRA and an embedding may all be called "ink"; lookups stay in their kind.
    net = await store.hypernets.add(NewHypernet(name="ink", guild_id=GUILD, sha256="e" * 64, file_name="x", file_size=1,
                                                sizes=(320,), layer_structure=(1.0, 2.0, 1.0), activation="relu",
                                                source="attachment"))
    assert list(await store.embeddings.usable(GUILD)) == ["ink"] and (emb.vectors, emb.width) == (3, 768)
    assert await store.hypernets.get(lora.id) is None and await store.loras.get(net.id) is None
    assert await store.loras.by_sha256("e" * 64) == []
    # Within a kind the hypernetworks' rules hold: names ignoring case, one file per scope.
    with pytest.raises(NameTaken):
        await store.loras.add(lora_row("INK"))
    with pytest.raises(DuplicateModel):
        await store.loras.add(lora_row("other", sha=lora.sha256))
    with pytest.raises(TypeError):
        await store.loras.add(NewEmbedding(name="x", guild_id=None, sha256="f" * 64, file_name="f", file_size=1,
                                           source="url", vectors=1, width=768, short_hash="f" * 12))  # type: ignore[arg-type]
    # A prompt may name a LoRA by its alias too (A1111), unless the alias is another LoRA's name.
    other = await store.loras.add(lora_row("inkOut", alias="ink"))
    names = prompt_names((await store.loras.usable(GUILD)).values())
    assert {n: r.id for n, r in names.items()} == {"ink": lora.id, "inkOut": other.id}
    third = await store.loras.add(lora_row("zebra", alias="stripes"))
    assert prompt_names((await store.loras.usable(GUILD)).values())["stripes"] == third
    await store.loras.remove(other.id)
    await store.loras.remove(third.id)
    updated = await store.loras.update(lora.id, enabled=False, default_multiplier=0.5)
    assert (updated.enabled, updated.default_multiplier, updated.lora_format) == (False, 0.5, "LyCORIS (LoHa)")
    assert await store.loras.usable(GUILD) == {} and await store.loras.visible_names(GUILD, enabled_only=False) == ["ink"]
    assert await store.loras.search(GUILD, "wet", include_disabled=True) == [updated]
    assert await store.loras.all_files() == {lora.file_name, emb.file_name, "x"}  # every kind's: one store folder
    assert await store.loras.remove(lora.id) == updated and await store.loras.count_search(GUILD, None, True) == 0


async def test_a_lora_by_attachment_and_the_wrong_kind(store: Store, tmp_path: Path) -> None:
    service = models(store, tmp_path, shape=SD2).loras
    data = write_tiny_lora(tmp_path / "tinyInk.safetensors", seed=5).read_bytes()
    outcome = await service.add_from_bytes(data, filename="tinyInk.safetensors", guild_id=GUILD, added_by=ADMIN,
                                           options=ModelOptions(default_multiplier=0.7, trigger_words="ink"))
    lora = outcome.model
    assert (lora.name, lora.guild_id, lora.lora_format, lora.family, lora.unet_modules, lora.te_modules) == (
        "tinyInk", GUILD, "LoRA", "sd1", 3, 2)
    assert (lora.default_multiplier, lora.trigger_words, lora.source) == (0.7, "ink", "attachment")
    assert (tmp_path / "store" / f"{lora.sha256}.safetensors").is_file()
    # Made for SD 1.x's widths; the running checkpoint here is SD 2.x.
    assert outcome.notes == ("It is made for SD 1.x (cross-attention width 768); this model's is 1024, so its layers "
                             "of that width are skipped (A1111 skips them too)",)
    assert models(store, tmp_path, shape=SD1).loras.compatibility(lora) is None
    assert await service.find("tinyInk", GUILD) == lora
    with pytest.raises(ModelError) as err:
        await service.find("tinyink", GUILD)
    assert err.value.message == "There is no LoRA named `tinyink` here. Did you mean `tinyInk`? Names are case-sensitive."
    # A hypernetwork offered as a LoRA is named, with the command that takes it.
    with pytest.raises(ModelError) as err:
        await service.add_from_bytes((ZOO / "pub_zoo_relu.pt").read_bytes(), filename="relu.pt", guild_id=GUILD,
                                     added_by=ADMIN)
    assert err.value.message == "Refused: this is a hypernetwork, not a LoRA; add it with `/hypernets add`."
    with pytest.raises(ModelError) as err:
        await models(store, tmp_path).hypernets.add_from_bytes(data, filename="x.safetensors", guild_id=GUILD,
                                                               added_by=ADMIN)
    assert err.value.message == "Refused: this is a LoRA for SD 1.x, not a hypernetwork; add it with `/loras add`."
    assert await store.hypernets.count_search(GUILD, include_disabled=True) == 0


async def test_the_drop_in_folders_of_each_kind(store: Store, tmp_path: Path) -> None:
    service = models(store, tmp_path)
    root = tmp_path / "models"
    (root / "LyCORIS" / "styles").mkdir(parents=True)
    (root / "embeddings").mkdir()
    write_tiny_lora(root / "LyCORIS" / "styles" / "deepInk.SAFETENSORS", seed=6, conv=True)
    shutil.copy(ZOO / "pub_zoo_relu.pt", root / "LyCORIS" / "stray.pt")  # a hypernetwork in a LoRA folder
    buf = io.BytesIO()
    torch.save({"<bad-hands>": torch.randn(2, 768)}, buf)  # diffusers' learned_embeds layout
    (root / "embeddings" / "badHands.bin").write_bytes(buf.getvalue())
    (root / "embeddings" / "notes.txt").write_text("ignored: not an embedding extension")

    reports = await service.sync_model_folder()
    assert {kind: (r.added, r.refused) for kind, r in reports.items()} == {
        "hypernet": ([], []), "embedding": (["badHands"], []),
        "lora": (["deepInk"], [("LyCORIS/stray.pt", "Refused: this is a hypernetwork, not a LoRA; move it into the "
                                                    "hypernetwork folder (`models.hypernetwork_dir`).")])}
    (root / "LyCORIS" / "stray.pt").unlink()
    lora = await store.loras.by_name("deepInk", GUILD)
    assert lora is not None and lora.is_global and lora.source == "folder"
    assert (lora.source_detail, lora.lora_format, lora.unet_modules) == ("LyCORIS/styles/deepInk.SAFETENSORS", "LoCon", 4)
    emb = await store.embeddings.by_name("badHands", None)
    assert emb is not None and (emb.source_detail, emb.vectors, emb.width) == ("badHands.bin", 2, 768)
    with pytest.raises(ModelError) as err:
        await service.embeddings.remove(emb)
    assert err.value.message == ("`badHands` comes from the models folder (`badHands.bin`): delete the file there and "
                                 "run `/embeddings rescan`, or disable it instead.")

    # A file moved from models/LyCORIS to models/Lora is the same model from another folder; a deleted one goes.
    (root / "Lora").mkdir()
    (root / "LyCORIS" / "styles" / "deepInk.SAFETENSORS").rename(root / "Lora" / "deepInk.safetensors")
    (root / "embeddings" / "badHands.bin").unlink()
    again = {kind: (r.added, r.removed) for kind, r in (await service.sync_model_folder()).items()}
    assert again == {"hypernet": ([], []), "lora": (["deepInk"], ["deepInk"]), "embedding": ([], ["badHands"])}
    moved = await store.loras.by_name("deepInk", None)
    assert moved is not None and moved.sha256 == lora.sha256 and moved.source_detail == "Lora/deepInk.safetensors"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [f"{lora.sha256}.safetensors"]
