"""Speed of the paired row x seed bootstrap of PGR (w2slab.engine.stats).

    python benchmarks/bootstrap_speed.py [--seeds 5] [--rows 5000] [--n-boot 10000] [--repeats 5]

Times pgr_interval (weak, ceiling, transfer: S seeds each), pgr_diff_interval (two methods), the old
seeds-only `summarize`, and, for comparison, the exact multinomial row resample (index matrix +
bincount) that the Poisson row weights replace. Target: 10,000 resamples of 5 seeds x 5,000 rows
well under a second. Prints the median and best of --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from w2slab.engine.stats import pgr_diff_interval, pgr_interval, summarize


def _timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _multinomial_rows(mats: list[np.ndarray], n_boot: int, seed: int = 0) -> np.ndarray:
    """Row accuracies under the exact n-out-of-n resample (no seed resampling): the costly part."""
    stacked = np.vstack(mats).astype(np.float32)
    n = stacked.shape[1]
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n)) + np.arange(b)[:, None] * n
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float32)
        with threadpool_limits(1, user_api="blas"):  # as in w2slab.engine.stats
            out.append(stacked @ counts.T / n)
    return np.hstack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--n-boot", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    easy = rng.random(args.rows)  # per-row chance of being right, shared by the models
    weak, ceiling, a, b = (rng.random((args.seeds, args.rows)) < np.clip(easy + d, 0, 1) for d in (-0.1, 0.1, 0.0, 0.02))
    accs = [list(m.mean(1)) for m in (a, weak, ceiling)]
    shape = f"{args.seeds} seeds x {args.rows} rows, {args.n_boot} resamples"

    iv = pgr_interval(a, weak, ceiling, n_boot=args.n_boot)
    old = summarize(*accs, n_boot=args.n_boot)
    print(f"{shape}: PGR {iv.pgr:.3f}, rows x seeds [{iv.lo:.3f}, {iv.hi:.3f}] vs seeds only [{old.pgr_ci[0]:.3f}, {old.pgr_ci[1]:.3f}]")
    rows = [
        ("pgr_interval (rows x seeds)", lambda: pgr_interval(a, weak, ceiling, n_boot=args.n_boot)),
        ("pgr_diff_interval (rows x seeds, paired)", lambda: pgr_diff_interval(a, b, weak, ceiling, n_boot=args.n_boot)),
        ("summarize (old, seeds only)", lambda: summarize(*accs, n_boot=args.n_boot)),
        ("exact multinomial rows (index + bincount)", lambda: _multinomial_rows([a, weak, ceiling], args.n_boot)),
    ]
    print(f"{'':44s} {'median':>9s} {'best':>9s}")
    for name, fn in rows:
        med, best = _timed(fn, args.repeats)
        print(f"{name:44s} {med * 1000:7.0f} ms {best * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
