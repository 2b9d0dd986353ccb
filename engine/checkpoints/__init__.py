"""Checkpoint files without torch: what a file is, whether it can be loaded, and A1111's hashes of it.

Why a torch-free package: the bot lists, checks and hashes the owner's checkpoints (``models/checkpoints/``, config
entries) and matches a hypernetwork's recorded training checkpoint against them, all without loading a model; the
worker (:mod:`engine.worker.checkpoints`) calls the same :func:`inspect_checkpoint` before it loads anything, so both
refuse a file with the same words.  See ``docs/checkpoints.md``.
"""

from engine.checkpoints.families import Kind
from engine.checkpoints.hashes import (
    FileHashes,
    HashCache,
    autov1_hash,
    checkpoint_title,
    file_hashes,
    recorded_hash_matches,
    split_checkpoint_title,
)
from engine.checkpoints.info import PREDICTIONS, CheckpointInfo, VaeInfo, inspect_checkpoint, inspect_vae
from engine.checkpoints.refusals import CheckpointRefused

#: The built-in random-weight checkpoints (engine/worker/tiny.py): same architecture, each its own weights.
BUILT_IN_CHECKPOINTS = ("tiny", "tiny-b")

__all__ = ["BUILT_IN_CHECKPOINTS", "PREDICTIONS", "CheckpointInfo", "CheckpointRefused", "FileHashes", "HashCache",
           "Kind", "VaeInfo", "autov1_hash", "checkpoint_title", "file_hashes", "inspect_checkpoint", "inspect_vae",
           "recorded_hash_matches", "split_checkpoint_title"]
