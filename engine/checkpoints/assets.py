"""Where the shipped checkpoint configs live, and reading them.

Why shipped: diffusers' single-file loader needs a diffusers config per component, and without one it downloads
the matching pipeline's configs from the hub.  ``engine/assets/checkpoints/`` holds our own (written by
``tests/engine/checkpoints/make_configs.py``, see the README there): ``sd1`` (SD 1.x), ``sd2-512-base`` (SD 2.x,
epsilon) and ``sd2-768-v`` (SD 2.x, v-prediction), each with ``unet/``, ``vae/``, ``text_encoder/``, ``scheduler/``
and, for SD 2.x, ``tokenizer/`` (its special tokens; the BPE files are SD 1.x's, in ``engine/assets/clip_tokenizer``).
Torch-free.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_CONFIGS", "CLIP_TOKENIZER", "COMPONENT_FILES", "config_folder", "template"]

_ASSETS = Path(__file__).resolve().parents[1] / "assets"
CHECKPOINT_CONFIGS = _ASSETS / "checkpoints"
CLIP_TOKENIZER = _ASSETS / "clip_tokenizer"
#: component -> its config file inside a family folder
COMPONENT_FILES = {"unet": "unet/config.json", "vae": "vae/config.json", "text_encoder": "text_encoder/config.json",
                   "scheduler": "scheduler/scheduler_config.json"}


def config_folder(family: str, prediction: str | None) -> Path:
    """The shipped folder for ``family`` ("sd1", "sd2"); for SD 2.x the v-prediction one when ``prediction`` says so."""
    if family == "sd1":
        return CHECKPOINT_CONFIGS / "sd1"
    if family == "sd2":
        return CHECKPOINT_CONFIGS / ("sd2-768-v" if prediction == "v_prediction" else "sd2-512-base")
    raise ValueError(f"no shipped configs for family {family!r}")


@functools.cache
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def template(folder: Path, component: str) -> dict[str, Any]:
    """A fresh copy of one component's shipped config (``unet``, ``vae``, ``text_encoder``, ``scheduler``)."""
    value = json.loads(_read(folder / COMPONENT_FILES[component]))
    if not isinstance(value, dict):
        raise ValueError(f"{folder.name}/{COMPONENT_FILES[component]} is not a JSON object")
    return value
