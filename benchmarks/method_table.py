"""Every built-in method on every built-in testbed, 5 seeds: the README's results table.

    python benchmarks/method_table.py [--seeds 1-5] [--testbeds a,b] [--methods x,y] [--out runs/table]

Prints a markdown table (PGR [95% paired bootstrap CI over test rows and seeds]) plus the
weak/ceiling accuracies, a second table with each method's paired difference from `naive` on
the same rows and seeds, and writes each run's JSON under --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1-5")
    ap.add_argument("--testbeds", default=None)
    ap.add_argument("--methods", default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/table"))
    args = ap.parse_args()

    from w2slab.cli import parse_seeds
    from w2slab.engine.pipeline import Experiment
    import numpy as np

    from w2slab.engine.runner import compute_baselines, run_method_over_seeds, write_result
    from w2slab.engine.stats import correct_matrix, pgr_diff_interval
    from w2slab.methods import list_methods
    from w2slab.testbeds import REGISTRY, load_testbed

    seeds = parse_seeds(args.seeds)
    testbeds = args.testbeds.split(",") if args.testbeds else sorted(REGISTRY)
    methods = args.methods.split(",") if args.methods else list(list_methods())
    rows: dict[str, dict[str, str]] = {}
    diffs: dict[str, dict[str, str]] = {}
    header = []
    for tb in testbeds:
        exp = Experiment.create(tb)
        base = compute_baselines(exp, seeds, workers=args.workers, quiet=True)
        w, c = sum(base.weak_acc) / len(seeds), sum(base.ceiling_acc) / len(seeds)
        header.append(f"`{tb}` (weak {w:.3f}, ceiling {c:.3f})")
        labels = load_testbed(exp.testbed).test.labels
        weak, ceil = correct_matrix(base.weak_probs, labels), correct_matrix(base.ceiling_probs, labels)
        correct: dict[str, np.ndarray] = {}
        for m in sorted(methods, key=lambda m: m != "naive"):  # naive first: the reference of the paired differences
            start = time.perf_counter()
            res = run_method_over_seeds(exp, m, seeds, workers=args.workers, quiet=True)
            write_result(res, args.out / f"{m}-{tb}.json")
            s = res.summary
            cell = f"{s.pgr:+.2f} [{s.pgr_ci[0]:+.2f}, {s.pgr_ci[1]:+.2f}]"
            rows.setdefault(m, {})[tb] = cell
            correct[m] = correct_matrix([np.asarray(r["test_probs_p1"]) for r in res.per_seed], labels)
            if m != "naive" and "naive" in correct:
                d = pgr_diff_interval(correct[m], correct["naive"], weak, ceil)
                diffs.setdefault(m, {})[tb] = f"{d.diff:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]"
            print(f"{tb:>15} {m:>13}: transfer {s.transfer_acc:.3f}  PGR {cell}  ({time.perf_counter() - start:.0f} s)", flush=True)
    print()
    print("| method | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(testbeds))
    for m in methods:
        print(f"| `{m}` | " + " | ".join(rows[m].get(tb, "") for tb in testbeds) + " |")
    print()
    print("PGR difference from `naive`, paired over the same test rows and seeds:")
    print()
    print("| method | " + " | ".join(f"`{tb}`" for tb in testbeds) + " |")
    print("|---|" + "---|" * len(testbeds))
    for m in methods:
        if m in diffs:
            print(f"| `{m}` - `naive` | " + " | ".join(diffs[m].get(tb, "") for tb in testbeds) + " |")


if __name__ == "__main__":
    main()
