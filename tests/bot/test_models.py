"""bot.models with a real Store (SQLite file in tmp) and the real intake (sandbox children) on fixture files.

Each intake runs two short-lived Python children, so the tests share files where they can and check several
rules per model added.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from bot.config import IntakeSettings, ModelSettings, Settings
from bot.models import KindService, ModelError, ModelOptions, ModelService
from bot.store import NewHypernet, Store
from engine.fit import ModelShape
from engine.intake import FileKind
from tests.fixtures.malicious import payloads

pytestmark = pytest.mark.asyncio

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "hypernetworks" / "zoo"
GUILD, OTHER_GUILD, ADMIN = 111, 222, 42


def zoo(name: str) -> bytes:
    return (ZOO / f"pub_zoo_{name}.pt").read_bytes()


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await Store.open(tmp_path / "db.sqlite3") as s:
        yield s


SD1 = ModelShape(768, frozenset({320, 640, 1280}))
SD2 = ModelShape(1024, frozenset({320, 640, 1280}))


def make_models(store: Store, root: Path, shape: ModelShape | None = SD1) -> ModelService:
    settings = Settings(models=ModelSettings(hypernetwork_dir=str(root / "hypernetworks"), store_dir=str(root / "store")),
                        intake=IntakeSettings(sandbox_cpu_s=30))
    return ModelService(store, settings, model_shape=lambda: shape)


def make_service(store: Store, root: Path, shape: ModelShape | None = SD1) -> KindService:
    """The hypernetworks' service of a fresh ModelService (as a restarted bot would build it)."""
    return make_models(store, root, shape).hypernets


@pytest.fixture
def service(store: Store, tmp_path: Path) -> KindService:
    return make_service(store, tmp_path)


def stored_files(service: KindService) -> set[str]:
    store_dir = service.installer.store_dir
    return {p.name for p in store_dir.glob("*") if p.is_file()} if store_dir.exists() else set()


async def test_add_from_bytes_then_the_same_file_again_is_one_model(service: KindService, store: Store) -> None:
    outcome = await service.add_from_bytes(zoo("relu"), filename="pub_zoo_relu.pt", guild_id=GUILD, added_by=ADMIN,
                                           options=ModelOptions(description="red", trigger_words="crimson",
                                                                default_multiplier=0.7))
    hn = outcome.model
    assert (hn.name, hn.guild_id, hn.added_by, hn.source) == ("pub_zoo_relu", GUILD, ADMIN, "attachment")
    assert (hn.sizes, hn.layer_structure, hn.activation) == ((320,), (1.0, 0.025, 1.0), "relu")
    assert (hn.description, hn.trigger_words, hn.default_multiplier) == ("red", "crimson", 0.7)
    assert stored_files(service) == {f"{hn.sha256}.safetensors"} == {hn.file_name}
    assert outcome.notes == ()  # 320 is a self-attention width of SD1.x: nothing to flag

    with pytest.raises(ModelError) as err:
        await service.add_from_bytes(zoo("relu"), filename="copy.pt", guild_id=GUILD, added_by=ADMIN)
    assert err.value.message == "This file is already installed here as `pub_zoo_relu`."
    assert await store.hypernets.count_search(GUILD, include_disabled=True) == 1


async def test_names_collide_across_scopes_ignoring_case(service: KindService, store: Store) -> None:
    await service.add_from_bytes(zoo("elu"), filename="x.pt", guild_id=None, added_by=1,
                                 options=ModelOptions(name="Shared"))
    # A guild cannot take a global name in any case; refused before the file is even parsed.
    with pytest.raises(ModelError) as err:
        await service.add_from_bytes(zoo("gelu"), filename="g.pt", guild_id=GUILD, added_by=ADMIN,
                                     options=ModelOptions(name="Shared"))
    assert err.value.message == "A model named `Shared` already exists here."
    with pytest.raises(ModelError) as err:
        await service.add_from_bytes(zoo("gelu"), filename="g.pt", guild_id=GUILD, added_by=ADMIN,
                                     options=ModelOptions(name="SHARED"))
    assert err.value.message.startswith("A model named `Shared` already exists here; names must differ by more than")
    # Two guilds may use one name; a global model may not then take it (every guild would see two).
    mine = await service.add_from_bytes(zoo("gelu"), filename="g.pt", guild_id=GUILD, added_by=ADMIN,
                                        options=ModelOptions(name="mine"))
    files = stored_files(service)
    with pytest.raises(ModelError) as err:
        await service.add_from_bytes(zoo("gelu"), filename="g.pt", guild_id=None, added_by=1,
                                     options=ModelOptions(name="Mine"))
    assert "already exists" in err.value.message
    assert stored_files(service) == files  # the guild still uses the file: kept
    assert [h.name for h in await store.hypernets.search(OTHER_GUILD, include_disabled=True)] == ["Shared"]
    assert await store.hypernets.visible_names(GUILD) == ["mine", "Shared"]
    assert mine.model.guild_id == GUILD
    # Names follow intake's rule (checked before anything is parsed).
    with pytest.raises(ModelError) as err:
        await service.add_from_bytes(zoo("tanh"), filename="t.pt", guild_id=GUILD, added_by=ADMIN,
                                     options=ModelOptions(name="two words"))
    assert err.value.message.startswith("`two words` cannot be a model name: model names cannot contain spaces")


async def test_disable_hides_and_remove_collects_the_file_when_unreferenced(service: KindService, store: Store) -> None:
    first = (await service.add_from_bytes(zoo("tanh"), filename="tanh.pt", guild_id=GUILD, added_by=ADMIN)).model
    second = (await service.add_from_bytes(zoo("tanh"), filename="tanh.pt", guild_id=OTHER_GUILD,
                                           added_by=ADMIN)).model
    assert first.file_name == second.file_name and stored_files(service) == {first.file_name}

    await service.set_enabled(first, False)
    assert await store.hypernets.visible_names(GUILD) == []
    assert await store.hypernets.search(GUILD) == []
    assert await store.hypernets.visible_names(OTHER_GUILD) == ["tanh"]
    with pytest.raises(ModelError, match="no hypernetwork named `tanh`"):
        await service.find("tanh", GUILD, include_disabled=False)
    assert (await service.find("tanh", GUILD)).enabled is False
    with pytest.raises(ModelError, match="Did you mean `tanh`"):
        await service.find("TANH", GUILD)

    edited = await service.edit(first, description="  dark  ", default_multiplier=1.5)
    assert (edited.description, edited.default_multiplier, edited.trigger_words) == ("dark", 1.5, "")
    with pytest.raises(ModelError, match="between -1 and 2"):
        await service.edit(first, default_multiplier=3.0)

    await service.remove(first)
    assert stored_files(service) == {first.file_name}  # the other guild still uses it
    await service.remove(second)
    assert stored_files(service) == set()
    assert await store.hypernets.count_search(OTHER_GUILD, include_disabled=True) == 0


async def test_permissions_between_scopes(service: KindService, store: Store) -> None:
    row = await store.hypernets.add(NewHypernet(
        name="g", guild_id=None, sha256="a" * 64, file_name="a" * 64 + ".safetensors", file_size=1, sizes=(768,),
        layer_structure=(1.0, 2.0, 1.0), activation="relu", source="attachment"))
    with pytest.raises(ModelError, match="global model: only the bot's owners"):
        service.require_manageable(row, GUILD, is_owner=False)
    service.require_manageable(row, GUILD, is_owner=True)
    local = dataclasses.replace(row, guild_id=OTHER_GUILD)
    with pytest.raises(ModelError, match="belongs to another server"):
        service.require_manageable(local, GUILD, is_owner=True)


def malicious_file(path: Path, marker: Path) -> bytes:
    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    torch.save({768: Exploit(), "name": "evil"}, path)
    return path.read_bytes()


async def test_refused_upload_says_why_and_writes_nothing(service: KindService, store: Store, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = malicious_file(tmp_path / "evil.pt", marker)
    with pytest.raises(ModelError) as err:
        await service.add_from_bytes(data, filename="evil.pt", guild_id=GUILD, added_by=ADMIN)
    assert err.value.message == ("Refused: the file would run code when loaded (it calls `posix.system`); "
                                 "refused unread, do not load it anywhere else either.")
    assert not marker.exists()
    assert await store.hypernets.count_search(GUILD, include_disabled=True) == 0
    assert stored_files(service) == set()
    with pytest.raises(ModelError) as err:
        await service.add_from_bytes(b"<html><body>Sign in to download</body></html>", filename="x.pt", guild_id=GUILD,
                                     added_by=ADMIN)
    assert err.value.message == ("Refused: the file is a web page (HTML), not a model file; download the model again "
                                 "with its direct download link.")
    assert err.value.identity is not None and err.value.identity.kind is FileKind.WEB_PAGE


def touch_later(path: Path) -> None:
    """Make sure a rewritten file's mtime differs from the one the scan saw (coarse file system clocks)."""
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 5))


async def test_folder_scan_at_start_and_rescan(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    service = make_service(store, tmp_path)
    folder = service.folder_sync.roots[0].path
    (folder / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(ZOO / "pub_zoo_relu.pt", folder / "sub" / "deeper" / "alpha.pt")
    shutil.copy(ZOO / "pub_zoo_elu.pt", folder / "beta.pt")
    (folder / "notes.txt").write_text("not a model")
    (folder / "bad name.pt").write_bytes(b"x")
    (folder / "broken.pt").write_bytes(b"not a model at all")
    shutil.copy(ZOO / "pub_zoo_elu.pt", folder / "None.pt")
    # Files that once stopped the scan or slipped through, all sorted before the good ones:
    shutil.copy(ZOO / "pub_zoo_celu.pt", folder / "aaa_crash.pt")  # its intake hits a bug on our side (below)
    (folder / "deep.safetensors").write_bytes(payloads.deeply_nested_header())  # RecursionError in json
    (folder / "locked.pt").write_bytes(payloads.flag_zip_members(zoo("relu"), 0x1))  # RuntimeError in zipfile
    (tmp_path / "outside.pt").write_bytes(zoo("tanh"))
    (folder / "escape.pt").symlink_to(tmp_path / "outside.pt")
    (folder / "evil\x1b[2J\nname.pt").write_bytes(b"x")  # a terminal escape and a newline in a name
    bad_files = ("bad name.pt", "broken.pt", "None.pt", "aaa_crash.pt", "deep.safetensors", "locked.pt", "escape.pt",
                 "evil\x1b[2J\nname.pt")

    ingest = service.installer.ingest

    async def ingest_with_a_bug(kind, data, filename, **where):  # type: ignore[no-untyped-def]
        if filename == "aaa_crash.pt":
            raise RuntimeError("simulated bug")
        return await ingest(kind, data, filename, **where)

    monkeypatch.setattr(service.installer, "ingest", ingest_with_a_bug)
    with caplog.at_level(logging.INFO, logger="bot.models"):
        report = await service.sync_model_folder()
    assert sorted(report.added) == ["alpha", "beta"]  # the good files after the bad ones are installed
    assert sorted(report.refused) == [
        ("None.pt", "`None` cannot be a model name: `None` is reserved (A1111 uses it for \"no hypernetwork\")."),
        ("aaa_crash.pt", "Not checked: something went wrong on our side (the log has the details); the other files "
                         "were scanned, run the rescan again later."),
        ("bad name.pt", "`bad name` cannot be a model name: model names cannot contain spaces (a tag would end there); "
                        "use `_` or `-`."),
        ("broken.pt", "Refused: the file is text (“not a model at all”), not a model file; check that you picked the "
                      "model file itself."),
        ("deep.safetensors", "Refused: the file is damaged or incomplete (its safetensors header is nested deeper than "
                             "the format allows); download it again."),
        ("escape.pt", "Skipped: it is a link that points outside the models folder; move the file itself into the "
                      "folder."),
        ("evil name.pt", "`evil name` cannot be a model name: model names cannot contain control characters."),
        ("locked.pt", "Refused: the archive member `pub_zoo_relu/data.pkl` is encrypted, which PyTorch never does; "
                      "refused unread (use the file as its author published it)."),
    ]
    assert "simulated bug" in caplog.text  # the bug is logged with its traceback
    assert not any("\x1b" in r.getMessage() or "\n" in r.getMessage() for r in caplog.records if r.name == "bot.models")
    assert len(stored_files(service)) == 2  # the refused files left nothing behind
    monkeypatch.undo()
    for bad in bad_files:
        (folder / bad).unlink()
    beta = await store.hypernets.by_name("beta", GUILD)
    assert beta is not None and beta.is_global and beta.source == "folder" and beta.source_detail == "beta.pt"
    alpha = await store.hypernets.by_name("alpha", None)
    assert alpha is not None and alpha.source_detail == "sub/deeper/alpha.pt"
    await service.edit(beta, description="kept across changes")
    await service.set_enabled(beta, False)

    # Unchanged files are not parsed again, also by a fresh service (a bot restart) that recognises them by hash.
    again = await make_service(store, tmp_path).sync_model_folder()
    assert (again.added, again.updated, again.removed, again.unchanged) == ([], [], [], 2)

    # Rescan: one file changed in place, one renamed and moved (a removal plus a new file with the same content).
    shutil.copy(ZOO / "pub_zoo_tanh.pt", folder / "beta.pt")
    touch_later(folder / "beta.pt")
    (folder / "sub" / "deeper" / "alpha.pt").rename(folder / "sub" / "gamma.pt")
    report = await service.sync_model_folder()
    assert (report.added, report.updated, report.removed) == (["gamma"], ["beta"], ["alpha"])
    assert report.deleted_files == [beta.file_name]  # the old beta; alpha's file now serves gamma
    gamma = await store.hypernets.by_name("gamma", None)
    assert gamma is not None and gamma.sha256 == alpha.sha256 and gamma.source_detail == "sub/gamma.pt"
    new_beta = await store.hypernets.by_name("beta", None)
    assert new_beta is not None and new_beta.activation == "tanh" and new_beta.sha256 != beta.sha256
    assert (new_beta.description, new_beta.enabled) == ("kept across changes", False)
    assert stored_files(service) == {new_beta.file_name, gamma.file_name}

    with pytest.raises(ModelError, match="comes from the models folder"):
        await service.remove(new_beta)


async def test_incompatible_sizes_are_flagged(store: Store, tmp_path: Path) -> None:
    sd2 = make_service(store, tmp_path, shape=SD2)
    outcome = await sd2.add_from_bytes((Path(__file__).resolve().parents[1] / "fixtures" / "hypernetworks"
                                        / "pub_swish_1-0.1-1_768_actout.pt").read_bytes(), filename="swish.pt",
                                       guild_id=GUILD, added_by=ADMIN)
    assert outcome.model.sizes == (768,)
    assert outcome.notes == ("Made for SD 1.x (text context 768) but this model is SD 2.x (text context 1024), so it "
                             "has no effect here",)
    assert make_service(store, tmp_path, shape=SD1).compatibility(outcome.model) is None
    assert make_service(store, tmp_path, shape=None).compatibility(outcome.model) is None  # engine not up yet


async def test_download_refusals_write_nothing(service: KindService, store: Store) -> None:
    with pytest.raises(ModelError) as err:
        await service.add_from_url("http://civitai.com/x.pt", guild_id=GUILD, added_by=ADMIN)
    assert err.value.message == "Refused: only https:// download links are accepted."
    with pytest.raises(ModelError) as err:
        await service.add_from_url("https://evil.example/x.pt", guild_id=GUILD, added_by=ADMIN)
    assert err.value.message == ("Refused: downloads are only allowed from civitai.com, huggingface.co; "
                                 "`evil.example` is not one of them (attach the file instead).")
    with pytest.raises(ModelError, match="give the model a name"):
        await service.add_from_url("https://civitai.com/api/download/models/123", guild_id=GUILD, added_by=ADMIN)
    assert await store.hypernets.count_search(GUILD, include_disabled=True) == 0
