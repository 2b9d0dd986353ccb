"""The engine as the bot process sees it: submit jobs, follow their events, supervise the worker.

Torch-free (the bot imports it).  :class:`EngineClient` owns the fair queue and one worker reached through a
transport; :class:`JobHandle` is one job's event stream.

* :mod:`engine.client.client` — :class:`EngineClient`, :class:`EngineStatus`;
* :mod:`engine.client.handle` — :class:`JobHandle`, :class:`JobFailed`;
* :mod:`engine.client.fair_queue` — round-robin over users, caps, batches (:class:`FairQueue`);
* :mod:`engine.client.transport` — the interface to workers; :mod:`engine.client.local_worker` — the child process;
* :mod:`engine.client.redis_client` — :class:`RedisEngineClient`, many standalone workers over Redis Streams
  (layout: :mod:`engine.client.redis_layout`); :mod:`engine.client.jobbook` — what both clients share.
"""

from engine.client.client import EngineClient, EngineStatus
from engine.client.fair_queue import FairQueue, QueuedJob
from engine.client.handle import JobFailed, JobHandle
from engine.client.local_worker import LocalWorkers, worker_env
from engine.client.redis_client import BROKER_DOWN, RedisEngineClient
from engine.client.status import WorkerStatus
from engine.client.transport import Exited, WorkerLink, WorkerTransport

__all__ = [
    "BROKER_DOWN", "EngineClient", "EngineStatus", "Exited", "FairQueue", "JobFailed", "JobHandle", "LocalWorkers",
    "QueuedJob", "RedisEngineClient", "WorkerLink", "WorkerStatus", "WorkerTransport", "worker_env",
]
