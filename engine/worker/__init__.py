"""The engine worker process: owns the device, the loaded checkpoints and the hypernet cache; renders batches.

Started as ``python -m engine.worker`` (:mod:`engine.worker.__main__`).  Worker side only: its modules import torch
(except :mod:`engine.worker.hypernet_cache`, which takes its loader as a parameter), and nothing in the bot process
imports this package.

* :mod:`engine.worker.loop` — the batch loop: messages in, results out, OOM splits, device errors;
* :mod:`engine.worker.renderer` — one UNet batch for several users' requests (:class:`Renderer`);
* :mod:`engine.worker.checkpoints` — loading a checkpoint into the parts the renderer drives;
* :mod:`engine.worker.checkpoint_pool` — the checkpoints batches name, loaded on demand and kept resident
  (:mod:`engine.worker.resident`: the LRU within the device and host budgets);
* :mod:`engine.worker.tiny` — the built-in ``tiny`` checkpoint for tests and smoke runs;
* :mod:`engine.worker.hypernet_cache` — loaded hypernets on the device, LRU bounded in bytes;
* :mod:`engine.worker.faults` — test-only fault injection.
"""
