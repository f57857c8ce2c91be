"""PGR and its uncertainty: a paired bootstrap over test rows and seeds.

PGR = (transfer - weak) / (ceiling - weak) is a ratio of accuracy differences measured on the
same test rows, so its noise comes from which rows were drawn as well as from training seeds.
`pgr_interval` and `pgr_diff_interval` resample both: each bootstrap draw picks one row multiset
shared by every model (paired over rows) and a seed multiset per group, then recomputes the
accuracies and the PGR. Row resampling is vectorised as Poisson(1) row weights (see `_row_weights`),
so accuracies are matrix products `X @ w`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
from threadpoolctl import threadpool_limits  # installed with scikit-learn

CI_METHOD = "paired bootstrap over test rows and seeds"


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
    percentile bootstrap interval over seeds only (ignores test-row noise; see `pgr_interval`)."""
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


# ---------------------------------------------------------------------------------------------
# Correctness matrices and the paired bootstrap


def correct_matrix(probs_by_seed: Sequence[np.ndarray], labels: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """(S, n) bool: is seed s's prediction right on row r. Each entry of probs_by_seed is (N,)
    P(class 1) or (N, k) probabilities (argmax; for (N,), class 1 when P(class 1) > 0.5, ties -> 0).
    rows: optional index array selecting the scored rows."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if len(probs_by_seed) == 0:
        raise ValueError("correct_matrix needs at least one seed's predictions")
    out = []
    for i, probs in enumerate(probs_by_seed):
        p = np.asarray(probs, dtype=float)
        if p.ndim == 1:
            pred = (p > 0.5).astype(int)
        elif p.ndim == 2:
            pred = p.argmax(1)
        else:
            raise ValueError(f"predictions of seed #{i} must be (N,) or (N, k), got shape {p.shape}")
        if len(pred) != len(labels):
            raise ValueError(f"predictions of seed #{i} have {len(pred)} rows but there are {len(labels)} labels")
        out.append(pred == labels)
    mat = np.stack(out)
    if rows is not None:
        mat = mat[:, np.asarray(rows)]
    return mat


@dataclass(frozen=True)
class PGRInterval:
    pgr: float  # point estimate: (mean t - mean w) / (mean c - mean w)
    lo: float  # percentile interval at `level`
    hi: float
    se: float  # bootstrap standard error
    weak_acc: float  # means over seeds and rows
    ceiling_acc: float
    transfer_acc: float
    n_rows: int
    n_seeds: int  # transfer seeds
    per_seed_pgr: tuple[float, ...]  # each transfer seed against mean weak / mean ceiling
    level: float = 0.95
    n_boot: int = 0
    n_dropped: int = 0  # resamples where ceiling <= weak (PGR undefined), left out of lo/hi/se

    @property
    def pgr_ci(self) -> tuple[float, float]:  # PGRSummary's names, for older callers
        return (self.lo, self.hi)

    @property
    def pgr_se(self) -> float:
        return self.se

    @property
    def method(self) -> str:
        return CI_METHOD if self.n_seeds > 1 else "paired bootstrap over test rows (1 seed)"

    @property
    def note(self) -> str:
        """Why the interval is missing or shaky; empty when all is well."""
        if not self.ceiling_acc > self.weak_acc:
            return f"PGR undefined: ceiling accuracy {self.ceiling_acc:.3f} does not beat weak {self.weak_acc:.3f} on these rows"
        if self.n_dropped:
            return f"{self.n_dropped} of {self.n_boot} resamples had ceiling <= weak and were left out"
        return ""

    def to_dict(self) -> dict:
        d = _json_safe(asdict(self))
        d["ci_method"] = self.method
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class PGRDiff:
    diff: float  # PGR(a) - PGR(b)
    lo: float
    hi: float
    se: float
    pgr_a: float
    pgr_b: float
    n_rows: int
    n_seeds: int
    level: float = 0.95
    n_boot: int = 0
    n_dropped: int = 0

    def to_dict(self) -> dict:
        d = _json_safe(asdict(self))
        d["ci_method"] = CI_METHOD if self.n_seeds > 1 else "paired bootstrap over test rows (1 seed)"
        return d


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _as_matrix(x, name: str) -> np.ndarray:
    m = np.asarray(x)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2:
        raise ValueError(f"{name} must be a (seeds, rows) correctness matrix, got shape {m.shape}")
    if m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {m.shape}): need at least one seed and one row")
    return m.astype(np.float32)


def _check_rows(mats: dict[str, np.ndarray]) -> int:
    sizes = {name: m.shape[1] for name, m in mats.items()}
    if len(set(sizes.values())) != 1:
        shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise ValueError(f"correctness matrices must cover the same test rows, got row counts: {shown}")
    return next(iter(sizes.values()))


# Poisson(1) inverse CDF on a 16-bit grid: table[u] for u uniform on 0..65535 is Poisson(1)
# distributed with every probability within 1/65536 of the exact one.
_P1 = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(20)])
_POISSON_TABLE = np.searchsorted(_P1 * 65536, np.arange(65536) + 0.5).astype(np.float32)


def _row_weights(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """(b, n) float32 row multiplicities, Poisson(1) per row (the Poisson bootstrap).

    Why not the multinomial (exact n-out-of-n) resample: its counts need a bincount over b*n drawn
    indices, ~4x slower than a table lookup on random bits. Given the total weight N* ~ Poisson(n),
    Poisson weights are exactly a multinomial resample of size N*; accuracies are weighted means
    (divided by N*), so the only difference is the resample size varying by ~1/sqrt(n), negligible
    for test sets of hundreds of rows (Hanley & MacGibbon 2006; Chamandy et al. 2012)."""
    bits = rng.bit_generator.random_raw((b * n + 3) // 4).view(np.uint16)[: b * n].reshape(b, n)
    return _POISSON_TABLE[bits]


def _seed_counts(rng: np.random.Generator, b: int, s: int) -> np.ndarray:
    """(b, s) multiplicities of an s-out-of-s resample of seeds (all ones for s == 1)."""
    if s == 1:
        return np.ones((b, 1))
    draws = rng.integers(0, s, size=(b, s))
    return (draws[:, :, None] == np.arange(s)).sum(1)


def _bootstrap_accs(groups: list[np.ndarray], seed_keys: list[int], n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap accuracy of each group, (n_boot,) each. One row multiset per draw shared by all
    groups; groups with the same seed key share a seed multiset (they must have equal seed counts).
    Draws whose resample has no rows (total weight 0) come back NaN."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n = groups[0].shape[1]
    stacked = np.vstack([*groups, np.ones((1, n), np.float32)])  # last row: total weight
    bounds = np.cumsum([0] + [g.shape[0] for g in groups])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // n))
    out: list[list[np.ndarray]] = [[] for _ in groups]
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        w = _row_weights(rng, b, n)
        # One BLAS thread: the product is small (~20% of the time) and threaded BLAS on a busy
        # machine spins, measured 2x slower overall on 2 shared cores.
        with threadpool_limits(1, user_api="blas"):
            sums = (stacked @ w.T).astype(np.float64)  # (D + 1, b)
        total = sums[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_seed = sums[:-1] / total  # (D, b): each seed's accuracy on the resampled rows
        counts: dict[int, np.ndarray] = {}
        for i, key in enumerate(seed_keys):
            s = groups[i].shape[0]
            if key not in counts:
                counts[key] = _seed_counts(rng, b, s)
            m = counts[key]
            out[i].append((m * per_seed[bounds[i] : bounds[i + 1]].T).sum(1) / s)
        done += b
    return [np.concatenate(o) for o in out]


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """(lo, hi, se) of the finite values; NaNs if fewer than two."""
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return math.nan, math.nan, math.nan
    q = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [q, 100 - q])
    return float(lo), float(hi), float(v.std(ddof=1))


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")


def pgr_interval(transfer, weak, ceiling, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> PGRInterval:
    """PGR with a paired bootstrap interval over test rows and seeds.

    transfer (S_t, n), weak (S_w, n), ceiling (S_c, n): bool correctness matrices on the SAME n rows.
    Each resample draws one row multiset used for all three and, independently per group, a seed
    multiset. Resamples where ceiling <= weak are dropped (counted in n_dropped). NaN when the
    point gap is <= 0."""
    _check_level(level)
    t, w, c = _as_matrix(transfer, "transfer"), _as_matrix(weak, "weak"), _as_matrix(ceiling, "ceiling")
    n = _check_rows({"transfer": t, "weak": w, "ceiling": c})
    ta, wa, ca = (float(m.mean(dtype=np.float64)) for m in (t, w, c))
    point = pgr(ta, wa, ca)
    per_seed = tuple(pgr(float(x), wa, ca) for x in t.mean(1, dtype=np.float64))
    if math.isnan(point):
        return PGRInterval(point, math.nan, math.nan, math.nan, wa, ca, ta, n, t.shape[0], per_seed, level, n_boot, n_boot)
    bt, bw, bc = _bootstrap_accs([t, w, c], [0, 1, 2], n_boot, seed)
    gap = bc - bw
    ok = gap > 0  # False for NaN too
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = np.where(ok, (bt - bw) / np.where(ok, gap, 1.0), np.nan)
    lo, hi, se = _percentile_ci(boots, level)
    return PGRInterval(point, lo, hi, se, wa, ca, ta, n, t.shape[0], per_seed, level, n_boot, int((~ok).sum()))


def pgr_diff_interval(a, b, weak, ceiling, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> PGRDiff:
    """PGR(a) - PGR(b) with a paired bootstrap interval. a and b are (S, n) correctness matrices of
    two methods on the same seeds and rows: each resample uses one row multiset for all four and one
    seed multiset for a and b together (paired); weak and ceiling seeds are resampled independently."""
    _check_level(level)
    ma, mb = _as_matrix(a, "a"), _as_matrix(b, "b")
    w, c = _as_matrix(weak, "weak"), _as_matrix(ceiling, "ceiling")
    n = _check_rows({"a": ma, "b": mb, "weak": w, "ceiling": c})
    if ma.shape[0] != mb.shape[0]:
        raise ValueError(f"a and b must come from the same seeds, got {ma.shape[0]} and {mb.shape[0]} seeds")
    aa, ba, wa, ca = (float(m.mean(dtype=np.float64)) for m in (ma, mb, w, c))
    pa, pb = pgr(aa, wa, ca), pgr(ba, wa, ca)
    if math.isnan(pa):
        return PGRDiff(math.nan, math.nan, math.nan, math.nan, pa, pb, n, ma.shape[0], level, n_boot, n_boot)
    bA, bB, bw, bc = _bootstrap_accs([ma, mb, w, c], [0, 0, 1, 2], n_boot, seed)
    gap = bc - bw
    ok = gap > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = np.where(ok, (bA - bB) / np.where(ok, gap, 1.0), np.nan)
    lo, hi, se = _percentile_ci(boots, level)
    return PGRDiff(pa - pb, lo, hi, se, pa, pb, n, ma.shape[0], level, n_boot, int((~ok).sum()))


def min_detectable_effect(n_rows: int, disagreement: float, gap: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest PGR difference a paired two-sided test at `alpha` detects with `power`, for two
    methods disagreeing on a fraction `disagreement` of n_rows rows, with ceiling - weak = gap:
    (z_{1-alpha/2} + z_{power}) * sqrt(disagreement / n_rows) / gap. NaN if gap <= 0 or n_rows < 1."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be between 0 and 1, got {alpha} and {power}")
    if not 0 <= disagreement <= 1:
        raise ValueError(f"disagreement is a fraction of rows, got {disagreement}")
    if n_rows < 1 or not gap > 0:
        return math.nan
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(disagreement / n_rows) / gap
