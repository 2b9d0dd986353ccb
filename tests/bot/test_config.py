"""Settings loading: every error names the key path and what is expected."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, settings_docs

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ=environ or {})
    return str(info.value)


def test_example_config_loads_and_documents_every_key() -> None:
    settings = load_settings(ROOT / "config.example.toml", environ={})
    assert settings.storage.database == "data/hypercord.sqlite3"
    assert settings.models.hypernetwork_dir == "models/hypernetworks"
    example = tomllib.loads((ROOT / "config.example.toml").read_text(encoding="utf-8"))
    assert {section: sorted(keys) for section, keys in example.items()} == {
        section: sorted(keys) for section, keys in settings_docs().items()}


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.engine.device == "auto"
    assert settings.token is None


@pytest.mark.parametrize(("text", "message"), [
    ("[engine]\ndevcie = 'cpu'\n",
     "unknown key `engine.devcie` (expected one of: device, dtype, hypernet_dtype, max_batch, compile, "
     "compile_cache_dir, hypernet_cache_mb, progress_interval_s, heartbeat_interval_s, heartbeat_timeout_s, "
     "start_timeout_s, job_timeout_s, transport, redis_url, redis_prefix, bot_id, lease_s, checkpoint_device_mb, "
     "checkpoint_host_mb, affinity_wait_s)"),
    ("[engin]\n", "unknown section `[engin]` (expected one of: discord, storage, models, checkpoints, intake, engine, "
                   "limits, logging)"),
    ("[engine]\nmax_batch = 'four'\n", '`engine.max_batch` must be an integer, got string "four"'),
    ("[engine]\nmax_batch = 2.5\n", "`engine.max_batch` must be an integer, got number 2.5"),
    ("[engine]\ndevice = 'gpu'\n", '`engine.device` must be one of auto, cuda, cpu; got "gpu"'),
    ("[engine]\nmax_batch = -1\n", "`engine.max_batch` must be at least 0; got -1"),
    ("[engine]\ncompile = 'yes'\n", '`engine.compile` must be one of auto, on, off, cudagraphs; got "yes"'),
    ("[engine]\njob_timeout_s = 1\n", "`engine.job_timeout_s` must be at least 5; got 1.0"),
    ("[discord]\nowner_ids = [1, 'two']\n", '`discord.owner_ids[1]` must be an integer, got string "two"'),
    ("[discord]\nowner_ids = 5\n", "`discord.owner_ids` must be a list of integers, got integer 5"),
    ("[discord]\nsync_global_on_start = 1\n", "`discord.sync_global_on_start` must be true or false, got integer 1"),
    ("engine = 3\n", "`engine` must be a table ([engine]), got integer 3"),
    ("[limits]\nmin_size = 60\n", "`limits.min_size` must be at least 64; got 60"),
    ("[limits]\nmax_size = 256\n", "`limits`: default size (width) 512 is outside [64, 256]"),
    ("[limits]\nmax_size = 1028\n", "`limits.max_size` must be a multiple of 8; got 1028"),
    ("[limits]\nmin_multiplier = 3.0\n", "`limits.min_multiplier` (3.0) is above `limits.max_multiplier` (2.0)"),
    ("[discord]\nrest_base_url = 'discord.com'\n", '`discord.rest_base_url` must be an http(s):// or ws(s):// URL; '
     'got "discord.com"'),
])
def test_errors_name_the_key_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    assert load_error(tmp_path, text) == f"{tmp_path / 'config.toml'}: {message}"


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    assert load_error(tmp_path, "[engine\n").startswith(f"{tmp_path / 'config.toml'}: not valid TOML: ")


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[engine]\ndevice = 'cuda'\nmax_batch = 8\n")
    settings = load_settings(path, environ={"HYPERCORD_ENGINE__DEVICE": "cpu", "HYPERCORD_DISCORD__DEV_GUILD_IDS": "1,2",
                                            "HYPERCORD_INTAKE__ALLOW_PRIVATE_ADDRESSES": "true"})
    assert settings.engine.device == "cpu"
    assert settings.engine.max_batch == 8
    assert settings.discord.dev_guild_ids == [1, 2]
    assert settings.intake.allow_private_addresses is True


def test_job_timeout_reaches_the_engine_client(tmp_path: Path) -> None:
    from bot.runner import build_engine

    assert build_engine(load_settings(write(tmp_path, ""), environ={})).job_timeout_s == 600.0
    settings = load_settings(write(tmp_path, "[engine]\njob_timeout_s = 90\n"),
                             environ={"HYPERCORD_ENGINE__JOB_TIMEOUT_S": "45.5"})
    assert build_engine(settings).job_timeout_s == 45.5


@pytest.mark.parametrize(("environ", "message"), [
    ({"HYPERCORD_ENGINE__MAX_BATCH": "four"}, '`engine.max_batch` must be an integer, got string "four"'),
    ({"HYPERCORD_ENGINE__DEVCIE": "cpu"}, "environment variable HYPERCORD_ENGINE__DEVCIE: unknown key `engine.devcie` "
     "(expected one of: device, dtype, hypernet_dtype, max_batch, compile, compile_cache_dir, hypernet_cache_mb, "
     "progress_interval_s, "
     "heartbeat_interval_s, heartbeat_timeout_s, start_timeout_s, job_timeout_s, transport, redis_url, redis_prefix, "
     "bot_id, lease_s, checkpoint_device_mb, checkpoint_host_mb, affinity_wait_s)"),
    ({"HYPERCORD_ENGINEDEVICE": "cpu"}, "environment variable HYPERCORD_ENGINEDEVICE does not name a setting (use "
     "HYPERCORD_<SECTION>__<KEY>, sections: discord, storage, models, checkpoints, intake, engine, limits, logging)"),
])
def test_environment_errors(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    assert load_error(tmp_path, "", environ) == f"{tmp_path / 'config.toml'}: {message}"


def test_token_only_from_environment(tmp_path: Path) -> None:
    assert "unknown key `discord.token`" in load_error(tmp_path, "[discord]\ntoken = 'abc'\n")
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    settings = load_settings(write(tmp_path, ""), environ={"DISCORD_TOKEN_FILE": str(token_file)})
    assert settings.token is not None and settings.token.get() == "file-token"
    assert "file-token" not in repr(settings) and "file-token" not in json.dumps(settings.redacted())
    missing = tmp_path / "nope"
    assert load_error(tmp_path, "", {"DISCORD_TOKEN_FILE": str(missing)}) == (
        f"{tmp_path / 'config.toml'}: DISCORD_TOKEN_FILE={missing} cannot be read: No such file or directory")


def run_cli(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=tmp_path, env=base | env, capture_output=True,
                          text=True, timeout=60)


def test_cli_without_token_explains_how_to_get_one(tmp_path: Path) -> None:
    result = run_cli(tmp_path, env={})
    assert result.returncode == 2
    assert "discord.com/developers/applications" in result.stderr
    assert "DISCORD_TOKEN" in result.stderr and "DISCORD_TOKEN_FILE" in result.stderr


def test_cli_check_config_redacts_and_exits(tmp_path: Path) -> None:
    ok = run_cli(tmp_path, "--check-config", env={"DISCORD_TOKEN": "secret-token-value"})
    assert ok.returncode == 0, ok.stderr
    shown = json.loads(ok.stdout)
    assert shown["token"] == "********** (set)" and "secret-token-value" not in ok.stdout
    assert shown["engine"]["device"] == "auto"
    bad = run_cli(tmp_path, "--check-config", env={"HYPERCORD_ENGINE__DEVICE": "gpu"})
    assert bad.returncode == 1
    assert bad.stderr.strip() == 'error: configuration: `engine.device` must be one of auto, cuda, cpu; got "gpu"'


def test_checkpoints_are_named_tables_with_their_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, """
[checkpoints]
default = "anything-v3"
[checkpoints.models.anything-v3]
source = "models/checkpoints/anything-v3.safetensors"
clip_skip = 2
cfg_scale = 7
[checkpoints.models.v1-5]
source = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""), environ={})
    models = settings.checkpoints.models
    assert list(models) == ["anything-v3", "v1-5"] and settings.checkpoints.default == "anything-v3"
    assert (models["anything-v3"].clip_skip, models["anything-v3"].cfg_scale, models["v1-5"].prediction) == (2, 7.0, "auto")


@pytest.mark.parametrize(("text", "message"), [
    ("[checkpoints.models.x]\nclip_skip = 13\n", "`checkpoints.models.x.clip_skip` must be at most 12; got 13"),
    ("[checkpoints.models.x]\nsorce = 'a'\n", "unknown key `checkpoints.models.x.sorce` (expected one of: source,"),
    ("[checkpoints]\nmodels = 3\n", "`checkpoints.models` must be a table of named tables ([checkpoints.models.NAME])"),
    ('[checkpoints.models."a b"]\nsource = "x"\n', "`checkpoints.models.a b`: `a b` cannot be a name (model names"),
])
def test_checkpoint_entries_are_checked_with_their_path(tmp_path: Path, text: str, message: str) -> None:
    assert message in load_error(tmp_path, text)


def test_checkpoint_tables_cannot_come_from_the_environment(tmp_path: Path) -> None:
    assert "`checkpoints.models` is a table of tables; set it in the config file" in load_error(
        tmp_path, "", environ={"HYPERCORD_CHECKPOINTS__MODELS": "x"})
