"""A1111 hypernetworks: the file format, the exact math, our canonical stored form, the per-row attention processor.

``engine.hypernet.load`` / ``engine.hypernet.apply`` are the parity-check interface
(``shared/tools/check_parity.py engine.hypernet``); keep them importable from here.

* :mod:`engine.hypernet.layout` — A1111's metadata defaults, activation table and the exact ``nn.Sequential``;
* :mod:`engine.hypernet.model` — :class:`Hypernetwork`, validated building from a state dict, ``load``, ``apply``;
* :mod:`engine.hypernet.canonical` — the safetensors form intake stores and the worker reads;
* :mod:`engine.hypernet.attention` — per-row hypernet chains inside a diffusers UNet's attention layers.

Worker and intake-sandbox side only: importing this imports torch.
"""

from engine.hypernet.canonical import load_canonical, save_canonical
from engine.hypernet.layout import HypernetFormatError, HypernetModule
from engine.hypernet.model import MAX_SIZES, MAX_WEIGHT_BYTES, Hypernetwork, apply, from_state_dict, load

__all__ = [
    "MAX_SIZES", "MAX_WEIGHT_BYTES", "HypernetFormatError", "HypernetModule", "Hypernetwork", "apply",
    "from_state_dict", "load", "load_canonical", "save_canonical",
]
