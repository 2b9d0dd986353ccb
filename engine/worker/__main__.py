"""``python -m engine.worker --fd N``: the engine worker process, started by the bot's engine client.

``N`` is the worker's end of a socket pair (:mod:`engine.client.local_worker` starts the process with a scrubbed
environment); the first message on it is the :class:`engine.protocol.WorkerConfig`.  Exit codes: 0 after a
``Shutdown``, 65 for a protocol mismatch, 70 after a device error (the client restarts the worker clean).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection

from engine.protocol import PROTOCOL_VERSION, Envelope, WorkerConfig
from engine.worker.faults import Faults
from engine.worker.loop import EXIT_PROTOCOL, Worker

log = logging.getLogger("engine.worker")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description="Hypercord's engine worker process.")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket fd connected to the client")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    conn = Connection(args.fd)
    env = conn.recv()
    if not isinstance(env, Envelope) or env.version != PROTOCOL_VERSION or not isinstance(env.message, WorkerConfig):
        log.error("protocol mismatch: expected WorkerConfig v%d", PROTOCOL_VERSION)
        return EXIT_PROTOCOL
    worker = Worker(conn, env.message, Faults.from_env(os.environ))
    return worker.run()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (torch thread pools): nothing is left to clean up
