"""A1111's "NV" noise source: its imitation of CUDA's ``torch.randn`` (Philox-4x32-10 plus Box-Muller), in numpy.

Why it exists: A1111 offers it so that images made on NVIDIA GPUs can be reproduced on any machine.  An infotext
with ``RNG: NV`` can only be reproduced by drawing exactly these numbers.  The algorithm (docs/a1111-sampling.md
§2.1): a generator holds a 64-bit seed and an offset that grows by one per draw; value ``i`` of a draw comes from
the counter ``(offset, 0, i, 0)`` and the key ``(low 32 bits, high 32 bits of the seed)`` after ten Philox rounds,
turned into a normal value by Box-Muller in float64 with float32 constants, then rounded to float32.

Vectorised: one call computes any number of consecutive draws at once (``randn_many``), which is how the noise
plan pre-draws a row's step noise; the result equals drawing them one by one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PhiloxGenerator"]

_MASK32 = 0xFFFFFFFF
_ROUND_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_INCREMENTS = (0x9E3779B9, 0xBB67AE85)
_ROUNDS = 10
_CHUNK_VALUES = 1 << 16
_SHIFT, _LOW = np.uint64(32), np.uint64(_MASK32)
# Box-Muller constants exactly as A1111 holds them: float32 values, used in float64 arithmetic.
_SCALE_U = float(np.float32(2.3283064e-10))
_SCALE_V = float(np.float32(2.3283064e-10 * 6.2831855))


def _key_schedule(seed: int) -> list[tuple[np.uint64, np.uint64]]:
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    keys = []
    for _ in range(_ROUNDS):
        keys.append((np.uint64(k0), np.uint64(k1)))
        k0, k1 = (k0 + _KEY_INCREMENTS[0]) & _MASK32, (k1 + _KEY_INCREMENTS[1]) & _MASK32
    return keys


def _philox_outputs(offsets: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first two output words of Philox-4x32-10 for counters (offset, 0, i, 0), i < count, per offset.

    The 32-bit words are held in uint64 arrays so that products need no casts (both factors are < 2**32);
    operations are in place where possible (torchsde asks for thousands of small draws).
    """
    c0 = np.repeat(offsets.astype(np.uint64), count)
    c2 = np.tile(np.arange(count, dtype=np.uint64), len(offsets))
    c1 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    for k0, k1 in _key_schedule(seed):
        p0 = c0 * _ROUND_MULTIPLIERS[0]
        p1 = c2 * _ROUND_MULTIPLIERS[1]
        c0 = p1 >> _SHIFT
        c0 ^= c1
        c0 ^= k0
        c2 = p0 >> _SHIFT
        c2 ^= c3
        c2 ^= k1
        c1, c3 = p1, p0
        c1 &= _LOW
        c3 &= _LOW
    return c0, c1


def _box_muller(words_u: np.ndarray, words_v: np.ndarray) -> np.ndarray:
    u = words_u.astype(np.float64) * _SCALE_U + _SCALE_U / 2
    v = words_v.astype(np.float64) * _SCALE_V + _SCALE_V / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """One image's NV generator: ``randn(shape)`` is one draw (offset += 1), as A1111's ``rng_philox.Generator``."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """One draw of ``shape`` float32 normal values."""
        return self.randn_many(1, shape)[0]

    def randn_many(self, draws: int, shape: tuple[int, ...]) -> np.ndarray:
        """``draws`` consecutive draws as one (draws, *shape) array: the same numbers as ``draws`` calls of randn."""
        count = int(np.prod(shape, dtype=np.int64))
        out = np.empty((draws, count), dtype=np.float32)
        per_chunk = max(1, _CHUNK_VALUES // max(count, 1))   # bounded temporaries: faster than one huge pass
        for first in range(0, draws, per_chunk):
            n = min(per_chunk, draws - first)
            offsets = np.arange(self.offset + first, self.offset + first + n, dtype=np.uint64)
            words_u, words_v = _philox_outputs(offsets, count, self.seed)
            out[first:first + n] = _box_muller(words_u, words_v).reshape(n, count)
        self.offset += draws
        return out.reshape((draws, *shape))
