"""The paired row x seed bootstrap of PGR: coverage on synthetic testbeds with known truth,
width against the seeds-only interval, pairing, degenerate inputs, minimum detectable effect."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from w2slab.engine.stats import (
    _POISSON_TABLE,
    correct_matrix,
    min_detectable_effect,
    pgr_diff_interval,
    pgr_interval,
    summarize,
)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


class SyntheticTestbed:
    """A population of test rows of a few difficulty types (known frequencies) and models whose
    chance of being right depends on the row type and on the seed (a seed-level offset of +-delta on
    the logit scale, each with probability 1/2). True accuracy is exact: the average over row types
    and both seed offsets. Drawing a testbed samples n rows from the population and S seeds; within a
    draw, a and b share one uniform per (seed, row), so their errors are positively correlated."""

    TYPES = np.array([-4.0, -2.0, 0.0, 2.5, 4.5])  # row easiness (logit)
    FREQ = np.array([0.15, 0.2, 0.3, 0.2, 0.15])

    def __init__(self, offsets: dict[str, float], delta: float = 0.15, shared: float = 0.7):
        self.offsets, self.delta, self.shared = offsets, delta, shared

    def true_acc(self, model: str) -> float:
        logit = self.TYPES + self.offsets[model]
        q = (_sigmoid(logit + self.delta) + _sigmoid(logit - self.delta)) / 2
        return float(self.FREQ @ q)

    def true_pgr(self, transfer: str) -> float:
        w, c = self.true_acc("weak"), self.true_acc("ceiling")
        return (self.true_acc(transfer) - w) / (c - w)

    def draw(self, rng: np.random.Generator, n: int, seeds: int) -> dict[str, np.ndarray]:
        rows = rng.choice(len(self.TYPES), size=n, p=self.FREQ)
        out = {}
        for group in ("weak", "ceiling", "transfer"):  # independent seeds per group
            sign = rng.choice([-1.0, 1.0], size=(seeds, 1))
            # A seed reuses the group's per-row uniform with probability `shared` (seeds of one model
            # mostly agree), else draws its own; either way u is uniform, so the truth is unchanged.
            u = np.where(rng.random((seeds, n)) < self.shared, rng.random(n), rng.random((seeds, n)))
            for model in self.offsets:
                if model == group or (group == "transfer" and model not in ("weak", "ceiling")):
                    logit = self.TYPES[rows][None, :] + self.offsets[model] + sign * self.delta
                    out[model] = u < _sigmoid(logit)
        return out


BED = SyntheticTestbed({"weak": -0.8, "ceiling": 0.8, "a": 0.2, "b": 0.1})


def test_synthetic_truth_is_what_it_claims():
    # A huge draw recovers the exact true accuracies (the generator is what the coverage test assumes).
    d = BED.draw(np.random.default_rng(0), 20_000, 200)
    for model in ("weak", "ceiling", "a", "b"):
        assert abs(d[model].mean() - BED.true_acc(model)) < 0.01
    assert 0.12 < BED.true_acc("ceiling") - BED.true_acc("weak") < 0.25  # a gap like the real testbeds'


def test_interval_covers_true_pgr_and_diff_at_nominal_rate():
    rng = np.random.default_rng(12345)
    truth_a, truth_diff = BED.true_pgr("a"), BED.true_pgr("a") - BED.true_pgr("b")
    reps, cover, cover_diff, cover_seeds_only = 200, 0, 0, 0
    est, se, est_diff, se_diff = [], [], [], []
    for i in range(reps):
        d = BED.draw(rng, 300, 5)
        iv = pgr_interval(d["a"], d["weak"], d["ceiling"], n_boot=1000, seed=i)
        cover += iv.lo <= truth_a <= iv.hi
        df = pgr_diff_interval(d["a"], d["b"], d["weak"], d["ceiling"], n_boot=1000, seed=i)
        cover_diff += df.lo <= truth_diff <= df.hi
        est.append(iv.pgr), se.append(iv.se), est_diff.append(df.diff), se_diff.append(df.se)
        old = summarize(list(d["a"].mean(1)), list(d["weak"].mean(1)), list(d["ceiling"].mean(1)), n_boot=1000, seed=i)
        cover_seeds_only += old.pgr_ci[0] <= truth_a <= old.pgr_ci[1]
    assert cover >= 0.9 * reps, cover
    assert cover_diff >= 0.9 * reps, cover_diff
    # The bootstrap SE tracks the real spread of the estimate. It is conservative (resampling rows and
    # seeds independently counts the seed x row noise more than once, as in Owen's pigeonhole
    # bootstrap), but not wildly so.
    assert 0.9 < np.mean(se) / np.std(est) < 1.5, (np.mean(se), np.std(est))
    assert 0.9 < np.mean(se_diff) / np.std(est_diff) < 1.7, (np.mean(se_diff), np.std(est_diff))
    assert abs(np.mean(est) - truth_a) < 0.05 and abs(np.mean(est_diff) - truth_diff) < 0.01
    # ... while the seeds-only interval misses the truth far more often than 5% of the time.
    assert cover_seeds_only < 0.75 * reps, cover_seeds_only


def test_interval_is_wider_than_seeds_only_when_rows_are_few():
    d = BED.draw(np.random.default_rng(3), 150, 5)
    iv = pgr_interval(d["a"], d["weak"], d["ceiling"], n_boot=2000)
    old = summarize(list(d["a"].mean(1)), list(d["weak"].mean(1)), list(d["ceiling"].mean(1)))
    assert iv.lo < iv.pgr < iv.hi
    assert iv.hi - iv.lo > 2 * (old.pgr_ci[1] - old.pgr_ci[0])
    assert iv.n_rows == 150 and iv.n_seeds == 5 and iv.n_boot == 2000
    assert iv.weak_acc == pytest.approx(d["weak"].mean()) and iv.transfer_acc == pytest.approx(d["a"].mean())
    assert iv.per_seed_pgr == pytest.approx([(t - iv.weak_acc) / (iv.ceiling_acc - iv.weak_acc) for t in d["a"].mean(1)])
    # More rows, narrower interval (roughly 1/sqrt(n)).
    big = BED.draw(np.random.default_rng(3), 2400, 5)
    iv_big = pgr_interval(big["a"], big["weak"], big["ceiling"], n_boot=2000)
    assert iv_big.hi - iv_big.lo < 0.5 * (iv.hi - iv.lo)


def test_paired_diff_is_narrower_than_unpaired():
    d = BED.draw(np.random.default_rng(7), 500, 3)
    agree = (d["a"] == d["b"]).mean()
    assert agree > 0.9  # shared uniforms: the two methods disagree on few rows
    paired = pgr_diff_interval(d["a"], d["b"], d["weak"], d["ceiling"], n_boot=2000)
    ia = pgr_interval(d["a"], d["weak"], d["ceiling"], n_boot=2000, seed=1)
    ib = pgr_interval(d["b"], d["weak"], d["ceiling"], n_boot=2000, seed=2)
    unpaired_se = math.hypot(ia.se, ib.se)
    assert paired.se < 0.5 * unpaired_se
    assert paired.diff == pytest.approx(ia.pgr - ib.pgr)
    assert (paired.pgr_a, paired.pgr_b) == pytest.approx((ia.pgr, ib.pgr))
    assert paired.lo < paired.diff < paired.hi
    # A method against itself: the difference is exactly zero on every resample.
    same = pgr_diff_interval(d["a"], d["a"], d["weak"], d["ceiling"], n_boot=500)
    assert same.diff == same.lo == same.hi == 0.0


def test_one_seed_still_gives_an_interval_from_rows():
    d = BED.draw(np.random.default_rng(11), 400, 1)
    iv = pgr_interval(d["a"], d["weak"], d["ceiling"], n_boot=1000)
    assert np.isfinite([iv.lo, iv.hi, iv.se]).all() and iv.lo < iv.pgr < iv.hi
    assert iv.hi - iv.lo > 0.1  # 400 rows: row noise alone is large
    assert iv.n_seeds == 1 and "rows" in iv.to_dict()["ci_method"]
    # 1-D vectors are taken as one seed.
    iv1 = pgr_interval(d["a"][0], d["weak"][0], d["ceiling"][0], n_boot=1000)
    assert (iv1.pgr, iv1.lo, iv1.hi) == (iv.pgr, iv.lo, iv.hi)
    df = pgr_diff_interval(d["a"], d["b"], d["weak"], d["ceiling"], n_boot=1000)
    assert np.isfinite([df.lo, df.hi]).all()


def test_no_gap_gives_nan_and_a_message():
    d = BED.draw(np.random.default_rng(5), 200, 3)
    iv = pgr_interval(d["a"], d["ceiling"], d["weak"], n_boot=200)  # weak and ceiling swapped
    assert all(math.isnan(x) for x in (iv.pgr, iv.lo, iv.hi, iv.se))
    assert "does not beat weak" in iv.note
    out = iv.to_dict()
    json.dumps(out, allow_nan=False)  # JSON-safe: NaN became None
    assert out["pgr"] is None and out["lo"] is None and "note" in out
    df = pgr_diff_interval(d["a"], d["b"], d["ceiling"], d["weak"], n_boot=200)
    assert math.isnan(df.diff) and df.to_dict()["diff"] is None


def test_resamples_without_gap_are_dropped_and_counted():
    # A gap of two rows on 20: many resamples lose it; they are counted, not averaged in.
    weak = np.zeros((1, 20), bool)
    ceiling = np.zeros((1, 20), bool)
    ceiling[0, :2] = True
    transfer = ceiling.copy()
    iv = pgr_interval(transfer, weak, ceiling, n_boot=2000)
    assert iv.pgr == 1.0
    assert 0 < iv.n_dropped < iv.n_boot
    assert iv.lo == iv.hi == 1.0  # transfer == ceiling on every kept resample
    assert "left out" in iv.note
    assert iv.to_dict()["n_dropped"] == iv.n_dropped


def test_shape_mismatch_raises_clear_errors():
    m = np.ones((2, 10), bool)
    with pytest.raises(ValueError, match="same test rows.*transfer 10, weak 9"):
        pgr_interval(m, m[:, :9], m)
    with pytest.raises(ValueError, match="same seeds"):
        pgr_diff_interval(m, m[:1], m, m)
    with pytest.raises(ValueError, match="empty"):
        pgr_interval(m[:, :0], m[:, :0], m[:, :0])
    with pytest.raises(ValueError, match="correctness matrix"):
        pgr_interval(np.ones((2, 2, 2)), m, m)
    with pytest.raises(ValueError, match="level"):
        pgr_interval(m, m, m, level=95)
    with pytest.raises(ValueError, match="3 rows but there are 4 labels"):
        correct_matrix([np.zeros(3)], np.zeros(4, int))


def test_correct_matrix():
    labels = np.array([1, 0, 1, 0])
    p1 = np.array([0.9, 0.5, 0.5, 0.2])  # 0.5 is a tie: class 0, as argmax of (0.5, 0.5)
    two = np.stack([1 - p1, p1], 1)
    m = correct_matrix([p1, two], labels)
    assert m.dtype == bool and m.shape == (2, 4)
    assert m.tolist() == [[True, True, False, True]] * 2
    assert correct_matrix([p1], labels, rows=np.array([2, 0])).tolist() == [[False, True]]


def test_bootstrap_is_seeded():
    d = BED.draw(np.random.default_rng(9), 300, 3)
    a = pgr_interval(d["a"], d["weak"], d["ceiling"], n_boot=500, seed=4)
    b = pgr_interval(d["a"], d["weak"], d["ceiling"], n_boot=500, seed=4)
    c = pgr_interval(d["a"], d["weak"], d["ceiling"], n_boot=500, seed=5)
    assert a == b and (a.lo, a.hi) != (c.lo, c.hi)


def test_poisson_row_weights_have_poisson1_law():
    counts = np.bincount(_POISSON_TABLE.astype(int), minlength=6)[:6] / len(_POISSON_TABLE)
    exact = [math.exp(-1) / math.factorial(k) for k in range(6)]
    assert np.abs(counts - exact).max() < 2 / 65536


def test_min_detectable_effect_formula_and_simulated_power():
    mde = min_detectable_effect(500, 0.3, 0.15)
    assert mde == pytest.approx((1.959964 + 0.841621) * math.sqrt(0.3 / 500) / 0.15, rel=1e-5)
    assert min_detectable_effect(2000, 0.3, 0.15) == pytest.approx(mde / 2)
    assert min_detectable_effect(500, 0.3, 0.15, alpha=0.01) > mde
    assert math.isnan(min_detectable_effect(500, 0.3, 0.0))
    with pytest.raises(ValueError, match="fraction"):
        min_detectable_effect(500, 3.0, 0.1)
    # Simulate: two methods disagreeing on 30% of 1,000 rows whose PGR differs by exactly the MDE;
    # a paired two-sided 5% test (sign test on disagreeing rows) rejects ~80% of the time.
    n, d, gap = 1000, 0.3, 0.2
    delta = min_detectable_effect(n, d, gap) * gap  # accuracy difference
    rng = np.random.default_rng(0)
    k = rng.multinomial(n, [(d + delta) / 2, (d - delta) / 2, 1 - d], size=20_000)
    z = (k[:, 0] - k[:, 1]) / np.sqrt(k[:, 0] + k[:, 1])
    power = (np.abs(z) > 1.959964).mean()
    assert 0.75 < power < 0.85, power
