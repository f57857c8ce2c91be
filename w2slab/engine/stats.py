"""PGR and its uncertainty over seeds."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(1) == np.asarray(labels)).mean())


def pgr(transfer: float, weak: float, ceiling: float) -> float:
    """(transfer - weak) / (ceiling - weak); NaN when the ceiling does not beat the weak model."""
    gap = ceiling - weak
    return (transfer - weak) / gap if gap > 0 else math.nan


@dataclass(frozen=True)
class PGRSummary:
    weak_acc: float  # mean over seeds
    ceiling_acc: float
    transfer_acc: float
    pgr: float  # mean over seeds of per-seed PGR (against mean weak and mean ceiling)
    pgr_se: float
    pgr_ci: tuple[float, float]  # 95% bootstrap over seeds
    per_seed_pgr: tuple[float, ...]
    n_seeds: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(transfer: list[float], weak: list[float], ceiling: list[float], n_boot: int = 10_000, seed: int = 0) -> PGRSummary:
    """PGR per seed against the mean weak and mean ceiling accuracy, with SE and a
    percentile bootstrap interval over seeds."""
    w, c = float(np.mean(weak)), float(np.mean(ceiling))
    per_seed = np.array([pgr(t, w, c) for t in transfer])
    n = len(per_seed)
    se = float(per_seed.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if n > 1 and np.isfinite(per_seed).all():
        rng = np.random.default_rng(seed)
        boots = per_seed[rng.integers(0, n, size=(n_boot, n))].mean(1)
        ci = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
    else:
        ci = (math.nan, math.nan)
    return PGRSummary(w, c, float(np.mean(transfer)), float(per_seed.mean()), se, ci, tuple(map(float, per_seed)), n)
