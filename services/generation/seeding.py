"""Counter-based random numbers: the draw for (seed, source, twin, stream, slot) does not
depend on which other sources are processed, in which order, or in which batch."""

from __future__ import annotations

import hashlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def stable_key(text: str) -> int:
    """A 64-bit key of a string that is the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(str(text).encode(), digest_size=8).digest(), "little")


def uniforms(seed: int, source_keys: np.ndarray, k: int, stream: int, slots: int) -> np.ndarray:
    """Uniform(0, 1) draws of shape (sources, k, slots), a pure function of
    (seed, source key, twin index, stream, slot)."""
    src = np.asarray(source_keys, dtype=np.uint64)[:, None, None]
    twin = np.arange(1, k + 1, dtype=np.uint64)[None, :, None]
    slot = np.arange(slots, dtype=np.uint64)[None, None, :]
    with np.errstate(over="ignore"):
        x = _splitmix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix(src))
        x = _splitmix(x ^ (twin * _M1))
        x = _splitmix(x ^ (np.uint64(stream) << np.uint64(40)) ^ slot)
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
