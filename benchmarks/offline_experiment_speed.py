"""Time one offline-researcher experiment (``w2slab predict`` of a recipe on a kit's dev seeds, in
a fresh Python process, as in the sandbox) with the old and the new student training side by side.

    python benchmarks/offline_experiment_speed.py --testbed tweets-pairs --seeds 1,2 --repeats 3
    python benchmarks/offline_experiment_speed.py --testbed tweets-pairs --recipe '{"rounds": 1, "ensemble": 2}'

Modes, run interleaved (one of each per repeat, so they share the machine's load):

- ``legacy``: the probe head's training as it was (``torch.optim.AdamW`` + ``LambdaLR``, batches of 64);
- ``exact``: :func:`w2slab.models.probe.train_head` with batches of 64: the same arithmetic by
  hand (bit-for-bit the same predictions) without the ``torch._dynamo`` import that any
  ``torch.optim`` optimiser triggers and without the optimiser's per-step bookkeeping;
- ``new``: the default now: ``train_head`` plus :func:`w2slab.models.probe.batch_plan` (at most
  ``max_steps_per_epoch`` = 8 steps an epoch, learning rate scaled by the square root of the batch growth).

It prints seconds per experiment (median and best), experiments per hour, whether ``exact`` gives
the very predictions of ``legacy``, and each mode's test accuracy per seed (read from the
testbed's labels here, in the benchmark only: what the change could alter is the measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("legacy", "exact", "new")


def child(mode: str, kit: str, recipe: str, seeds: list[int], out: str) -> None:
    """One experiment, as the sandbox runs it (this process's wall time is what the parent measures)."""
    from w2slab.engine.kit import predict
    from w2slab.models import probe

    if mode in ("legacy", "exact"):
        probe.batch_plan = lambda n, cfg: (cfg.batch_size, cfg.lr)
    if mode == "legacy":
        probe.train_head = probe.train_head_torch
    Path(out).write_text(json.dumps(predict(kit, recipe, seeds)["predictions"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", default="tweets-pairs")
    ap.add_argument("--seeds", default="1,2", help="the experiment's dev seeds (the offline researcher uses two)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recipe", default="{}", help="recipe fields as JSON (default: the naive recipe)")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per experiment (the sandbox's default: 1)")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--kit", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.child:
        child(a.child, a.kit, a.method, seeds, a.out)
        return

    from w2slab.engine.kit import export_kit
    from w2slab.engine.pipeline import Experiment
    from w2slab.researchers.recipes import Recipe
    from w2slab.testbeds import load_testbed

    recipe = Recipe.from_dict(json.loads(a.recipe))
    tmp = Path(tempfile.mkdtemp(prefix="w2s-speed-"))
    exp = Experiment.create(a.testbed)
    kit = export_kit(exp, seeds, tmp / "kit")
    method = tmp / f"recipe_{recipe.key}.py"
    method.write_text(recipe.render())
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    times: dict[str, list[float]] = {m: [] for m in MODES}
    preds: dict[str, dict[str, list[float]]] = {}
    for r in range(a.repeats):
        for mode in MODES:
            out = tmp / f"{mode}.json"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--child", mode, "--kit", str(kit), "--method", str(method),
                            "--seeds", a.seeds, "--out", str(out)], check=True, env=env)
            times[mode].append(time.perf_counter() - t0)
            preds[mode] = json.loads(out.read_text())
            print(f"repeat {r + 1} {mode}: {times[mode][-1]:.2f} s", flush=True)

    labels = load_testbed(exp.testbed).test.labels
    print(f"\n{a.testbed}, recipe: {recipe.describe()}; seeds {seeds}; {a.threads} thread(s); "
          f"{a.repeats} repeats; load average {os.getloadavg()[0]:.1f} at the end")
    print("| mode | median s / experiment | best s | experiments / hour (median) | speed-up vs legacy | test acc per seed |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(times["legacy"])
    for mode in MODES:
        med = statistics.median(times[mode])
        accs = ", ".join(f"{float(((np.asarray(preds[mode][str(s)]) > 0.5) == labels).mean()):.4f}" for s in seeds)
        print(f"| {mode} | {med:.2f} | {min(times[mode]):.2f} | {3600 / med:.0f} | {base / med:.2f}x | {accs} |")
    same = all(preds["legacy"][str(s)] == preds["exact"][str(s)] for s in seeds)
    agree = np.mean([np.mean((np.asarray(preds["legacy"][str(s)]) > 0.5) == (np.asarray(preds["new"][str(s)]) > 0.5))
                     for s in seeds])
    print(f"\nexact == legacy predictions: {same}; new vs legacy: same hard prediction on {agree:.3f} of test rows")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
