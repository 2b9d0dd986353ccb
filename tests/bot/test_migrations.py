"""Migrations on real SQLite files: from empty, re-open, refusal of newer schemas, backups, rollback of a bad step."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from bot.db import Database
from bot.migrations import Migration, MigrationError, SchemaTooNew, load_migrations, migrate
from bot.migrations.migrate import split_statements
from bot.store import NewJob, NewLora, Store
from engine.render_settings import HypernetRef, RenderSettings
from tests.requests import new_job

EXPECTED_TABLES = {"jobs", "job_hypernets", "job_loras", "models"}


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.v*.bak"))


def _job(user_id: int = 1) -> NewJob:
    return new_job(user_id, prompt="a cat", seed=1)


def test_packaged_migrations_are_numbered_from_one() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "init"


@pytest.mark.asyncio
async def test_fresh_database_gets_the_latest_schema_without_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "hypercord.db"
    store = await Store.open(path)
    await store.close()
    latest = len(load_migrations())
    assert store.migration.from_version == 0
    assert store.migration.to_version == latest
    assert store.migration.backup_path is None
    assert _user_version(path) == latest
    assert _tables(path) >= EXPECTED_TABLES
    assert _backups(path) == []


@pytest.mark.asyncio
async def test_reopening_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "hypercord.db"
    store = await Store.open(path)
    job = await store.jobs.create(_job())
    await store.close()

    again = await Store.open(path)
    try:
        assert again.migration.applied == 0
        assert again.migration.backup_path is None
        assert await again.jobs.get(job.id) == job
    finally:
        await again.close()
    assert _backups(path) == []


@pytest.mark.asyncio
async def test_newer_database_is_refused_with_a_clear_message_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "hypercord.db"
    store = await Store.open(path)
    await store.close()
    latest = len(load_migrations())
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {latest + 3}")

    with pytest.raises(SchemaTooNew) as caught:
        await Store.open(path)
    assert str(caught.value) == (
        f"Database {path} has schema version {latest + 3}, but this version of Hypercord only knows versions up to "
        f"{latest}. It was written by a newer Hypercord: upgrade Hypercord, or restore a backup made before the "
        f"upgrade. Refusing to open it."
    )
    assert _user_version(path) == latest + 3
    assert _backups(path) == []


M1 = Migration(1, "people", "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n")
M2 = Migration(2, "pets", "-- pets belong to people\nCREATE TABLE pets (\n  id INTEGER PRIMARY KEY,\n"
                          "  owner INTEGER NOT NULL REFERENCES people (id)\n);\n")


@pytest.mark.asyncio
async def test_existing_data_is_backed_up_before_migrating(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    db = await Database.open(path)
    try:
        first = await migrate(db, [M1])
        assert (first.from_version, first.to_version, first.backup_path) == (0, 1, None)
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO people (name) VALUES ('ada')")

        second = await migrate(db, [M1, M2])
    finally:
        await db.close()
    assert (second.from_version, second.to_version) == (1, 2)
    assert second.backup_path is not None and second.backup_path.exists()
    assert _backups(path) == [second.backup_path]
    assert second.backup_path.name.startswith("db.sqlite.v1-")
    # The copy is the database as it was: version 1, the row, and no table from migration 2.
    assert _user_version(second.backup_path) == 1
    assert _tables(second.backup_path) == {"people"}
    with sqlite3.connect(second.backup_path) as conn:
        assert conn.execute("SELECT name FROM people").fetchall() == [("ada",)]
    assert _user_version(path) == 2
    assert {"people", "pets"} <= _tables(path)


@pytest.mark.asyncio
async def test_a_failing_migration_is_rolled_back_entirely(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    bad = Migration(2, "broken", "CREATE TABLE half_done (id INTEGER);\nINSERT INTO no_such_table VALUES (1);\n")
    db = await Database.open(path)
    try:
        await migrate(db, [M1])
        with pytest.raises(MigrationError, match=r"^Migration 0002_broken failed and was rolled back: no such table"):
            await migrate(db, [M1, bad])
        # The connection is usable afterwards and the failed step left nothing behind.
        assert await db.pragma("user_version") == 1
    finally:
        await db.close()
    assert _tables(path) == {"people"}


@pytest.mark.asyncio
async def test_a_migration_breaking_foreign_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    orphan = Migration(3, "orphan", "INSERT INTO pets (id, owner) VALUES (1, 999);\n")
    bad = Migration(3, "orphan", "PRAGMA defer_foreign_keys = ON;\n" + orphan.sql)
    db = await Database.open(path)
    try:
        await migrate(db, [M1, M2])
        # Without deferral SQLite refuses the row itself; with deferral our foreign_key_check catches it.
        with pytest.raises(MigrationError, match="FOREIGN KEY constraint failed"):
            await migrate(db, [M1, M2, orphan])
        with pytest.raises(MigrationError, match="left 1 foreign key violation"):
            await migrate(db, [M1, M2, bad])
        assert await db.pragma("user_version") == 2
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_bad_migration_lists_are_refused(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite")
    try:
        with pytest.raises(MigrationError, match="expected 0002, found 0003_pets"):
            await migrate(db, [M1, Migration(3, "pets", M2.sql)])
        with pytest.raises(MigrationError, match="controls transactions itself"):
            await migrate(db, [Migration(1, "tx", "BEGIN;\nCREATE TABLE t (x);\nCOMMIT;\n")])
        assert await db.pragma("user_version") == 0
    finally:
        await db.close()


def test_split_statements_keeps_triggers_whole_and_drops_comments() -> None:
    sql = (
        "-- header\n"
        "CREATE TABLE a (x);\n"
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  INSERT INTO a VALUES (1);\n  SELECT 1;\nEND;\n"
        "-- trailing comment\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(MigrationError, match="unfinished statement"):
        split_statements("CREATE TABLE a (x)")


# ---- a real database of schema version 1 (tests/fixtures/db/README.md) --------------------------------------------

V1_DATABASE = Path(__file__).resolve().parents[1] / "fixtures" / "db" / "hypercord-v1.sqlite3"
WATER, FIRE, GOTHIC = "a" * 64, "b" * 64, "c" * 64


def _v1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "hypercord.sqlite3"
    shutil.copyfile(V1_DATABASE, path)
    assert _user_version(path) == 1
    return path


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


@pytest.mark.asyncio
async def test_a_real_version_1_database_migrates_and_reads_back_the_same(tmp_path: Path) -> None:
    path = _v1_copy(tmp_path)
    store = await Store.open(path)
    try:
        assert (store.migration.from_version, store.migration.to_version) == (1, len(load_migrations()))
        jobs = {j.id: j for j in await store.jobs.history(501, limit=50) + await store.jobs.history(502, limit=50)
                + await store.jobs.history(503, limit=50)}
        registry = await store.hypernets.search(None, include_disabled=True) + await store.hypernets.search(
            111, include_disabled=True)
    finally:
        await store.close()
    assert store.migration.backup_path is not None and _user_version(store.migration.backup_path) == 1
    assert "hypernets_json" not in _columns(path, "jobs")
    assert sorted(jobs) == [1, 2, 3, 4, 5, 6]

    two = jobs[2]
    assert two.settings == RenderSettings(
        prompt="woman, red hair <hypernet:waterElemental_10:0.7> <hypernet:fireSpirit:1.2>",
        negative_prompt="blurry, low quality", hypernets=(HypernetRef("waterElemental_10", WATER, 0.7),
                                                          HypernetRef("fireSpirit", FIRE, 1.2)),
        seed=42, steps=20, cfg_scale=7.5, sampler="DPM++ 2M Karras", width=768, height=512, count=2,
        checkpoint="stable-diffusion-v1-5/stable-diffusion-v1-5", rng="CPU")
    # Version-1 jobs drew their noise from torch's CPU generator: migration 0003 keeps that for their rerolls.
    assert {j.settings.rng for j in jobs.values()} == {"CPU"}
    assert (two.status, two.image_paths, two.duration_s) == ("done", ("2/0.png", "2/1.png"), 8.25)
    assert two.warnings and "fireSpirit" in two.warnings[0]
    three = jobs[3]
    assert (three.user_id, three.parent_job_id, three.origin, three.status, three.error_kind) == (
        502, 2, "multiplier", "failed", "out_of_memory")
    assert three.settings.hypernets[0] == HypernetRef("waterElemental_10", WATER, 0.8)
    assert jobs[4].settings.hypernets == (HypernetRef("gothic", GOTHIC, 0.0),) and jobs[4].status == "cancelled"
    five, six = jobs[5], jobs[6]
    assert (five.guild_id, five.status, five.interaction_token) == (None, "queued", "tok-queued")
    assert (six.status, six.attempts, six.message_id, six.settings.seed) == ("running", 1, 9006, 2**32 - 1)
    assert six.settings.hypernets == (HypernetRef("waterElemental_10", WATER, -0.5),)
    assert jobs[1].settings.hypernets == () and jobs[1].message_id == 9001
    # Every later operation works on the migrated rows: a multiplier change of job 2 keeps prompt and refs in step.
    changed = two.settings.with_multipliers([0.8, 1.2])
    assert changed.prompt == "woman, red hair <hypernet:waterElemental_10:0.8> <hypernet:fireSpirit:1.2>"
    assert {(h.name, h.guild_id, h.enabled, h.source) for h in registry} == {
        ("waterElemental_10", None, True, "folder"), ("fireSpirit", 111, False, "url"), ("gothic", 111, True, "attachment")}


@pytest.mark.asyncio
async def test_a_hypernet_only_in_the_old_json_copy_is_kept(tmp_path: Path) -> None:
    path = _v1_copy(tmp_path)
    with sqlite3.connect(path) as conn:  # as if an old row's index copy had been lost
        conn.execute("DELETE FROM job_hypernets WHERE job_id = 2 AND position = 1")
    store = await Store.open(path)
    try:
        job = await store.jobs.get(2)
    finally:
        await store.close()
    assert job is not None and [h.name for h in job.settings.hypernets] == ["waterElemental_10", "fireSpirit"]


def _v1_registry(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM hypernets ORDER BY id")]


@pytest.mark.asyncio
async def test_the_v1_registry_moves_into_the_models_table_unchanged(tmp_path: Path) -> None:
    path = _v1_copy(tmp_path)
    before = _v1_registry(path)
    store = await Store.open(path)
    try:
        rows = [await store.hypernets.get(int(str(r["id"]))) for r in before]
        assert await store.loras.count_search(111, include_disabled=True) == 0
        assert await store.embeddings.count_search(None, include_disabled=True) == 0
        # Names are per kind: a LoRA may share a hypernetwork's name; its id continues after the migrated rows.
        lora = await store.loras.add(NewLora(
            name="waterElemental_10", guild_id=None, sha256=WATER, file_name=f"{WATER}.safetensors", file_size=1,
            source="attachment", lora_format="LoRA", family="sd1", context_width=768, text_width=768, unet_modules=1,
            te_modules=0, alias=None, short_hash="0" * 12))
        assert await store.hypernets.get(lora.id) is None and await store.hypernets.all_files() == {
            f"{WATER}.safetensors", f"{FIRE}.safetensors", f"{GOTHIC}.safetensors"}
    finally:
        await store.close()
    assert lora.id == 4
    for old, row in zip(before, rows, strict=True):
        assert row is not None
        assert {f: getattr(row, f) for f in ("id", "name", "guild_id", "sha256", "file_name", "file_size", "base_model",
                                             "description", "trigger_words", "default_multiplier", "preview_path",
                                             "added_by", "added_at", "source", "source_detail", "updated_at")} == {
            f: old[f] for f in ("id", "name", "guild_id", "sha256", "file_name", "file_size", "base_model",
                                "description", "trigger_words", "default_multiplier", "preview_path", "added_by",
                                "added_at", "source", "source_detail", "updated_at")}
        assert row.enabled is bool(old["enabled"]) and row.activation == old["activation"]
        assert list(row.sizes) == json.loads(str(old["sizes_json"]))
        assert list(row.layer_structure) == json.loads(str(old["layer_structure_json"]))
    # The old table's shape lives on as a read-only view, for scripts written against schema 1-3.
    view = _v1_registry(path)
    assert [{**r, "sizes_json": json.loads(r["sizes_json"]), "layer_structure_json": json.loads(r["layer_structure_json"])}
            for r in view] == [{**r, "sizes_json": json.loads(str(r["sizes_json"])),
                                "layer_structure_json": json.loads(str(r["layer_structure_json"]))} for r in before]
    assert "hypernets" not in _tables(path)
