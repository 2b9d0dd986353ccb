"""Settings: ``config.toml`` + environment overrides, validated with the key path in every message.

Why our own small loader instead of a settings library: the rules are few (unknown keys, wrong types,
bad values, ranges), the messages must name the exact key (``engine.max_batch``) and what is
expected, and the token must only ever come from the environment. The dataclasses below are the
single source of truth; ``config.example.toml`` documents the same keys in place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.names import name_problem

ENV_PREFIX = "HYPERCORD_"
CONFIG_ENV = "HYPERCORD_CONFIG"
TOKEN_ENV = "DISCORD_TOKEN"
TOKEN_FILE_ENV = "DISCORD_TOKEN_FILE"
_REDIS_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")  # the same rule as engine.client.redis_layout.NAME_RULE


class ConfigError(ValueError):
    """A configuration problem, phrased for the person editing the file."""


class Secret:
    """A string that never shows itself in ``repr``/``str`` (so it cannot leak into logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def _opt(default: Any, *, choices: tuple[str, ...] | None = None, min: float | None = None,
         max: float | None = None, doc: str = "") -> Any:
    """A setting with its default and its constraints (checked by the loader)."""
    meta = {"choices": choices, "min": min, "max": max, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DiscordSettings:
    owner_ids: list[int] = _opt([])
    dev_guild_ids: list[int] = _opt([])
    rest_base_url: str = _opt("https://discord.com/api/v10")
    gateway_url: str = _opt("wss://gateway.discord.gg/")
    sync_global_on_start: bool = _opt(False)
    edit_interval_s: float = _opt(1.5, min=0.05, max=60)


@dataclass(frozen=True)
class StorageSettings:
    database: str = _opt("data/hypercord.sqlite3")
    images_dir: str = _opt("data/images")
    busy_timeout_ms: int = _opt(5000, min=0, max=600_000)


@dataclass(frozen=True)
class ModelSettings:
    """The drop-in folders are A1111's; ``lora_dir``, ``lycoris_dir`` and ``embedding_dir`` default ("") to the folders
    of those names next to ``hypernetwork_dir`` (``models/Lora``, ``models/LyCORIS``, ``models/embeddings``)."""

    hypernetwork_dir: str = _opt("models/hypernetworks")
    lora_dir: str = _opt("")
    lycoris_dir: str = _opt("")
    embedding_dir: str = _opt("")
    store_dir: str = _opt("models/store")
    checkpoint: str = _opt("stable-diffusion-v1-5/stable-diffusion-v1-5")
    model_name: str = _opt("")

    def _beside_hypernetworks(self, configured: str, name: str) -> Path:
        return Path(configured) if configured else Path(self.hypernetwork_dir).parent / name

    @property
    def lora_folder(self) -> Path:
        return self._beside_hypernetworks(self.lora_dir, "Lora")

    @property
    def lycoris_folder(self) -> Path:
        return self._beside_hypernetworks(self.lycoris_dir, "LyCORIS")

    @property
    def embedding_folder(self) -> Path:
        return self._beside_hypernetworks(self.embedding_dir, "embeddings")


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint the owner installs by name (``[checkpoints.models.NAME]``); empty/0 values mean "not set"."""

    source: str = _opt("")  # a .safetensors file, a diffusers folder, a hub id, or "tiny"
    display_name: str = _opt("")
    vae: str = _opt("")  # a VAE .safetensors (A1111's models/VAE), "" = the checkpoint's own
    prediction: str = _opt("auto", choices=("auto", "epsilon", "v_prediction"))
    sampler: str = _opt("")
    steps: int = _opt(0, min=0, max=500)
    cfg_scale: float = _opt(0.0, min=0, max=30)
    width: int = _opt(0, min=0, max=4096)
    height: int = _opt(0, min=0, max=4096)
    clip_skip: int = _opt(0, min=0, max=12)


@dataclass(frozen=True)
class CheckpointSettings:
    folder: str = _opt("models/checkpoints")  # A1111's drop-in folder of single files and diffusers folders
    vae_folder: str = _opt("models/VAE")
    default: str = _opt("")  # the name used when a server has chosen none ("" = models.checkpoint)
    models: dict[str, CheckpointEntry] = field(default_factory=dict)


@dataclass(frozen=True)
class IntakeSettings:
    allowed_hosts: list[str] = _opt(["civitai.com", "huggingface.co"])
    allow_private_addresses: bool = _opt(False)
    max_file_mb: int = _opt(256, min=1, max=4096)
    download_timeout_s: float = _opt(120.0, min=1, max=3600)
    sandbox_memory_mb: int = _opt(2048, min=1024, max=65536)
    sandbox_cpu_s: int = _opt(60, min=1, max=3600)
    sandbox_uid: int = _opt(65534, min=1, max=2**31 - 1)  # the user the sandbox child becomes when the bot runs as root
    sandbox_gid: int = _opt(65534, min=1, max=2**31 - 1)


@dataclass(frozen=True)
class EngineSettings:
    device: str = _opt("auto", choices=("auto", "cuda", "cpu"))
    dtype: str = _opt("auto", choices=("auto", "float16", "bfloat16", "float32"))
    hypernet_dtype: str = _opt("auto", choices=("auto", "float16", "bfloat16", "float32"))
    max_batch: int = _opt(0, min=0, max=64)  # 0 = auto: 8 on CUDA, 4 elsewhere
    compile: str = _opt("auto", choices=("auto", "on", "off", "cudagraphs"))
    compile_cache_dir: str = _opt("data/compile-cache")
    hypernet_cache_mb: int = _opt(512, min=1, max=1_000_000)
    progress_interval_s: float = _opt(0.5, min=0.05, max=60)
    heartbeat_interval_s: float = _opt(2.0, min=0.1, max=60)
    heartbeat_timeout_s: float = _opt(30.0, min=1, max=3600)
    start_timeout_s: float = _opt(600.0, min=5, max=7200)
    job_timeout_s: float = _opt(600.0, min=5, max=86_400)
    transport: str = _opt("local", choices=("local", "redis"))
    redis_url: str = _opt("redis://localhost:6379/0")
    redis_prefix: str = _opt("hypercord")
    bot_id: str = _opt("main")
    lease_s: float = _opt(30.0, min=1, max=3600)
    checkpoint_device_mb: int = _opt(0, min=0, max=10_000_000)  # resident checkpoints on the device (0: keep one)
    checkpoint_host_mb: int = _opt(0, min=0, max=10_000_000)  # checkpoints parked in CPU memory (0: drop them)
    affinity_wait_s: float = _opt(20.0, min=0, max=3600)  # the longest a job waits for jobs on a resident checkpoint


@dataclass(frozen=True)
class LimitSettings:
    min_steps: int = _opt(1, min=1, max=500)
    max_steps: int = _opt(50, min=1, max=500)
    default_steps: int = _opt(20, min=1, max=500)
    min_size: int = _opt(64, min=64, max=4096)
    max_size: int = _opt(1024, min=64, max=4096)
    default_width: int = _opt(512, min=64, max=4096)
    default_height: int = _opt(512, min=64, max=4096)
    max_count: int = _opt(4, min=1, max=10)
    min_cfg_scale: float = _opt(1.0, min=0, max=100)
    max_cfg_scale: float = _opt(30.0, min=0, max=100)
    default_cfg_scale: float = _opt(7.0, min=0, max=100)
    default_sampler: str = _opt("Euler a")
    min_multiplier: float = _opt(-1.0, min=-100, max=100)
    max_multiplier: float = _opt(2.0, min=-100, max=100)
    multiplier_step: float = _opt(0.1, min=0.01, max=10)
    max_hypernets: int = _opt(4, min=1, max=16)
    max_loras: int = _opt(6, min=0, max=16)
    max_prompt_length: int = _opt(3000, min=10, max=6000)
    queue_max: int = _opt(200, min=1, max=100_000)
    queue_per_user: int = _opt(5, min=1, max=1000)
    rate_per_minute: float = _opt(10.0, min=0.1, max=10_000)
    rate_burst: int = _opt(10, min=1, max=1000)  # above queue_per_user: a full queue is refused as such, not as "too quick"


@dataclass(frozen=True)
class LoggingSettings:
    level: str = _opt("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    file: str = _opt("")
    status_interval_s: float = _opt(300.0, min=0, max=86_400)


@dataclass(frozen=True)
class Settings:
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    token: Secret | None = field(default=None, repr=False, compare=False)

    def redacted(self) -> dict[str, Any]:
        """The resolved settings as plain data, the token masked (for ``--check-config``)."""
        data: dict[str, Any] = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in _sections()}
        data["token"] = "********** (set)" if self.token else "(not set)"
        return data


def _sections() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Settings) if f.name != "token"]


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(
        type(value), type(value).__name__)
    return f"{kind} {json.dumps(value, default=str)}"


def _coerce(path: str, expected: Any, value: Any) -> Any:
    """Check ``value`` against the annotated type; ints are accepted where floats are expected."""
    origin = typing.get_origin(expected)
    if origin is dict:  # a table of named sub-tables, e.g. [checkpoints.models.NAME]
        entry_type = typing.get_args(expected)[1]
        if not isinstance(value, dict):
            raise ConfigError(f"`{path}` must be a table of named tables ([{path}.NAME]), got {_describe(value)}")
        out = {}
        for name, table in value.items():
            problem = name_problem(name)
            if problem is not None:
                raise ConfigError(f"`{path}.{name}`: `{name}` cannot be a name ({problem})")
            if not isinstance(table, dict):
                raise ConfigError(f"`{path}.{name}` must be a table ([{path}.{name}]), got {_describe(table)}")
            out[name] = _build_section(f"{path}.{name}", entry_type, table)
        return out
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            noun = _TYPE_NAMES[item_type].split(" ", 1)[1]
            raise ConfigError(f"`{path}` must be a list of {noun}s, got {_describe(value)}")
        return [_coerce(f"{path}[{i}]", item_type, item) for i, item in enumerate(value)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (expected in (int, float) and isinstance(value, bool)) or not isinstance(value, expected):
        raise ConfigError(f"`{path}` must be {_TYPE_NAMES[expected]}, got {_describe(value)}")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"`{path}` must be a finite number, got {value}")
    return value


def _check_constraints(path: str, f: dataclasses.Field[Any], value: Any) -> None:
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"`{path}` must be one of {', '.join(meta['choices'])}; got {json.dumps(value)}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"`{path}` must be at least {meta['min']}; got {value}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"`{path}` must be at most {meta['max']}; got {value}")


def _build_section(name: str, cls: type, raw: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown key `{name}.{key}` (expected one of: {', '.join(fields)})")
    values = {}
    for key, value in raw.items():
        path = f"{name}.{key}"
        coerced = _coerce(path, hints[key], value)
        _check_constraints(path, fields[key], coerced)
        values[key] = coerced
    return cls(**values)


def _parse_env_value(path: str, expected: Any, text: str) -> Any:
    """Environment values are strings; read them as TOML-ish scalars or comma-separated lists."""
    if typing.get_origin(expected) is list:
        text = text.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"`{path}` (from the environment) is not a valid list: {exc.msg}") from None
        item_type = typing.get_args(expected)[0]
        return [_parse_env_value(path, item_type, part) for part in text.split(",") if part.strip()]
    text = text.strip()
    if expected is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    if expected in (int, float):
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    return text


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``HYPERCORD_ENGINE__DEVICE=cpu`` → ``{"engine": {"device": "cpu"}}``."""
    sections = {f.name: f.type for f in _sections()}
    out: dict[str, dict[str, Any]] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        section, sep, key = name[len(ENV_PREFIX):].lower().partition("__")
        if not sep or section not in sections:
            raise ConfigError(f"environment variable {name} does not name a setting "
                              f"(use {ENV_PREFIX}<SECTION>__<KEY>, sections: {', '.join(sections)})")
        cls = typing.get_type_hints(Settings)[section]
        hints = typing.get_type_hints(cls)
        if key not in hints:
            raise ConfigError(f"environment variable {name}: unknown key `{section}.{key}` "
                              f"(expected one of: {', '.join(hints)})")
        if typing.get_origin(hints[key]) is dict:
            raise ConfigError(f"environment variable {name}: `{section}.{key}` is a table of tables; set it in the "
                              "config file")
        out.setdefault(section, {})[key] = _parse_env_value(f"{section}.{key}", hints[key], text)
    return out


def _read_token(environ: Mapping[str, str]) -> Secret | None:
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return Secret(token)
    token_file = environ.get(TOKEN_FILE_ENV, "").strip()
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{TOKEN_FILE_ENV}={token_file} cannot be read: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"{TOKEN_FILE_ENV}={token_file} is empty")
        return Secret(token)
    return None


def _cross_checks(s: Settings) -> None:
    lim = s.limits
    pairs = [("steps", lim.min_steps, lim.default_steps, lim.max_steps),
             ("cfg_scale", lim.min_cfg_scale, lim.default_cfg_scale, lim.max_cfg_scale),
             ("size (width)", lim.min_size, lim.default_width, lim.max_size),
             ("size (height)", lim.min_size, lim.default_height, lim.max_size)]
    for what, low, default, high in pairs:
        if not low <= default <= high:
            raise ConfigError(f"`limits`: default {what} {default} is outside [{low}, {high}]")
    for key in ("min_size", "max_size", "default_width", "default_height"):
        if getattr(lim, key) % 8:
            raise ConfigError(f"`limits.{key}` must be a multiple of 8; got {getattr(lim, key)}")
    if lim.min_multiplier > lim.max_multiplier:
        raise ConfigError(f"`limits.min_multiplier` ({lim.min_multiplier}) is above `limits.max_multiplier` "
                          f"({lim.max_multiplier})")
    if lim.queue_per_user > lim.queue_max:
        raise ConfigError(f"`limits.queue_per_user` ({lim.queue_per_user}) is above `limits.queue_max` ({lim.queue_max})")
    eng = s.engine
    if not eng.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"`engine.redis_url` must be a redis://, rediss:// or unix:// URL; "
                          f"got {json.dumps(eng.redis_url)}")
    for key in ("redis_prefix", "bot_id"):
        if not _REDIS_NAME.fullmatch(getattr(eng, key)):
            raise ConfigError(f"`engine.{key}` may use letters, digits and _.:- only (at most 100); "
                              f"got {json.dumps(getattr(eng, key))}")
    if eng.transport == "redis" and eng.lease_s <= eng.heartbeat_interval_s:
        raise ConfigError(f"`engine.lease_s` ({eng.lease_s}) must be longer than `engine.heartbeat_interval_s` "
                          f"({eng.heartbeat_interval_s}): workers renew their claims at each heartbeat")
    for key in ("rest_base_url", "gateway_url"):
        url = getattr(s.discord, key)
        if not url.startswith(("http://", "https://", "ws://", "wss://")):
            raise ConfigError(f"`discord.{key}` must be an http(s):// or ws(s):// URL; got {json.dumps(url)}")


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file (if any), apply environment overrides, validate, and attach the token.

    ``path=None`` uses ``$HYPERCORD_CONFIG`` or ``config.toml`` when it exists, else the defaults.
    """
    environ = os.environ if environ is None else environ
    source = "configuration"
    raw: dict[str, Any] = {}
    if path is None and environ.get(CONFIG_ENV):
        path = environ[CONFIG_ENV]
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found (copy config.example.toml to start)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    sections = {f.name: typing.get_type_hints(Settings)[f.name] for f in _sections()}
    try:
        for key, value in raw.items():
            if key not in sections:
                raise ConfigError(f"unknown section `[{key}]` (expected one of: {', '.join(sections)})")
            if not isinstance(value, dict):
                raise ConfigError(f"`{key}` must be a table ([{key}]), got {_describe(value)}")
        merged = {name: dict(raw.get(name, {})) for name in sections}
        for name, values in _env_overrides(environ).items():
            merged[name].update(values)
        built = {name: _build_section(name, cls, merged[name]) for name, cls in sections.items()}
        settings = Settings(**built, token=_read_token(environ))
        _cross_checks(settings)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return settings


def settings_docs() -> dict[str, list[str]]:
    """Every key, per section (used by a test that keeps config.example.toml complete)."""
    return {f.name: [g.name for g in dataclasses.fields(typing.get_type_hints(Settings)[f.name])] for f in _sections()}


__all__ = ["ConfigError", "Secret", "Settings", "load_settings", "settings_docs"]
