"""CPU time of the grader's serial section per evaluation: the budget check, the feedback guard
(history sync, reuse, Ladder) and the audit and fingerprint rows, in one write transaction, which
SQLite runs one at a time across all workers, so it bounds throughput. In-process, no HTTP, so
it measures the code rather than a busy machine's scheduler (CPU time, not wall time).

    .venv/bin/python benchmarks/grader_serial.py --compare HEAD --evaluations 600 --rounds 2

``--compare REF`` runs the same measurement on git revision REF's ``w2slab`` (extracted with
``git archive``) and on this checkout, alternately; without it, this checkout only.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grader_bench import ROOT, STRONG, WEAK, extract, make_testbed, package_env

def measure(n: int, tmp: Path) -> float:
    """CPU ms per evaluation of the serial section (50 researchers, 16 prediction vectors)."""
    import numpy as np

    try:  # this checkout
        from w2slab.grader.budget import charge, sha_of
        from w2slab.grader.state import Settings, prepare
    except ImportError:  # before the grader was split into modules
        from w2slab.grader.app import Settings, charge, prepare, sha_of  # type: ignore[attr-defined,no-redef]
    from w2slab.grader.auth import Principal, create_researcher
    from w2slab.grader.scoring import parse_predictions

    os.environ.setdefault("W2SLAB_ADMIN_TOKEN", f"adm_{secrets.token_urlsafe(16)}")
    tb = make_testbed(tmp / "bench", 500)
    st = Settings(testbeds=[f"bench={tb}"], weak=WEAK, strong=STRONG, db_url=f"sqlite:///{tmp / 'serial.db'}",
                  eval_per_hour=10**9, eval_total=10**9, baseline_workers=1, audits=False)
    state = prepare(st)
    who = [Principal(r.id, r.name) for r, _ in (create_researcher(state.engine, f"r{i}") for i in range(50))]
    sc = state.scorers["bench"]
    rng = np.random.default_rng(0)
    preds = [[round(float(x), 4) for x in rng.random(sc.n_test)] for _ in range(16)]

    def one(i: int) -> None:
        p, w = preds[i % 16], who[i % 50]
        p1 = parse_predictions(p, sc.n_test)
        box = {}

        def answer(s, _):  # noqa: ANN001, ANN202
            box["a"], box["fp"] = state.guard.evaluate(s, w.id, sc, p1, None)
            return box["a"]

        def link(s, audit_id, _):  # noqa: ANN001, ANN202
            state.guard.record(s, box["fp"], audit_id)

        charge(state, w, "evaluate", sc.name, sha_of(p), answer, after=link)

    for i in range(200):  # warm-up: a history to compare against
        one(i)
    c0 = time.process_time()
    for i in range(n):
        one(200 + i)
    return (time.process_time() - c0) / n * 1000


def run_child(package: Path | None, n: int) -> float:
    env = package_env(package)
    with tempfile.TemporaryDirectory(prefix="grader-serial-") as tmp:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", tmp, "--evaluations", str(n)],
                             env=env, cwd=package or ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    return float(out.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evaluations", type=int, default=600)
    ap.add_argument("--compare", metavar="REF", help="also measure git revision REF (e.g. HEAD)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(f"{measure(args.evaluations, Path(args.child)):.3f}")
        return
    with tempfile.TemporaryDirectory(prefix="grader-serial-old-") as tmp:
        variants: dict[str, Path | None] = {"working tree": None}
        if args.compare:
            variants = {args.compare: extract(args.compare, Path(tmp) / "old"), **variants}
        results: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for label, package in variants.items():
                results[label].append(run_child(package, args.evaluations))
                print(f"{label}: {results[label][-1]:.2f} ms CPU per evaluation", flush=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"
    print(f"\nserial section, CPU ms per evaluation ({args.evaluations} evaluations, {args.rounds} round(s); load average {load})")
    for label, xs in results.items():
        print(f"{label:<14} median {statistics.median(xs):.2f}  range {min(xs):.2f}-{max(xs):.2f}"
              f"  => at most {1000 / statistics.median(xs):.0f} evaluations/s through the write lock on one core")


if __name__ == "__main__":
    main()
