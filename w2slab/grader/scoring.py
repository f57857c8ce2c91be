"""Scoring: the dev/final split of each test set, baselines held in memory, prediction checks,
dev-set PGR for evaluations and final-set PGR with a bootstrap interval for submissions."""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from w2slab.engine.stats import PGRSummary, pgr, summarize
from w2slab.testbeds import get_testbed, load_testbed, testbed_fingerprint

SEED_RANGE = 100_000


class PredictionError(ValueError):
    """Predictions that cannot be scored; the message says what is wrong."""


def split_dev_final(n: int, fingerprint: str) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the dev half and the final half, fixed by the testbed's data fingerprint."""
    perm = np.random.default_rng(int(fingerprint[:16], 16)).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def server_seeds(secret: bytes, fingerprint: str, k: int) -> list[int]:
    """The seeds a submission must cover: drawn from a server secret, fixed per testbed."""
    digest = hmac.new(secret, f"seeds:{fingerprint}".encode(), hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    return sorted(int(s) for s in rng.choice(np.arange(1, SEED_RANGE), size=k, replace=False))


def public_name(ref: str) -> str:
    """The name researchers use: a registered name as is, a folder by its base name."""
    from w2slab.testbeds import REGISTRY

    name = get_testbed(ref).name
    return name if name in REGISTRY else Path(name).name


@dataclass
class Scorer:
    """One served testbed: labels and baseline accuracies held in memory."""

    name: str
    kind: str
    labels: np.ndarray  # 0/1 per test row
    dev: np.ndarray
    final: np.ndarray
    baseline_seeds: list[int]
    weak_dev: float  # mean over baseline seeds
    ceiling_dev: float
    weak_final: list[float]  # per baseline seed
    ceiling_final: list[float]
    seeds: list[int]  # required for submissions
    fingerprint: str
    experiment: Any = None  # the engine Experiment (testbed, weak, strong): audits export kits from it

    @property
    def n_test(self) -> int:
        return len(self.labels)

    def acc(self, p1: np.ndarray, rows: np.ndarray) -> float:
        """Accuracy on ``rows``; class 1 when P(class 1) > 0.5 (ties go to class 0, as argmax does)."""
        return float(((p1[rows] > 0.5).astype(np.int64) == self.labels[rows]).mean())

    def evaluate(self, p1: np.ndarray) -> dict[str, float | None]:
        """Dev-set PGR and transfer accuracy, rounded to 2 decimals, WITHOUT the hardening of
        ``POST /api/evaluate`` (keyed noise and answer reuse: :mod:`w2slab.integrity.feedback`)."""
        t = self.acc(p1, self.dev)
        g = pgr(t, self.weak_dev, self.ceiling_dev)
        return {"pgr": None if math.isnan(g) else round(g, 2), "transfer_acc": round(t, 2)}

    def submit(self, per_seed: dict[int, np.ndarray]) -> PGRSummary:
        """Final-set PGR over the required seeds with a bootstrap interval."""
        transfer = [self.acc(per_seed[s], self.final) for s in self.seeds]
        return summarize(transfer, self.weak_final, self.ceiling_final)


def load_scorer(
    ref: str, weak: str | None, strong: str | None, baseline_seeds: list[int], secret: bytes, n_seeds: int,
    fixed_seeds: list[int] | None = None, workers: int | None = None,
) -> Scorer:
    """Compute (or load from the engine cache) the baselines of one testbed (``ref``: a name, a
    folder, or ``NAME=FOLDER`` to choose the public name) and build its scorer."""
    from w2slab.engine import cache
    from w2slab.engine.pipeline import Experiment, ceiling, weak_artifacts  # imports torch: only when serving

    alias, eq, path = ref.partition("=")
    ref = path if eq else ref
    exp = Experiment.create(ref, weak, strong)
    if any(cache.load(role, exp.key(role, s)) is None for role in ("weak", "ceiling") for s in baseline_seeds):
        from w2slab.engine.runner import compute_baselines

        compute_baselines(exp, baseline_seeds, workers=workers, quiet=True)
    data = load_testbed(exp.testbed)
    labels = np.asarray(data.test.labels, dtype=np.int64)
    fp = testbed_fingerprint(exp.testbed)
    dev, final = split_dev_final(len(labels), fp)

    def accs(probs: np.ndarray, rows: np.ndarray) -> float:
        return float((np.asarray(probs).argmax(1)[rows] == labels[rows]).mean())

    weak_probs = [weak_artifacts(exp, s)["test_probs"] for s in baseline_seeds]
    ceil_probs = [ceiling(exp, s)["test_probs"] for s in baseline_seeds]
    return Scorer(
        name=alias if eq else public_name(ref),
        kind=data.kind,
        labels=labels,
        dev=dev,
        final=final,
        baseline_seeds=list(baseline_seeds),
        weak_dev=float(np.mean([accs(p, dev) for p in weak_probs])),
        ceiling_dev=float(np.mean([accs(p, dev) for p in ceil_probs])),
        weak_final=[accs(p, final) for p in weak_probs],
        ceiling_final=[accs(p, final) for p in ceil_probs],
        seeds=list(fixed_seeds) if fixed_seeds else server_seeds(secret, fp, n_seeds),
        fingerprint=fp,
        experiment=exp,
    )


_LABEL_VALUES: dict[Any, float] = {"A": 0.0, "B": 1.0}


def parse_predictions(values: Any, n: int, where: str = "predictions") -> np.ndarray:
    """P(class 1) per test row from numbers in [0, 1], labels "A"/"B" or booleans."""
    if not isinstance(values, list):
        raise PredictionError(f"{where} must be a list with one entry per test row, got {type(values).__name__}")
    if len(values) != n:
        raise PredictionError(f"{where}: expected {n} test rows (one per row of test.jsonl, in order), got {len(values)}")
    if all(type(v) is float or type(v) is int for v in values):
        arr = np.asarray(values, dtype=np.float64)
    else:
        arr = np.empty(n, dtype=np.float64)
        for i, v in enumerate(values):
            if type(v) is bool:
                arr[i] = float(v)
            elif isinstance(v, str):
                if v not in _LABEL_VALUES:
                    raise PredictionError(f"{where}[{i}]: label must be \"A\" or \"B\" (or true/false, or P(class 1) in [0, 1]), got {v!r}")
                arr[i] = _LABEL_VALUES[v]
            elif type(v) in (int, float):
                arr[i] = v
            else:
                raise PredictionError(f"{where}[{i}]: expected a number in [0, 1], \"A\"/\"B\" or true/false, got {type(v).__name__}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise PredictionError(f"{where}[{i}]: {values[i]!r} is not a probability (NaN and infinity are refused)")
    out = (arr < 0) | (arr > 1)
    if out.any():
        i = int(np.argmax(out))
        raise PredictionError(f"{where}[{i}]: {values[i]!r} is outside [0, 1]; give P(class 1)")
    return arr
