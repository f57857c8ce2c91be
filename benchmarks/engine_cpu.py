"""CPU engine benchmark: baselines from scratch, then method x seed with embeddings cached.

    python benchmarks/engine_cpu.py [--testbed tweets-pairs] [--seeds 1-5] [--methods naive,aux-conf]

Targets (2 cores): all baselines from scratch <= 300 s; each further method x seed <= 10 s.
Uses a fresh W2SLAB_HOME so nothing is cached at the start.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testbed", default="tweets-pairs")
    ap.add_argument("--seeds", default="1-5")
    ap.add_argument("--methods", default="naive,soft,aux-conf,confident,self-train,unsupervised")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    os.environ["W2SLAB_HOME"] = tempfile.mkdtemp(prefix="w2slab-bench-")

    from w2slab.cli import parse_seeds
    from w2slab.engine.pipeline import Experiment
    from w2slab.engine.runner import compute_baselines, run_method_over_seeds

    seeds = parse_seeds(args.seeds)
    exp = Experiment.create(args.testbed)
    start = time.perf_counter()
    base = compute_baselines(exp, seeds, workers=args.workers, quiet=True)
    took = time.perf_counter() - start
    print(f"testbed {args.testbed}: weak {sum(base.weak_acc)/len(seeds):.3f} ceiling {sum(base.ceiling_acc)/len(seeds):.3f}")
    print(f"baselines from scratch ({len(seeds)} seeds, embeddings included): {took:.1f} s  (target <= 300 s)")
    for method in args.methods.split(","):
        start = time.perf_counter()
        res = run_method_over_seeds(exp, method, seeds, workers=args.workers, quiet=True)
        took = time.perf_counter() - start
        inner = sum(r["seconds"] for r in res.per_seed) / len(seeds)
        print(f"{method:>14}: {took / len(seeds):5.1f} s per seed wall ({inner:4.1f} s inside the method)  PGR {res.summary.pgr:+.2f}  (target <= 10 s)")


if __name__ == "__main__":
    main()
