"""GPUs for researchers: which exist here, and which researcher gets which.

GPUs are the ``/dev/nvidiaN`` device nodes of the device folder (``$W2SLAB_DEV_DIR``, default
``/dev``; tests point it at a folder of stand-in files). Researcher ``i`` gets the ``i``-th block
of ``per_researcher`` GPUs of the pool (``--gpus LIST``, else every GPU found): blocks are
disjoint. Inside a researcher's sandbox only its nodes exist (plus the control nodes) and
``CUDA_VISIBLE_DEVICES`` is ``0..K-1`` (see :mod:`w2slab.researchers.sandbox`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEV_DIR_ENV = "W2SLAB_DEV_DIR"
GPU_NODE = re.compile(r"nvidia(\d+)")


def dev_dir() -> Path:
    return Path(os.environ.get(DEV_DIR_ENV) or "/dev")


def detect_gpus() -> list[int]:
    """Indices N of the ``nvidiaN`` nodes in the device folder, sorted."""
    try:
        names = os.listdir(dev_dir())
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := GPU_NODE.fullmatch(n)))


def parse_gpu_list(text: str) -> list[int]:
    """``'0,1,2,3'`` or ``'0-3'`` -> [0, 1, 2, 3] (a ValueError with a one-line message otherwise)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                out += list(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ValueError(f"--gpus: bad GPU list '{text}': use indices like '0,1,2,3' or '0-3'") from None
    if not out or any(i < 0 for i in out):
        raise ValueError(f"--gpus: bad GPU list '{text}': use indices like '0,1,2,3' or '0-3'")
    if len(set(out)) != len(out):
        raise ValueError(f"--gpus: '{text}' names a GPU twice")
    return out


def assign_gpus(researchers: int, per_researcher: int, listed: list[int] | None = None,
                available: list[int] | None = None) -> list[list[int]]:
    """The GPUs of each researcher: disjoint blocks of ``per_researcher`` from the pool
    (``listed``, else ``available``). ``per_researcher`` 0 with a list means 1. Refuses, with
    a one-line ValueError, GPUs that do not exist or a pool too small for everyone."""
    if per_researcher < 0:
        raise ValueError("--gpus-per-researcher must be 0 or more")
    if not per_researcher and not listed:
        return [[] for _ in range(researchers)]
    per = per_researcher or 1
    found = detect_gpus() if available is None else list(available)
    shown = ",".join(map(str, found)) or "none"
    if listed:
        missing = [i for i in listed if i not in found]
        if missing:
            raise ValueError(f"--gpus: GPU {','.join(map(str, missing))} does not exist here "
                             f"(GPUs found in {dev_dir()}: {shown})")
    pool = list(listed) if listed else found
    need = researchers * per
    if need > len(pool):
        raise ValueError(f"{researchers} researcher(s) x {per} GPU(s) = {need} GPUs asked for, but only {len(pool)} "
                         f"{'listed' if listed else 'exist here'} (GPUs found in {dev_dir()}: {shown})")
    return [pool[i * per:(i + 1) * per] for i in range(researchers)]
