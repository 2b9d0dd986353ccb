"""The checkpoint catalog: config entries, the drop-in folder and the legacy single checkpoint, checked and hashed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.checkpoints import CheckpointCatalog, legacy_name
from bot.config import CheckpointEntry, CheckpointSettings, ModelSettings, Settings
from engine.checkpoints import HashCache, checkpoint_title, split_checkpoint_title
from tests.engine.checkpoints.files import write_sd1


def settings(folder: Path, *, default: str = "", models: dict | None = None, legacy: str = "tiny") -> Settings:
    return Settings(models=ModelSettings(checkpoint=legacy),
                    checkpoints=CheckpointSettings(folder=str(folder), default=default, models=models or {}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    (root / "anime").mkdir()
    write_sd1(root / "anime" / "anythingTiny.safetensors", seed=1)
    write_sd1(root / "realTiny.safetensors", seed=2)
    (root / "old.ckpt").write_bytes(b"\x80\x02}q\x00.")  # a pickle: listed with its refusal, never opened as one
    return root


def test_the_folder_entries_and_the_legacy_checkpoint_are_listed_by_name(folder: Path, tmp_path: Path) -> None:
    catalog = CheckpointCatalog.build(settings(folder), hash_cache=HashCache(tmp_path / "hashes.json"))
    assert sorted(catalog.entries) == ["anythingTiny", "old", "realTiny", "tiny"]
    assert catalog.default == "tiny" and catalog.worker_specs()[0].name == "tiny"
    anime = catalog.entries["anythingTiny"]
    assert (anime.family, anime.family_label, anime.sd_checkpoint_name, anime.usable) == (
        "sd1", "SD 1.x", "anime_anythingTiny", True)
    assert anime.hashes is not None and anime.model_hash == anime.hashes.sha256[:10]
    assert "pickled PyTorch checkpoint" in (catalog.entries["old"].refusal or "")
    assert [e.name for e in catalog.usable()] == ["anythingTiny", "realTiny", "tiny"]


def test_config_entries_carry_their_defaults_and_win_over_the_folder(folder: Path, tmp_path: Path) -> None:
    entries = {"anythingTiny": CheckpointEntry(source=str(folder / "anime" / "anythingTiny.safetensors"),
                                               display_name="Anything (tiny)", clip_skip=2, steps=28),
               "v1-5": CheckpointEntry(source="stable-diffusion-v1-5/stable-diffusion-v1-5"),
               "gone": CheckpointEntry(source=str(tmp_path / "missing.safetensors"))}
    catalog = CheckpointCatalog.build(settings(folder, default="anythingTiny", models=entries))
    anime = catalog.entries["anythingTiny"]
    assert (anime.label, anime.defaults.clip_skip, anime.defaults.steps, anime.defaults.cfg_scale) == (
        "Anything (tiny)", 2, 28, None)
    assert catalog.entries["v1-5"].usable and catalog.entries["v1-5"].family is None  # a hub id: the worker checks it
    assert catalog.entries["gone"].refusal == f"`{tmp_path / 'missing.safetensors'}` does not exist; check the path"
    assert catalog.default == "anythingTiny"


def test_an_unknown_default_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="the default checkpoint 'nope' is not installed"):
        CheckpointCatalog.build(settings(folder, default="nope"))


def test_a_hypernets_training_checkpoint_is_found_by_hash_then_by_name(folder: Path) -> None:
    catalog = CheckpointCatalog.build(settings(folder))
    real = catalog.entries["realTiny"]
    assert real.hashes is not None
    assert catalog.trained_on(real.hashes.sha256[:10], None) is real
    assert catalog.trained_on(real.hashes.autov1, "something else") is real
    assert catalog.trained_on("0123456789", "anime_anythingTiny") is catalog.entries["anythingTiny"]
    assert catalog.trained_on("0123456789", "v1-5-pruned-emaonly") is None


def test_legacy_names() -> None:
    assert [legacy_name(s) for s in ("tiny", "models/sd/v1-5-pruned.safetensors", "org/stable-diffusion-v1-5",
                                     "/srv/models/anything-v3/")] == ["tiny", "v1-5-pruned", "stable-diffusion-v1-5",
                                                                       "anything-v3"]


def test_a_config_entrys_vae_is_found_in_the_vae_folder_or_refuses_the_checkpoint(tmp_path: Path) -> None:
    vae_folder = tmp_path / "VAE"
    vae_folder.mkdir()
    (vae_folder / "ft-mse.safetensors").write_bytes(b"not inspected by the catalog")
    models = {"withVae": CheckpointEntry(source="tiny", vae="ft-mse.safetensors"),
              "missingVae": CheckpointEntry(source="tiny-b", vae="gone.safetensors")}
    cfg = CheckpointSettings(folder=str(tmp_path / "none"), vae_folder=str(vae_folder), models=models)
    catalog = CheckpointCatalog.build(Settings(models=ModelSettings(checkpoint="tiny"), checkpoints=cfg))
    assert catalog.entries["withVae"].vae == str(vae_folder / "ft-mse.safetensors")
    assert catalog.entries["withVae"].spec().vae == str(vae_folder / "ft-mse.safetensors")
    assert catalog.entries["missingVae"].refusal == (
        f"its VAE `gone.safetensors` does not exist (looked in `{vae_folder}`); put the file there or fix "
        "`checkpoints.models.missingVae.vae`")


def test_a_recorded_title_matches_a_renamed_checkpoint_by_its_hash_and_older_records_still_match(folder: Path) -> None:
    catalog = CheckpointCatalog.build(settings(folder))
    real = catalog.entries["realTiny"]
    assert real.hashes is not None
    title = checkpoint_title("realTiny-before-it-was-renamed", real.hashes.autov2)
    assert title == f"realTiny-before-it-was-renamed [{real.hashes.autov2}]"
    assert catalog.trained_on_record(title) is real  # the name no longer matches; the hash does
    assert catalog.trained_on_record("anime_anythingTiny [0123456789]") is catalog.entries["anythingTiny"]
    assert catalog.trained_on_record("anime_anythingTiny") is catalog.entries["anythingTiny"]  # a name alone
    assert catalog.trained_on_record(real.hashes.autov1) is real  # a hash alone (older A1111 files)
    assert catalog.trained_on_record(None) is None and catalog.trained_on_record("v1-5-pruned-emaonly") is None


@pytest.mark.parametrize(("name", "recorded", "title", "split"), [
    ("v1-5-pruned-emaonly", "6ce0161689", "v1-5-pruned-emaonly [6ce0161689]", ("v1-5-pruned-emaonly", "6ce0161689")),
    ("anything [v3]", "e1441589", "anything [v3] [e1441589]", ("anything [v3]", "e1441589")),
    ("", "e1441589", "e1441589", ("e1441589", "e1441589")),
    (" sd15 ", None, "sd15", ("sd15", "sd15")),
    (None, "", None, (None, None)),
])
def test_checkpoint_titles_round_trip(name, recorded, title, split) -> None:
    assert checkpoint_title(name, recorded) == title
    assert split_checkpoint_title(title) == split
