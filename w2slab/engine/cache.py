"""Content-addressed cache of experiment artifacts (weak labels, ceilings).

A key is the sha256 of the canonical JSON of every value that affects the result:
the testbed's data fingerprint, the model config's result-relevant fields, the seed
and the engine version. Dict order never matters; fields such as ``device`` never count.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from w2slab.paths import cache_dir

ENGINE_VERSION = 1


def cache_key(**parts: Any) -> str:
    blob = json.dumps({"engine": ENGINE_VERSION, **parts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _path(kind: str, key: str) -> Path:
    return cache_dir() / kind / f"{key}.npz"


def load(kind: str, key: str) -> dict[str, np.ndarray] | None:
    path = _path(kind, key)
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):  # a torn or foreign file: recompute
        return None


def store(kind: str, key: str, arrays: dict[str, np.ndarray]) -> None:
    path = _path(kind, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # atomic: readers see the old file or the new one
