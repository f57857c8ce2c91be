"""Scoring: the three-way split of each test set, baselines held in memory, prediction checks.

Each test set is split once, by the testbed's data fingerprint, into thirds:

- **dev**: feedback during research (``POST /api/evaluate``: noisy, reused, behind a Ladder);
- **board**: the leaderboard during research (``POST /api/submit``: behind a Ladder on
  submissions, coarsely rounded), so the board is no oracle for its labels either;
- **sealed**: the holdout, scored once per researcher on its final pick when the run ends
  (``POST /api/admin/seal``). No answer a researcher receives depends on it before then, so
  the sealed score of a pick made on the board is free of the winner's curse.

Every PGR carries a paired bootstrap interval over test rows and seeds
(:func:`w2slab.engine.stats.pgr_interval`)."""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from w2slab.engine.stats import PGRDiff, PGRInterval, correct_matrix, min_detectable_effect, pgr, pgr_diff_interval, pgr_interval
from w2slab.testbeds import get_testbed, load_testbed, testbed_fingerprint

SEED_RANGE = 100_000


class PredictionError(ValueError):
    """Predictions that cannot be scored; the message says what is wrong."""


def split_rows(n: int, fingerprint: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the dev, board and sealed thirds, fixed by the testbed's data fingerprint."""
    perm = np.random.default_rng(int(fingerprint[:16], 16)).permutation(n)
    a, b = n // 3, 2 * (n // 3)
    return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])


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
    """One served testbed: labels and the baselines' per-row correctness held in memory."""

    name: str
    kind: str
    labels: np.ndarray  # 0/1 per test row
    dev: np.ndarray
    board: np.ndarray
    sealed: np.ndarray
    baseline_seeds: list[int]
    weak_correct: np.ndarray  # (baseline seeds, test rows) bool
    ceiling_correct: np.ndarray
    seeds: list[int]  # required for submissions
    fingerprint: str
    experiment: Any = None  # the engine Experiment (testbed, weak, strong): audits export kits from it

    @property
    def n_test(self) -> int:
        return len(self.labels)

    @property
    def weak_dev(self) -> float:
        return float(self.weak_correct[:, self.dev].mean())

    @property
    def ceiling_dev(self) -> float:
        return float(self.ceiling_correct[:, self.dev].mean())

    def baseline(self, rows: np.ndarray) -> tuple[float, float]:
        """Mean weak and ceiling accuracy on ``rows`` over the baseline seeds."""
        return float(self.weak_correct[:, rows].mean()), float(self.ceiling_correct[:, rows].mean())

    def sealed_mde(self) -> float:
        """The smallest PGR difference the sealed third can detect (paired, 80% power, two-sided
        5%), taking the weak and ceiling models' disagreement there as the typical one (on two
        classes, two predictors disagree exactly where one of them is right)."""
        w, c = self.baseline(self.sealed)
        d = float((self.weak_correct[:, self.sealed] != self.ceiling_correct[:, self.sealed]).mean())
        return min_detectable_effect(len(self.sealed), d, c - w) if c > w else math.nan

    def acc(self, p1: np.ndarray, rows: np.ndarray) -> float:
        """Accuracy on ``rows``; class 1 when P(class 1) > 0.5 (ties go to class 0, as argmax does)."""
        return float(((p1[rows] > 0.5).astype(np.int64) == self.labels[rows]).mean())

    def evaluate(self, p1: np.ndarray) -> dict[str, float | None]:
        """Dev-set PGR and transfer accuracy, rounded to 2 decimals, WITHOUT the hardening of
        ``POST /api/evaluate`` (keyed noise and answer reuse: :mod:`w2slab.integrity.feedback`)."""
        t = self.acc(p1, self.dev)
        g = pgr(t, self.weak_dev, self.ceiling_dev)
        return {"pgr": None if math.isnan(g) else round(g, 2), "transfer_acc": round(t, 2)}

    def correct(self, per_seed: dict[int, np.ndarray]) -> np.ndarray:
        """(required seeds, test rows) correctness of a submission's predictions."""
        return correct_matrix([per_seed[s] for s in self.seeds], self.labels)

    def score(self, per_seed: dict[int, np.ndarray], rows: np.ndarray, n_boot: int = 10_000) -> PGRInterval:
        """PGR on ``rows`` (the board or the sealed third) over the required seeds, with a paired
        bootstrap interval over rows and seeds (weak, ceiling and transfer on the same rows)."""
        return pgr_interval(self.correct(per_seed)[:, rows], self.weak_correct[:, rows], self.ceiling_correct[:, rows],
                            n_boot=n_boot, seed=int(self.fingerprint[:8], 16))

    def compare(self, a: dict[int, np.ndarray], b: dict[int, np.ndarray], rows: np.ndarray, n_boot: int = 10_000) -> PGRDiff:
        """PGR(a) - PGR(b) on ``rows``, paired over the same rows and seeds."""
        return pgr_diff_interval(self.correct(a)[:, rows], self.correct(b)[:, rows], self.weak_correct[:, rows],
                                 self.ceiling_correct[:, rows], n_boot=n_boot, seed=int(self.fingerprint[:8], 16))


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
    dev, board, sealed = split_rows(len(labels), fp)
    return Scorer(
        name=alias if eq else public_name(ref),
        kind=data.kind,
        labels=labels,
        dev=dev,
        board=board,
        sealed=sealed,
        baseline_seeds=list(baseline_seeds),
        weak_correct=correct_matrix([weak_artifacts(exp, s)["test_probs"] for s in baseline_seeds], labels),
        ceiling_correct=correct_matrix([ceiling(exp, s)["test_probs"] for s in baseline_seeds], labels),
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
