"""Where w2slab keeps caches and run outputs (override with ``W2SLAB_HOME``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("W2SLAB_HOME") or Path.home() / ".cache" / "w2slab")


def cache_dir() -> Path:
    path = home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
