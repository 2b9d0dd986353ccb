"""Where things live in Redis for the scale-out deployment: key names, stream groups, entry fields (pure).

Why one module for both ends: the bot (:mod:`engine.client.redis_client`) and the standalone worker
(:mod:`engine.worker.redis_endpoint`) must agree on every name.  Keys carry the protocol version
(``hypercord:v3:work``), so a bot and a worker of incompatible releases never even see each other's entries; the
codec (:mod:`engine.codec`) checks the version of every message on top.

The streams and keys (``P`` = ``<prefix>:v<PROTOCOL_VERSION>``):

* ``P:work`` — stream of batches, consumer group ``workers``; a worker reads one entry when it is idle, renews its
  claim while it renders, and acknowledges it in the same transaction as the batch's ``BatchDone``.  Entry
  fields: ``bot`` (who gets the answers), ``attempt`` (1, or 2 for a job split off after a lost worker), ``body``.
* ``P:idle`` — list of idle workers' names: a bot with work pops one (atomic, so one bot per idle worker) and
  forms a batch for that worker's ``max_batch``.
* ``P:bot:<bot>:events`` — stream of a bot's answers (progress, results, failures, claims, model requests),
  consumer group ``bot``; entries stay pending until that bot handled them, across its restarts.
* ``P:bot:<bot>:inflight`` — hash job id -> request: jobs a bot handed to the fleet and has not seen end.
* ``P:workers`` — hash worker name -> ``WorkerInfo`` (the registry; a stale heartbeat means gone).
* ``P:config`` — the ``FleetConfig`` bots publish for workers.
* ``P:dead`` — dead-letter stream: batches that kept killing workers, with the reason.
* ``P:answered:<entry>`` — set of job ids of a work entry already answered (a re-run skips them).
* ``P:cancel:<bot>:<job>`` — present while a job is to be cancelled; ``P:blob:<sha256>`` — a model file for workers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from engine.protocol import PROTOCOL_VERSION

__all__ = ["BOT_GROUP", "NAME_RULE", "WORKER_GROUP", "RedisLayout", "field_text"]

WORKER_GROUP = "workers"
BOT_GROUP = "bot"
#: Bot ids, worker names and key prefixes: they become parts of key names.
NAME_RULE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


@dataclass(frozen=True, slots=True)
class RedisLayout:
    """Key names under one prefix (several deployments can share a Redis with different prefixes)."""

    prefix: str = "hypercord"
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if not NAME_RULE.fullmatch(self.prefix):
            raise ValueError(f"a Redis key prefix may use letters, digits and _.:- only; got {self.prefix!r}")

    @property
    def base(self) -> str:
        return f"{self.prefix}:v{self.version}"

    @property
    def work(self) -> str:
        return f"{self.base}:work"

    @property
    def idle(self) -> str:
        return f"{self.base}:idle"

    @property
    def workers(self) -> str:
        return f"{self.base}:workers"

    @property
    def config(self) -> str:
        return f"{self.base}:config"

    @property
    def dead(self) -> str:
        return f"{self.base}:dead"

    def events(self, bot: str) -> str:
        return f"{self.base}:bot:{bot}:events"

    def inflight(self, bot: str) -> str:
        return f"{self.base}:bot:{bot}:inflight"

    def answered(self, entry_id: str) -> str:
        return f"{self.base}:answered:{entry_id}"

    def cancel(self, bot: str, job_id: int) -> str:
        return f"{self.base}:cancel:{bot}:{job_id}"

    def blob(self, sha256: str) -> str:
        return f"{self.base}:blob:{sha256}"


def field_text(fields: Mapping[bytes, bytes], name: str) -> str:
    """A stream entry's field as text ('' when absent); entries come back with bytes keys and values."""
    return fields.get(name.encode(), b"").decode(errors="replace")
