"""``python -m engine.worker``: the engine worker process, as a child of the bot or standalone over Redis.

* ``--fd N``: started by the bot's engine client (:mod:`engine.client.local_worker`) with a scrubbed environment;
  ``N`` is the worker's end of a socket pair and the first message on it is the :class:`engine.protocol.WorkerConfig`.
* ``--redis URL [--device cuda:1]``: a standalone worker of the fleet (one per GPU, on any machine).  It reads the
  ``FleetConfig`` a bot published (``--device``, ``--max-batch`` and ``--store`` override it), takes batches from
  the shared work stream and answers the bot that sent each one (:mod:`engine.worker.redis_endpoint`).  SIGTERM
  finishes the running batch, then exits.

Exit codes: 0 after a ``Shutdown``, 65 for a protocol mismatch, 70 after a device error, 75 after a batch ran past
the render time limit (standalone); the bot, or the container's restart policy, starts a clean one.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection

import redis

from engine.client.redis_layout import NAME_RULE, RedisLayout
from engine.codec import CodecError, decode
from engine.protocol import PROTOCOL_VERSION, Envelope, FleetConfig, WorkerConfig
from engine.worker.faults import Faults

log = logging.getLogger("engine.worker")

EXIT_PROTOCOL = 65  # (engine.worker.loop.EXIT_PROTOCOL; not imported here so a standalone worker starts before torch)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description="Hypercord's engine worker process.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="inherited socket fd connected to the bot (a child worker)")
    where.add_argument("--redis", metavar="URL", help="Redis URL of the fleet, e.g. redis://redis:6379/0 (standalone)")
    parser.add_argument("--device", help="standalone: device to render on (cpu, cuda, cuda:N); default: the bot's")
    parser.add_argument("--max-batch", type=int, help="standalone: most images per UNet batch on this device")
    parser.add_argument("--store", help="standalone: this machine's model store folder (shared or a local cache)")
    parser.add_argument("--name", help="standalone: this worker's name in /status (default: host-pid)")
    parser.add_argument("--prefix", default="hypercord", help="standalone: Redis key prefix (engine.redis_prefix)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    if args.fd is not None:
        return _child(args.fd)
    return _standalone(args)


def _child(fd: int) -> int:
    conn = Connection(fd)
    env = conn.recv()
    if not isinstance(env, Envelope) or env.version != PROTOCOL_VERSION or not isinstance(env.message, WorkerConfig):
        log.error("protocol mismatch: expected WorkerConfig v%d", PROTOCOL_VERSION)
        return EXIT_PROTOCOL
    from engine.worker.loop import Worker

    return Worker(conn, env.message, Faults.from_env(os.environ)).run()


def _standalone(args: argparse.Namespace) -> int:
    from engine.worker.model_fetch import ModelFetcher
    from engine.worker.redis_endpoint import RedisEndpoint

    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    if not NAME_RULE.fullmatch(name):
        log.error("--name may use letters, digits and _.:- only; got %r", name)
        return 2
    layout = RedisLayout(args.prefix)
    r = redis.Redis.from_url(args.redis, socket_timeout=15, socket_connect_timeout=5, health_check_interval=10)
    fleet = _fleet_config(r, layout)
    cfg = fleet.worker
    cfg = replace(cfg, device=args.device or cfg.device, model_store_dir=args.store or cfg.model_store_dir)
    cfg = replace(cfg, max_batch=_max_batch(args.max_batch or cfg.max_batch, cfg.device))
    fleet = replace(fleet, worker=cfg)
    endpoint = RedisEndpoint(r, layout, name, fleet)
    endpoint.start()
    signal.signal(signal.SIGTERM, lambda *_: endpoint.stop())
    log.info("worker %s joined the fleet at %s (device %s, max_batch %d)", name, layout.base, cfg.device, cfg.max_batch)
    from engine.worker.loop import Worker  # torch: imported once the endpoint already takes part in the fleet

    fetcher = ModelFetcher(cfg.model_store_dir, endpoint.request_model, endpoint.wait_blob)
    code = Worker(endpoint, cfg, Faults.from_env(os.environ), models=fetcher).run()
    endpoint.close()
    return code


def _max_batch(configured: int, device: str) -> int:
    """The batch size this worker advertises: configured, or auto (0) resolved for its device (imports torch)."""
    if configured > 0:
        return configured
    from engine.worker.checkpoints import resolve_device
    from engine.worker.compile import auto_max_batch

    try:
        return auto_max_batch(0, resolve_device(device))
    except ValueError:  # CUDA asked for but absent: the worker's start-up reports that; advertise the CPU's size
        return auto_max_batch(0, "cpu")


def _fleet_config(r: redis.Redis, layout: RedisLayout) -> FleetConfig:
    """The settings a bot published; waits (logging every 15 s) until one has."""
    for waited in itertools.count():
        try:
            raw = r.get(layout.config)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raw = None
            if waited % 15 == 0:
                log.warning("Redis unreachable (%s); retrying", exc)
        if isinstance(raw, bytes):
            try:
                fleet = decode(raw)
            except CodecError as exc:
                log.error("the fleet settings at %s cannot be read by this build: %s", layout.config, exc)
                fleet = None
            if isinstance(fleet, FleetConfig):
                return fleet
        if waited % 15 == 0:
            log.info("waiting for a bot to publish the fleet settings at %s", layout.config)
        time.sleep(1.0)
    raise AssertionError("unreachable")


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (torch thread pools): nothing is left to clean up
