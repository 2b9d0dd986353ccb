"""The engine section's transport keys: "local" (default) or "redis", and the Redis keys checked with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings
from bot.runner import build_engine
from engine.client import EngineClient, RedisEngineClient
from engine.protocol import PROTOCOL_VERSION


def load(tmp_path: Path, engine: str) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(f"[engine]\n{engine}", encoding="utf-8")
    return load_settings(path, environ={})


def test_the_default_is_the_local_child_worker(tmp_path: Path) -> None:
    settings = load(tmp_path, "")
    assert settings.engine.transport == "local"
    assert type(build_engine(settings)) is EngineClient


def test_redis_transport_builds_the_fleet_client_from_the_keys(tmp_path: Path) -> None:
    settings = load(tmp_path, 'transport = "redis"\nredis_url = "redis://cache:6380/2"\nbot_id = "shard-0"\n'
                              'redis_prefix = "prod"\nlease_s = 12.5\n')
    engine = build_engine(settings)
    assert isinstance(engine, RedisEngineClient)
    assert (engine.redis_url, engine.bot_id, engine._fleet.lease_s) == ("redis://cache:6380/2", "shard-0", 12.5)
    assert engine._layout.work == f"prod:v{PROTOCOL_VERSION}:work"


@pytest.mark.parametrize(("engine", "message"), [
    ('transport = "broker"', "`engine.transport` must be one of local, redis; got \"broker\""),
    ('redis_url = "http://cache:6379"', '`engine.redis_url` must be a redis://, rediss:// or unix:// URL; '
                                        'got "http://cache:6379"'),
    ('bot_id = "shard 0"', '`engine.bot_id` may use letters, digits and _.:- only (at most 100); got "shard 0"'),
    ('transport = "redis"\nlease_s = 2\nheartbeat_interval_s = 2',
     "`engine.lease_s` (2.0) must be longer than `engine.heartbeat_interval_s` (2.0): workers renew their claims "
     "at each heartbeat"),
])
def test_bad_redis_settings_are_refused_with_the_key(tmp_path: Path, engine: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, engine + "\n")
    assert str(refused.value) == f"{tmp_path / 'config.toml'}: {message}"
