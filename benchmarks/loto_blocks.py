"""Leave-one-testbed-out check of the offline researcher's blocks: would each block's opening move
have been kept in the screening design had the testbed it is judged on been held out?

    python benchmarks/loto_blocks.py --seeds 1-3                 # every built-in testbed, every block
    python benchmarks/loto_blocks.py --testbeds tweets-pairs,fever-claims --seeds 1,2

For each built-in testbed it runs the naive recipe and every block's opening move
(:data:`w2slab.researchers.recipes.STARTERS`, where the block applies), plus the two candidate
opening moves of the hyper-parameter block (``epochs=10``, ``head=linear``), on the kit's seeds, and
scores them on the **dev and board thirds** of the test set (labels are read here, in the benchmark
only; the sealed third is never touched). Each effect is PGR(move) - PGR(naive), paired on the same
rows and seeds, with a 95% paired bootstrap interval.

Then, for each testbed held out in turn, the rule "screen a block when its mean effect over the
other testbeds where it applies is at least 0" decides from the other testbeds alone, and the table
shows what the held-out testbed gets from the blocks the rule keeps and from those it drops; for
the hyper block, the rule picks the opening move with the larger mean effect elsewhere.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from w2slab.engine.pipeline import Experiment, ceiling, method_context, weak_artifacts
from w2slab.engine.stats import correct_matrix, pgr_diff_interval
from w2slab.grader.scoring import split_rows
from w2slab.methods.blocks import choice_set
from w2slab.researchers.recipes import STARTERS, Recipe
from w2slab.testbeds import load_testbed, testbed_fingerprint
from w2slab.testbeds.build import BUILDERS

HYPER_MOVES = {"hyper:epochs=10": {"epochs": 10}, "hyper:head=linear": {"head": "linear"}}


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def moves_for(testbed: str) -> dict[str, Recipe]:
    data = load_testbed(testbed)
    out = {"naive": Recipe()}
    for block, change in STARTERS.items():
        if block == "hyper":
            continue
        if block == "symmetric" and data.kind != "pairwise":
            continue
        if block == "consistency" and not choice_set(data.train_unlabel, data.test):
            continue
        out[block] = replace(Recipe(), **change)
    out.update({name: replace(Recipe(), **change) for name, change in HYPER_MOVES.items()})
    return out


def run_recipe(recipe: Recipe, exp: Experiment, seeds: list[int], folder: Path) -> list[np.ndarray]:
    path = folder / f"recipe_{recipe.key}.py"
    path.write_text(recipe.render())
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [np.asarray(module.run(method_context(exp, s)))[:, 1] for s in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbeds", default=",".join(BUILDERS))
    ap.add_argument("--seeds", default="1-3")
    a = ap.parse_args()
    try:
        seeds = parse_seeds(a.seeds)
    except ValueError:
        ap.error(f"--seeds {a.seeds!r}: give a range (1-3) or a comma-separated list (1,2)")
    unknown = [tb for tb in a.testbeds.split(",") if tb not in BUILDERS]
    if unknown:
        ap.error(f"unknown testbed(s) {', '.join(unknown)} (built in: {', '.join(BUILDERS)})")
    folder = Path(tempfile.mkdtemp(prefix="w2s-loto-"))
    effects: dict[str, dict[str, float]] = {}  # testbed -> move -> effect
    print("| testbed | move | dev+board PGR | effect vs naive [95% paired interval] | seconds |")
    print("|---|---|---|---|---|")
    for tb in a.testbeds.split(","):
        exp = Experiment.create(tb)
        labels = load_testbed(tb).test.labels
        dev, board, _sealed = split_rows(len(labels), testbed_fingerprint(tb))
        rows = np.sort(np.concatenate([dev, board]))
        weak = correct_matrix([weak_artifacts(exp, s)["test_probs"] for s in seeds], labels, rows)
        ceil = correct_matrix([ceiling(exp, s)["test_probs"] for s in seeds], labels, rows)
        base = None
        effects[tb] = {}
        for name, recipe in moves_for(tb).items():
            t0 = time.perf_counter()
            right = correct_matrix(run_recipe(recipe, exp, seeds, folder), labels, rows)
            if base is None:
                base = right
            d = pgr_diff_interval(right, base, weak, ceil, n_boot=2000, seed=0)
            effects[tb][name] = d.diff
            print(f"| {tb} | {name} | {d.pgr_a:+.2f} | {d.diff:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] | {time.perf_counter() - t0:.0f} |",
                  flush=True)

    print("\nLeave one testbed out: the rule decides from the other testbeds, the held-out one is scored.")
    print("| held out | blocks kept (mean effect there) | blocks dropped (mean effect there) | hyper move chosen (effect there) |")
    print("|---|---|---|---|")
    for held in effects:
        others = [tb for tb in effects if tb != held]
        kept, dropped = [], []
        for move, effect in effects[held].items():
            if move == "naive" or move.startswith("hyper:"):
                continue
            elsewhere = [effects[tb][move] for tb in others if move in effects[tb]]
            (kept if not elsewhere or statistics.mean(elsewhere) >= 0 else dropped).append((move, effect))
        hyper = max(HYPER_MOVES, key=lambda m: statistics.mean(effects[tb][m] for tb in others))

        def fmt(items: list[tuple[str, float]]) -> str:
            if not items:
                return "none"
            return ", ".join(f"{m} {e:+.2f}" for m, e in items) + f" (mean {statistics.mean(e for _, e in items):+.2f})"
        print(f"| {held} | {fmt(kept)} | {fmt(dropped)} | {hyper} {effects[held][hyper]:+.2f} |")


if __name__ == "__main__":
    sys.exit(main())
