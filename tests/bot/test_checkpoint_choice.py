"""Which checkpoint a request gets (named, trained-on, server default, bot default), the per-server choices in
SQLite, and a checkpoint's own defaults filling the options a user left empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.advanced_options import AdvancedOptions
from bot.checkpoints import CatalogEntry, CheckpointCatalog, CheckpointDefaults
from bot.jobs.checkpoint_choice import CheckpointProblem, available, choose, entry_of, server_default
from bot.options import with_checkpoint_defaults
from bot.store import GuildCheckpoints, Hypernet, Store
from engine.checkpoints import FileHashes
from engine.protocol import HypernetRef
from tests.requests import settings

SHA = "ab" * 32
CATALOG = CheckpointCatalog([
    CatalogEntry("sd15", "/models/v1-5-pruned-emaonly.safetensors", family="sd1",
                 hashes=FileHashes("6ce0161689" + "0" * 54, "e1441589"), sd_checkpoint_name="v1-5-pruned-emaonly"),
    CatalogEntry("anything-v3", "/models/anything/anything-v3-fp16.safetensors", display_name="Anything v3", family="sd1",
                 hashes=FileHashes("812cd9f9d9" + "1" * 54, "38c1ebe3"), sd_checkpoint_name="anything_anything-v3-fp16",
                 defaults=CheckpointDefaults(sampler="DPM++ 2M Karras", steps=28, width=512, height=768, clip_skip=2)),
    CatalogEntry("broken", "/models/broken.ckpt", refusal="`broken.ckpt` is a pickled PyTorch checkpoint"),
    CatalogEntry("tiny", "tiny", family="sd1"),
], default="tiny")


def hypernet(name: str, base_model: str | None) -> Hypernet:
    return Hypernet(id=1, name=name, guild_id=None, sha256=SHA, file_name=f"{SHA}.safetensors", file_size=1,
                    sizes=(320, 640), layer_structure=(1.0, 2.0, 1.0), activation="linear", source="folder",
                    base_model=base_model, added_at=0.0, updated_at=0.0)


def with_hypernet(name: str):
    return settings("a castle", hypernets=(HypernetRef(name, SHA, 1.0),))


def test_a_named_model_is_used_as_it_is_also_by_its_display_name_in_any_case():
    got = choose(CATALOG, GuildCheckpoints(), named="anything-v3", settings=settings("x"), hypernets={})
    assert got.entry.name == "anything-v3" and got.note == ""
    for typed in ("Anything V3", "ANYTHING-V3"):
        assert choose(CATALOG, GuildCheckpoints(), named=typed, settings=settings("x"), hypernets={}).entry.name == (
            "anything-v3")


def test_unknown_refused_and_disallowed_names_are_refused_with_where_to_look():
    for name in ("nope", "broken"):
        try:
            choose(CATALOG, GuildCheckpoints(), named=name, settings=settings("x"), hypernets={})
        except CheckpointProblem as exc:
            assert str(exc) == (f"There is no model named `{name}` here. `/models list` shows the models you can use "
                                "on this server.")
        else:
            raise AssertionError(name)
    try:
        choose(CATALOG, GuildCheckpoints(disallowed=frozenset({"sd15"})), named="sd15", settings=settings("x"),
               hypernets={})
    except CheckpointProblem as exc:
        assert str(exc) == ("The model `sd15` is not offered on this server. `/models list` shows the models you can "
                            "use here.")
    else:
        raise AssertionError("disallowed")


def test_the_hypernets_training_checkpoint_is_picked_by_name_or_by_hash():
    for recorded in ("anything_anything-v3-fp16", "812cd9f9d9", "38c1ebe3"):
        got = choose(CATALOG, GuildCheckpoints(), named=None, settings=with_hypernet("incase"),
                     hypernets={"incase": hypernet("incase", recorded)})
        assert got.entry.name == "anything-v3", recorded
        assert got.note == "Model `anything-v3`: the checkpoint the hypernetwork `incase` was trained on."


def test_an_absent_training_checkpoint_falls_back_to_the_server_default_and_says_why():
    nets = {"gothic": hypernet("gothic", "protogenV22_2.2")}
    got = choose(CATALOG, GuildCheckpoints(default="sd15"), named=None, settings=with_hypernet("gothic"), hypernets=nets)
    assert got.entry.name == "sd15"
    assert got.note == ("Model `sd15` (this server's default): the hypernetwork `gothic` was trained on "
                        "`protogenV22_2.2`, which is not installed here.")
    bot_default = choose(CATALOG, GuildCheckpoints(), named=None, settings=with_hypernet("gothic"), hypernets=nets)
    assert bot_default.entry.name == "tiny" and "(the bot's default)" in bot_default.note


def test_a_training_checkpoint_this_server_does_not_offer_is_named_as_such():
    guild = GuildCheckpoints(disallowed=frozenset({"anything-v3"}))
    got = choose(CATALOG, guild, named=None, settings=with_hypernet("incase"),
                 hypernets={"incase": hypernet("incase", "812cd9f9d9")})
    assert got.entry.name == "tiny"
    assert got.note == ("Model `tiny` (the bot's default): the hypernetwork `incase` was trained on `812cd9f9d9`, "
                        "which this server does not offer.")


def test_no_hypernet_or_no_record_means_the_default_without_a_note():
    plain = choose(CATALOG, GuildCheckpoints(default="sd15"), named=None, settings=settings("x"), hypernets={})
    unrecorded = choose(CATALOG, GuildCheckpoints(), named=None, settings=with_hypernet("old"),
                        hypernets={"old": hypernet("old", None)})
    assert (plain.entry.name, plain.note) == ("sd15", "")
    assert (unrecorded.entry.name, unrecorded.note) == ("tiny", "")


def test_server_default_gone_or_disallowed_falls_back_to_the_bots():
    assert server_default(CATALOG, GuildCheckpoints(default="sd15")) == (CATALOG.get("sd15"), "this server's")
    assert server_default(CATALOG, GuildCheckpoints(default="removed"))[0].name == "tiny"
    assert [e.name for e in available(CATALOG, GuildCheckpoints(disallowed=frozenset({"sd15"})))] == [
        "anything-v3", "tiny"]


def test_a_stored_setting_resolves_by_name_by_old_source_or_not_at_all():
    assert entry_of(CATALOG, "sd15").name == "sd15"
    assert entry_of(CATALOG, "").name == "tiny"
    assert entry_of(CATALOG, "/models/v1-5-pruned-emaonly.safetensors").name == "sd15"
    assert entry_of(CATALOG, "broken") is None and entry_of(CATALOG, "removed") is None


def test_checkpoint_defaults_fill_only_what_the_user_left_empty():
    defaults = CATALOG.get("anything-v3").defaults
    filled = with_checkpoint_defaults({"prompt": "x", "steps": None, "sampler": "Euler"}, defaults)
    assert filled["steps"] == 28 and filled["sampler"] == "Euler" and filled.get("cfg_scale") is None
    assert (filled["width"], filled["height"]) == (512, 768) and filled["advanced"].clip_skip == 2
    typed = with_checkpoint_defaults({"size": "64x64", "advanced": AdvancedOptions(clip_skip=1)}, defaults)
    assert "width" not in typed and typed["advanced"].clip_skip == 1


@pytest.mark.asyncio
async def test_server_choices_are_stored_per_guild(tmp_path: Path):
    async with await Store.open(tmp_path / "db.sqlite3") as store:
        repo = store.checkpoints
        assert await repo.get(1) == GuildCheckpoints()
        await repo.set_default(1, "sd15", by=7)
        await repo.set_allowed(1, "anything-v3", False, by=7)
        await repo.set_allowed(2, "tiny", False)
        assert await repo.get(1) == GuildCheckpoints("sd15", frozenset({"anything-v3"}))
        await repo.set_default(1, "anything-v3")  # a disallowed model made the default is offered again
        await repo.set_allowed(1, "sd15", False)
        assert await repo.get(1) == GuildCheckpoints("anything-v3", frozenset({"sd15"}))
        await repo.set_allowed(1, "sd15", True)
        await repo.set_default(1, None)
        assert await repo.get(1) == GuildCheckpoints() and await repo.get(2) == GuildCheckpoints(None, frozenset({"tiny"}))
        assert await repo.get(None) == GuildCheckpoints()
