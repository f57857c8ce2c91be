"""Compact fingerprints of hard prediction vectors: packed bits and fast Hamming distances."""

from __future__ import annotations

import numpy as np

_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hard(p1: np.ndarray) -> np.ndarray:
    """Class-1 decisions (P(class 1) > 0.5, as the scorer decides)."""
    return np.asarray(p1) > 0.5


def pack(bits: np.ndarray) -> bytes:
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes()


def unpack(data: bytes, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n).astype(bool)


def hamming(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Hamming distances between the packed vector ``a`` (uint8, shape (B,)) and each row of
    ``rows`` (uint8, shape (M, B))."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    return _POP[np.bitwise_xor(rows, a[None, :])].sum(1, dtype=np.int64)
