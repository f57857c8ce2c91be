"""The offline researchers on every built-in testbed, scored on the sealed holdout: the README's
research-results table.

    python benchmarks/research_table.py [--minutes 10] [--researchers 2] [--testbeds a,b] [--out runs/research-table]
    python benchmarks/research_table.py --testbeds tweets-claims --minutes 3 --max-experiments 20

For each testbed it runs ``w2slab research`` through the Python API (a fresh grader, two offline
researchers with their fixed search seeds ``1000 + i`` and the first two built-in directions, the
naive reference submitted by the launcher) and prints one row: the sealed PGR of the headline
pick with its 95% paired bootstrap interval (over the sealed rows and the server's submission
seeds), naive's sealed PGR on the same rows and seeds, the paired difference (pick - naive) with
its interval, experiments per researcher-hour (over the researchers' own wall-clock, their final
runs included: one per finalist), dev evaluations used, and the winning recipe.
It writes every run's summary to ``--out/research_table.json``.

Reproducibility: the researchers' random search is seeded; the grader's submission seeds and
dev-answer noise come from the server secret under ``$W2SLAB_HOME`` (fixed per machine). A
time budget makes the number of experiments depend on the machine's load; ``--max-experiments N``
bounds each researcher by experiments instead (with ``--minutes`` large enough), which makes a
run repeat exactly on one machine.

How the search was designed (leave-one-testbed-out, stated rather than run): the recipe space, the
two opening directions, the Thompson sampling, the archive and the lower-bound pick were designed on
``tweets-pairs`` in earlier sessions. The consistency block (closed choice sets) and the cross-fitted
teacher-error filter were designed from the *format* of correctness rows (no labels, no testbed
name) and checked on the dev thirds (seeds 1-2) of ``tweets-claims`` and ``reviews-claims`` (and the
filter on ``tweets-pairs``'s); the search's new priors (structural blocks first, the other blocks'
starters as Thompson candidates around naive) were set after one 6-minute ``tweets-claims`` run.
The low-rank student block (``rank``: the top principal directions of the student's features) was
checked on the dev thirds (seeds 1-2, plain soft-label transfer) of ``tweets-pairs``,
``tweets-claims`` and ``reviews-claims`` before it entered the space, with ``fever-claims`` held out.
``fever-claims`` informed nothing. Nothing is keyed by a testbed's name.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

BUILTIN = ("tweets-pairs", "tweets-claims", "reviews-claims", "fever-claims")


def _ci(row: dict[str, Any] | None, value: str = "pgr", ci: str = "pgr_ci") -> str:
    if not row or row.get(value) is None:
        return "n/a"
    lo, hi = row.get(ci) or (None, None)
    return f"{row[value]:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo is not None else f"{row[value]:+.2f}"


def _recipe(best: dict[str, Any] | None, width: int = 160) -> str:
    """The pick's recipe (what differs from naive), whole fields only, cut to about ``width``."""
    parts, out = ((best or {}).get("method_name") or "-").split(": ", 1)[-1].split(", "), []
    for part in parts:
        if out and len(", ".join(out + [part])) > width:
            return ", ".join(out) + ", ..."
        out.append(part)
    return ", ".join(out)


def researcher_hours(workdir: Path) -> float | None:
    """The researchers' own wall-clock (from the run's status.json), in hours."""
    try:
        status = json.loads((workdir / "status.json").read_text())
        return sum(float(r.get("wall_seconds") or 0) for r in status["researchers"]) / 3600 or None
    except (OSError, ValueError, KeyError):
        return None


def row_of(testbed: str, summary: dict[str, Any], hours: float | None) -> dict[str, Any]:
    best, naive = summary.get("best"), summary.get("naive")
    vs = (best or {}).get("vs") or {}
    return {"testbed": testbed, "best": _ci(best), "naive": _ci(naive),
            "diff": f"{vs['diff']:+.2f} [{vs['ci'][0]:+.2f}, {vs['ci'][1]:+.2f}]" if vs.get("diff") is not None else "n/a",
            "diff_value": vs.get("diff"), "diff_ci": vs.get("ci"),
            "excludes_zero": bool(vs.get("ci") and (vs["ci"][0] > 0 or vs["ci"][1] < 0)),
            "experiments": summary.get("experiments"),
            "experiments_per_hour": round(summary.get("experiments", 0) / hours) if hours else None,
            "dev_evaluations": (summary.get("candidates") or {}).get("dev_evaluations"),
            "recipe": _recipe(best), "wall_seconds": summary.get("wall_seconds")}


def print_table(rows: list[dict[str, Any]], minutes: float, researchers: int) -> None:
    print(f"\nOffline researchers ({researchers} x {minutes:g} min), sealed holdout (1,000 rows x the server's seeds):\n")
    print("| testbed | pick (sealed PGR) | naive (sealed PGR) | pick - naive (paired) | experiments / researcher-hour "
          "| dev evaluations | winning recipe |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['testbed']}` | {r['best']} | {r['naive']} | {'**' + r['diff'] + '**' if r['excludes_zero'] else r['diff']} | "
              f"{r['experiments_per_hour']} ({r['experiments']} in all) | {r['dev_evaluations']} | {r['recipe']} |")
    diffs = [r["diff_value"] for r in rows if r["diff_value"] is not None]
    if diffs:
        print(f"\nmean gain over {len(diffs)} testbed(s): {sum(diffs) / len(diffs):+.3f} PGR; "
              f"interval excludes 0 on {sum(r['excludes_zero'] for r in rows)} of {len(rows)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="each testbed's research wall-clock (default 10)")
    ap.add_argument("--researchers", type=int, default=2)
    ap.add_argument("--testbeds", default=",".join(BUILTIN), help="comma-separated (default: every built-in testbed)")
    ap.add_argument("--max-experiments", type=int, default=None, help="per researcher: bound by count (repeatable runs)")
    ap.add_argument("--audit-wait", type=float, default=120.0,
                    help="seconds the summary waits for submission audits (they do not change sealed scores)")
    ap.add_argument("--out", type=Path, default=Path("runs/research-table"))
    args = ap.parse_args()

    from w2slab.researchers.launcher import run_research
    from w2slab.researchers.options import ResearchOptions
    from w2slab.testbeds import REGISTRY

    testbeds = [t.strip() for t in args.testbeds.split(",") if t.strip()]
    unknown = [t for t in testbeds if t not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown testbed(s) {', '.join(unknown)} (built in: {', '.join(sorted(REGISTRY))})")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, runs = [], {}
    for tb in testbeds:
        start = time.time()
        print(f"{tb}: {args.researchers} offline researchers for {args.minutes:g} min ...", flush=True)
        summary = run_research(ResearchOptions(testbed=tb, researchers=args.researchers, backend="offline",
                                               hours=args.minutes / 60, max_experiments=args.max_experiments,
                                               workdir=args.out / tb, audit_wait_seconds=args.audit_wait, quiet=True))
        runs[tb] = summary
        rows.append(row_of(tb, summary, researcher_hours(args.out / tb)))
        r = rows[-1]
        print(f"{tb}: pick {r['best']}, naive {r['naive']}, paired {r['diff']}; {r['experiments']} experiments, "
              f"{r['dev_evaluations']} dev evaluations; {r['recipe']} ({time.time() - start:.0f} s)", flush=True)
        (args.out / "research_table.json").write_text(json.dumps(
            {"minutes": args.minutes, "researchers": args.researchers, "max_experiments": args.max_experiments,
             "rows": rows, "summaries": runs}, indent=1, default=str) + "\n")
    print_table(rows, args.minutes, args.researchers)
    print(f"\nJSON: {args.out / 'research_table.json'}")


if __name__ == "__main__":
    main()
