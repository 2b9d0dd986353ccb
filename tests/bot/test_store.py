"""bot/store.py on a real SQLite file: the jobs lifecycle, history, user data deletion and the hypernet registry."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path

import pytest
import pytest_asyncio

from bot.store import (
    DuplicateModel,
    InvalidName,
    NameTaken,
    NewHypernet,
    NewJob,
    NotFound,
    Store,
    StoreError,
)
from engine.protocol import HypernetRef
from engine.render_settings import EmbeddingRef, LoraRef
from tests.requests import new_job as make_job


class Clock:
    """A clock the test moves by hand, so timestamps are exact."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def store(tmp_path: Path, clock: Clock):
    opened = await Store.open(tmp_path / "data" / "hypercord.db", clock=clock)
    yield opened
    await opened.close()


def new_job(user_id: int = 1, guild_id: int | None = 10, **changes) -> NewJob:
    base = dict(prompt="a cat", seed=2**40, steps=20, cfg_scale=7.5, sampler="Euler a", width=512, height=768,
                checkpoint="tiny")
    return make_job(user_id, guild_id, **{**base, **changes})


def hn(name: str, guild_id: int | None = None, *, sha: str | None = None, **changes) -> NewHypernet:
    sha = sha or hashlib.sha256(f"{name}/{guild_id}".encode()).hexdigest()
    net = NewHypernet(name=name, guild_id=guild_id, sha256=sha, file_name=f"{sha}.safetensors", file_size=1234,
                      sizes=(320, 640, 768, 1280), layer_structure=(1.0, 2.0, 1.0), activation="linear",
                      source="attachment", added_by=42)
    return dataclasses.replace(net, **changes)


FOO = HypernetRef("Foo", "a" * 64, 0.5)
BAR = HypernetRef("bar", "b" * 64, 1.0)

# ------------------------------------------------------------------------------------------------------- jobs


@pytest.mark.asyncio
async def test_job_lifecycle(store: Store, clock: Clock) -> None:
    job = await store.jobs.create(new_job(hypernets=(FOO, BAR), interaction_token="secret-token",
                                          interaction_created_at=999.0))
    assert job.status == "queued" and job.created_at == 1_000.0
    assert job.settings.hypernets == (FOO, BAR)
    assert job.settings.prompt == "a cat <hypernet:Foo:0.5> <hypernet:bar:1>"
    assert (job.settings.seed, job.settings.width, job.settings.height, job.settings.cfg_scale) == (2**40, 512, 768, 7.5)
    assert job.interaction_token == "secret-token"
    assert "secret-token" not in repr(job)
    assert await store.jobs.get(job.id) == job

    clock.now = 1_001.0
    assert await store.jobs.mark_running(job.id) is True
    assert await store.jobs.bump_attempts(job.id) == 1
    assert await store.jobs.bump_attempts(job.id) == 2
    await store.jobs.set_message(job.id, 555)
    clock.now = 1_004.0
    assert await store.jobs.mark_done(job.id, ["images/1/0.png", "images/1/1.png"], 2.5, ["clamped steps"]) is True

    done = await store.jobs.get(job.id)
    assert done is not None
    assert (done.status, done.started_at, done.finished_at, done.duration_s) == ("done", 1_001.0, 1_004.0, 2.5)
    assert (done.attempts, done.message_id) == (2, 555)
    assert done.image_paths == ("images/1/0.png", "images/1/1.png")
    assert done.warnings == ("clamped steps",)
    assert done.interaction_token is None and done.finished

    # A finished job stays finished: a late failure or cancel does not overwrite it.
    assert await store.jobs.mark_failed(job.id, "oom", "out of memory") is False
    assert await store.jobs.mark_cancelled(job.id) is False
    assert await store.jobs.mark_running(job.id) is False
    assert (await store.jobs.get(job.id)) == done


@pytest.mark.asyncio
async def test_every_a1111_setting_reads_back(store: Store) -> None:
    fields = dict(sampler="DPM++ 2M", schedule="Karras", clip_skip=2, rng="NV", eta_noise_seed_delta=31337,
                  subseed=99, subseed_strength=0.25, seed_resize_from=(640, 448))
    loras = (LoraRef("inkLines", "c" * 64, 0.3, 1.2, short_hash="0123456789ab"), LoraRef("glow", "d" * 64, 0.8, 0.8, 4))
    embeddings = (EmbeddingRef("badHands", "e" * 64, "c74b4e810b03"), EmbeddingRef("inkStyle", "f" * 64))
    job = await store.jobs.create(new_job(prompt="a cat <lora:inkLines:0.3:1.2> <lora:glow:0.8:0.8:4>", loras=loras,
                                          embeddings=embeddings, **fields, notes=("Not rendered: Hires upscale.",)))
    assert job.settings.loras == loras and job.settings.embeddings == embeddings
    read = await store.jobs.get(job.id)
    assert read is not None and read.settings == job.settings and read.notes == ("Not rendered: Hires upscale.",)
    assert await store.jobs.mark_done(job.id, [], 1.0, ["engine warning"])
    done = await store.jobs.get(job.id)
    assert done is not None and (done.notes, done.warnings) == (("Not rendered: Hires upscale.",), ("engine warning",))
    assert {k: getattr(read.settings, k) for k in fields} == fields
    plain = await store.jobs.get((await store.jobs.create(new_job())).id)
    assert plain is not None and (plain.settings.rng, plain.settings.subseed, plain.settings.seed_resize_from) == (
        "GPU", None, None)


@pytest.mark.asyncio
async def test_seeds_that_do_not_fit_sqlite_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="variation seed must fit in 64 bits"):
        await store.jobs.create(new_job(subseed=2**64, subseed_strength=0.5))


@pytest.mark.asyncio
async def test_failed_and_cancelled_jobs(store: Store) -> None:
    failed = await store.jobs.create(new_job(interaction_token="t1"))
    cancelled = await store.jobs.create(new_job())
    assert await store.jobs.mark_failed(failed.id, "worker_crashed", "The worker crashed twice.")
    assert await store.jobs.mark_cancelled(cancelled.id)
    got_failed, got_cancelled = await store.jobs.get(failed.id), await store.jobs.get(cancelled.id)
    assert got_failed is not None and got_cancelled is not None
    assert (got_failed.status, got_failed.error_kind, got_failed.error_message) == (
        "failed", "worker_crashed", "The worker crashed twice.")
    assert got_failed.interaction_token is None and got_failed.finished_at == 1_000.0
    assert got_cancelled.status == "cancelled"


@pytest.mark.asyncio
async def test_unknown_jobs(store: Store) -> None:
    assert await store.jobs.get(404) is None
    for call in (store.jobs.mark_running(404), store.jobs.mark_cancelled(404), store.jobs.set_message(404, 1),
                 store.jobs.bump_attempts(404)):
        with pytest.raises(NotFound, match=r"^Job #404 was not found"):
            await call
    with pytest.raises(NotFound, match="Job #404"):
        await store.jobs.create(new_job(parent_job_id=404, origin="reroll"))


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.png", "images/../../x.png", "C:\\x.png", ""])
async def test_image_paths_must_stay_inside_the_data_dir(store: Store, bad: str) -> None:
    job = await store.jobs.create(new_job())
    with pytest.raises(ValueError, match="image path"):
        await store.jobs.mark_done(job.id, [bad], 1.0)
    assert (await store.jobs.get(job.id)).status == "queued"  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_unfinished_and_requeue(store: Store) -> None:
    queued = await store.jobs.create(new_job())
    running = await store.jobs.create(new_job())
    done = await store.jobs.create(new_job())
    await store.jobs.mark_running(running.id)
    await store.jobs.mark_done(done.id, [], 0.1)
    assert [j.id for j in await store.jobs.unfinished()] == [queued.id, running.id]

    assert await store.jobs.requeue(running.id) is True
    again = await store.jobs.get(running.id)
    assert again is not None and (again.status, again.started_at) == ("queued", None)
    assert await store.jobs.requeue(done.id) is False


@pytest.mark.asyncio
async def test_history_pages_newest_first(store: Store) -> None:
    ids = []
    for i in range(23):
        job = await store.jobs.create(new_job(guild_id=10 if i % 2 else 11, prompt=f"p{i}"))
        ids.append(job.id)
    await store.jobs.create(new_job(user_id=2))  # someone else's

    pages, before = [], None
    while True:
        page = await store.jobs.history(1, before_id=before, limit=10)
        if not page:
            break
        pages.append([j.id for j in page])
        before = page[-1].id
    assert [len(p) for p in pages] == [10, 10, 3]
    assert [i for p in pages for i in p] == sorted(ids, reverse=True)
    assert await store.jobs.count_history(1) == 23

    in_guild = await store.jobs.history(1, guild_id=10, limit=100)
    assert [j.id for j in in_guild] == sorted((ids[i] for i in range(23) if i % 2), reverse=True)
    assert await store.jobs.count_history(1, guild_id=10) == 11


@pytest.mark.asyncio
async def test_history_filters_by_hypernet_name_ignoring_case(store: Store) -> None:
    with_foo = await store.jobs.create(new_job(hypernets=(FOO,)))
    foo_second = await store.jobs.create(new_job(hypernets=(BAR, FOO)))
    only_bar = await store.jobs.create(new_job(hypernets=(BAR,)))
    await store.jobs.create(new_job())
    await store.jobs.create(new_job(user_id=2, hypernets=(FOO,)))

    assert [j.id for j in await store.jobs.history(1, hypernet="foo")] == [foo_second.id, with_foo.id]
    assert [j.id for j in await store.jobs.history(1, hypernet="BAR")] == [only_bar.id, foo_second.id]
    assert [j.id for j in await store.jobs.history(1, hypernet="Foo", before_id=foo_second.id)] == [with_foo.id]
    assert await store.jobs.count_history(1, hypernet="FOO") == 2
    assert await store.jobs.history(1, hypernet="nothing") == []


@pytest.mark.asyncio
async def test_delete_user_data_touches_only_that_user(store: Store) -> None:
    mine = await store.jobs.create(new_job(user_id=1, hypernets=(FOO,)))
    await store.jobs.mark_done(mine.id, ["images/a.png", "images/b.png"], 1.0)
    mine2 = await store.jobs.create(new_job(user_id=1))
    await store.jobs.mark_done(mine2.id, ["images/c.png"], 1.0)
    theirs = await store.jobs.create(new_job(user_id=2, hypernets=(FOO,), parent_job_id=mine.id, origin="reroll"))
    await store.jobs.mark_done(theirs.id, ["images/d.png"], 1.0)

    deleted = await store.jobs.delete_user_data(1)
    assert deleted.count == 2
    assert sorted(deleted.image_paths) == ["images/a.png", "images/b.png", "images/c.png"]
    assert await store.jobs.get(mine.id) is None and await store.jobs.history(1) == []
    kept = await store.jobs.get(theirs.id)
    assert kept is not None and kept.parent_job_id is None and kept.image_paths == ("images/d.png",)
    assert [j.id for j in await store.jobs.history(2, hypernet="Foo")] == [theirs.id]
    assert (await store.jobs.delete_user_data(1)).count == 0


@pytest.mark.asyncio
async def test_stats_counts_by_status_since(store: Store, clock: Clock) -> None:
    await store.jobs.create(new_job())  # at 1000, before the window
    clock.now = 2_000.0
    jobs = [await store.jobs.create(new_job()) for _ in range(3)]
    await store.jobs.mark_done(jobs[0].id, [], 1.0)
    await store.jobs.mark_failed(jobs[1].id, "oom", "x")
    assert await store.jobs.stats(since=1_500.0) == {"queued": 1, "running": 0, "done": 1, "failed": 1, "cancelled": 0}
    assert (await store.jobs.stats(since=0.0))["queued"] == 2


@pytest.mark.asyncio
async def test_concurrent_writes_do_not_lock(store: Store) -> None:
    async def lifecycle(i: int) -> int:
        job = await store.jobs.create(new_job(user_id=i % 7, hypernets=(FOO,)))
        await store.jobs.mark_running(job.id)
        await store.jobs.bump_attempts(job.id)
        await store.jobs.mark_done(job.id, [f"images/{job.id}.png"], 0.5)
        return job.id

    ids = await asyncio.gather(*(lifecycle(i) for i in range(80)))
    assert len(set(ids)) == 80
    assert (await store.jobs.stats(0.0))["done"] == 80


@pytest.mark.asyncio
async def test_two_stores_on_one_file_write_concurrently(tmp_path: Path) -> None:
    """Two connections (e.g. the bot and `python -m bot db ...`) wait for each other instead of failing."""
    path = tmp_path / "shared.db"
    first = await Store.open(path)
    second = await Store.open(path)
    try:
        results = await asyncio.gather(*(s.jobs.create(new_job(user_id=n)) for n in range(40)
                                         for s in (first, second)), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert await first.jobs.count_history(0) == 2
        assert sum([await second.jobs.count_history(n) for n in range(40)]) == 80
    finally:
        await first.close()
        await second.close()


# -------------------------------------------------------------------------------------------------- hypernets


@pytest.mark.asyncio
async def test_add_and_read_back(store: Store) -> None:
    new = hn("waterElemental_10", None, base_model="SD1.5", description="water", trigger_words="elemental",
             default_multiplier=0.7, source="folder", source_detail="sub/waterElemental_10.pt", added_by=None)
    added = await store.hypernets.add(new)
    assert added.id > 0 and added.is_global and added.enabled
    assert (added.name, added.sizes, added.layer_structure, added.default_multiplier) == (
        "waterElemental_10", (320, 640, 768, 1280), (1.0, 2.0, 1.0), 0.7)
    assert (added.added_at, added.updated_at) == (1_000.0, 1_000.0)
    assert await store.hypernets.get(added.id) == added
    assert await store.hypernets.by_sha256(new.sha256) == [added]
    assert await store.hypernets.by_source_detail("folder", "sub/waterElemental_10.pt") == [added]
    assert await store.hypernets.by_source_detail("url", "sub/waterElemental_10.pt") == []
    assert await store.hypernets.all_files() == {new.file_name}


@pytest.mark.asyncio
async def test_names_differ_ignoring_case_within_what_a_guild_sees(store: Store) -> None:
    await store.hypernets.add(hn("Foo", None))
    with pytest.raises(NameTaken) as caught:
        await store.hypernets.add(hn("foo", 1))
    assert (caught.value.name, caught.value.existing_name) == ("foo", "Foo")
    assert str(caught.value) == ("A model named `Foo` already exists here; names must differ by more than upper/lower "
                                 "case, so pick another name than `foo`.")

    await store.hypernets.add(hn("bar", 1))
    with pytest.raises(NameTaken, match="A model named `bar` already exists here; names must differ"):
        await store.hypernets.add(hn("BAR", None))  # a global name is seen by guild 1 too
    with pytest.raises(NameTaken, match=r"^A model named `bar` already exists here\.$"):
        await store.hypernets.add(hn("bar", 1, sha="9" * 64))  # a different file, the same name
    await store.hypernets.add(hn("BAR", 2))  # guild 2 cannot see guild 1's "bar"

    assert await store.hypernets.visible_names(1) == ["bar", "Foo"]
    assert await store.hypernets.visible_names(2) == ["BAR", "Foo"]
    assert await store.hypernets.visible_names(None) == ["Foo"]


@pytest.mark.asyncio
async def test_the_store_applies_the_one_name_rule(store: Store) -> None:
    with pytest.raises(InvalidName) as caught:
        await store.hypernets.add(hn("Straße", 3, sha="d" * 64))
    assert str(caught.value) == ("`Straße` cannot be a model name: model names may only use letters, digits, `_`, `.` "
                                 "and `-`, not `ß`.")
    await store.hypernets.add(hn("STRASSE", 3, sha="c" * 64))
    with pytest.raises(NameTaken):
        await store.hypernets.add(hn("strasse", None, sha="f" * 64))  # a global name clashes with every guild's


@pytest.mark.asyncio
async def test_by_name_is_exact_case_and_scoped(store: Store) -> None:
    glob = await store.hypernets.add(hn("Foo", None))
    g1 = await store.hypernets.add(hn("baz", 1))
    g2 = await store.hypernets.add(hn("baz", 2))
    assert await store.hypernets.by_name("baz", 1) == g1
    assert await store.hypernets.by_name("baz", 2) == g2
    assert await store.hypernets.by_name("Baz", 1) is None
    assert await store.hypernets.by_name("baz", 3) is None
    assert await store.hypernets.by_name("baz", None) is None
    assert await store.hypernets.by_name("Foo", 2) == glob
    assert await store.hypernets.by_name("Foo", None) == glob
    assert await store.hypernets.by_name("foo", None) is None


@pytest.mark.asyncio
async def test_same_file_in_the_same_scope_is_one_model(store: Store) -> None:
    first = await store.hypernets.add(hn("one", 1, sha="a" * 64))
    with pytest.raises(DuplicateModel) as caught:
        await store.hypernets.add(hn("two", 1, sha="a" * 64))
    assert caught.value.existing_name == first.name
    assert str(caught.value) == "This file is already installed here as `one`."
    # Other scopes may hold the same file under their own name.
    other_guild = await store.hypernets.add(hn("two", 2, sha="a" * 64))
    glob = await store.hypernets.add(hn("three", None, sha="a" * 64))
    assert {h.id for h in await store.hypernets.by_sha256("a" * 64)} == {first.id, other_guild.id, glob.id}
    assert await store.hypernets.all_files() == {"a" * 64 + ".safetensors"}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["", " padded", "tab\there", "x" * 65, "None"])
async def test_bad_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(InvalidName, match="cannot be a model name: ") as caught:
        await store.hypernets.add(hn(name, 1))
    assert isinstance(caught.value, StoreError) and type(caught.value).__module__ == "bot.store"
    assert await store.hypernets.visible_names(1, enabled_only=False) == []


@pytest.mark.asyncio
async def test_update_changes_only_given_fields(store: Store, clock: Clock) -> None:
    added = await store.hypernets.add(hn("Foo", 1, description="old", trigger_words="tw", default_multiplier=0.8))
    clock.now = 1_050.0
    updated = await store.hypernets.update(added.id, description="new")
    assert updated == dataclasses.replace(added, description="new", updated_at=1_050.0)
    assert await store.hypernets.get(added.id) == updated

    clock.now = 1_060.0
    off = await store.hypernets.update(added.id, enabled=False, default_multiplier=0.0)
    assert off == dataclasses.replace(updated, enabled=False, default_multiplier=0.0, updated_at=1_060.0)
    assert await store.hypernets.visible_names(1) == []
    assert await store.hypernets.visible_names(1, enabled_only=False) == ["Foo"]
    assert await store.hypernets.update(added.id) == off  # nothing given, nothing changed
    with pytest.raises(NotFound, match="Hypernetwork #999"):
        await store.hypernets.update(999, description="x")


@pytest.mark.asyncio
async def test_search(store: Store) -> None:
    await store.hypernets.add(hn("zeta", None, description="Watercolor style"))
    await store.hypernets.add(hn("Alpha", 1, trigger_words="WATER, splash"))
    await store.hypernets.add(hn("beta", 1, description="fire"))
    await store.hypernets.add(hn("gamma", 2, description="water too"))  # another guild's
    off = await store.hypernets.add(hn("Delta", 1, description="water"))
    await store.hypernets.update(off.id, enabled=False)

    names = [h.name for h in await store.hypernets.search(1, "water")]
    assert names == ["Alpha", "zeta"]
    assert [h.name for h in await store.hypernets.search(1, "WATER", include_disabled=True)] == ["Alpha", "Delta", "zeta"]
    assert [h.name for h in await store.hypernets.search(1, "ALP")] == ["Alpha"]
    assert [h.name for h in await store.hypernets.search(1)] == ["Alpha", "beta", "zeta"]
    assert [h.name for h in await store.hypernets.search(1, offset=1, limit=1)] == ["beta"]
    assert [h.name for h in await store.hypernets.search(None, "water")] == ["zeta"]
    assert [h.name for h in await store.hypernets.search(1, "50%_")] == []  # no LIKE wildcards
    assert await store.hypernets.count_search(1, "water") == 2
    assert await store.hypernets.count_search(1, include_disabled=True) == 4


@pytest.mark.asyncio
async def test_remove_keeps_jobs_and_frees_the_file(store: Store) -> None:
    net = await store.hypernets.add(hn("Foo", 1, sha="a" * 64))
    job = await store.jobs.create(new_job(hypernets=(HypernetRef("Foo", "a" * 64, 0.5),)))
    removed = await store.hypernets.remove(net.id)
    assert removed == net
    assert await store.hypernets.get(net.id) is None
    assert await store.hypernets.all_files() == set()
    assert (await store.jobs.get(job.id)).settings.hypernets == (HypernetRef("Foo", "a" * 64, 0.5),)  # type: ignore[union-attr]
    assert [j.id for j in await store.jobs.history(1, hypernet="Foo")] == [job.id]
    with pytest.raises(NotFound):
        await store.hypernets.remove(net.id)
    await store.hypernets.add(hn("foo", 1, sha="a" * 64))  # name and file are free again


@pytest.mark.asyncio
async def test_concurrent_adds_of_one_name_let_exactly_one_win(store: Store) -> None:
    results = await asyncio.gather(*(store.hypernets.add(hn("Same" if i % 2 else "same", 1, sha=f"{i:064x}"))
                                     for i in range(20)), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, NameTaken) for r in results if r is not winners[0])
