"""Time one offline-researcher experiment (``w2slab predict`` of a recipe on a kit's dev seeds, in
a fresh Python process, as in the sandbox) with the old and the new student training side by side.

    python benchmarks/offline_experiment_speed.py --testbed tweets-pairs --seeds 1,2 --repeats 3
    python benchmarks/offline_experiment_speed.py --testbed tweets-pairs --recipe '{"rounds": 1, "ensemble": 2}'

Modes, run interleaved (one of each per repeat, so they share the machine's load):

- ``legacy``: the probe head's training as it was (``torch.optim.AdamW`` + ``LambdaLR``, batches of 64,
  features read from the embedding cache at every fit);
- ``exact``: :func:`w2slab.models.probe.train_head` with batches of 64: AdamW by hand on torch's
  fused kernel (the same maths up to float rounding; bit-for-bit ``torch.optim.AdamW(fused=True)``)
  without the ``torch._dynamo`` import that any ``torch.optim`` optimiser triggers and without the
  optimiser's per-step bookkeeping;
- ``new``: ``train_head`` plus :func:`w2slab.models.probe.batch_plan` (at most
  ``max_steps_per_epoch`` = 8 steps an epoch, learning rate scaled by the square root of the batch
  growth), in a fresh process;
- ``warm``: the default now: the same code run as the offline researcher runs it, in a child forked
  by a warm process (:class:`w2slab.researchers.sandbox.WarmSandbox`, here without bubblewrap like
  the other modes) that has imported torch and w2slab and read the kit's features once; the warm
  process is started (and its start time printed) before the timed repeats.

It prints seconds per experiment (median and best), experiments per hour, how often ``exact`` and
``new`` agree with ``legacy``'s hard predictions, whether ``warm`` gives the very predictions of
``new``, and each mode's test accuracy per seed (read from the
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

MODES = ("legacy", "exact", "new", "warm")
COLD = MODES[:3]


def child(mode: str, kit: str, recipe: str, seeds: list[int], out: str) -> None:
    """One experiment, as the sandbox runs it (this process's wall time is what the parent measures)."""
    from w2slab.engine.kit import predict
    from w2slab.models import probe

    if mode in ("legacy", "exact"):
        probe.batch_plan = lambda n, cfg: (cfg.batch_size, cfg.lr)
        probe.FEATURE_MEMO = 0  # every fit reads its features from the embedding cache, as before
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
    ap.add_argument("--child", choices=COLD, help=argparse.SUPPRESS)
    ap.add_argument("--kit", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.child:
        child(a.child, a.kit, a.method, seeds, a.out)
        return

    from w2slab import paths
    from w2slab.engine.kit import export_kit
    from w2slab.engine.pipeline import Experiment
    from w2slab.researchers.recipes import Recipe
    from w2slab.researchers.sandbox import SandboxSpec, WarmSandbox
    from w2slab.testbeds import load_testbed

    recipe = Recipe.from_dict(json.loads(a.recipe))
    tmp = Path(tempfile.mkdtemp(prefix="w2s-speed-"))
    exp = Experiment.create(a.testbed)
    kit = export_kit(exp, seeds, tmp / "kit")
    method = tmp / f"recipe_{recipe.key}.py"
    method.write_text(recipe.render())
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    threads = {"OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    warm = WarmSandbox(SandboxSpec(workspace=tmp / "ws", env=dict(threads, W2SLAB_HOME=str(paths.home()))),
                       sandboxed=False, kit=kit)
    warm_args = ["predict", "--kit", str(kit), "-m", str(method), "--seeds", a.seeds, "-o"]
    t0 = time.perf_counter()
    first = warm.run([*warm_args, str(tmp / "warmup.json")])
    if first is None or not first.ok:
        raise SystemExit(f"the warm process did not run: {first and first.stderr}")
    print(f"warm process started and ran a first experiment in {time.perf_counter() - t0:.2f} s", flush=True)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    preds: dict[str, dict[str, list[float]]] = {}
    for r in range(a.repeats):
        for mode in MODES:
            out = tmp / f"{mode}.json"
            t0 = time.perf_counter()
            if mode == "warm":
                res = warm.run([*warm_args, str(out)])
                if res is None or not res.ok:
                    raise SystemExit(f"warm run failed: {res and res.stderr}")
            else:
                subprocess.run([sys.executable, __file__, "--child", mode, "--kit", str(kit), "--method", str(method),
                                "--seeds", a.seeds, "--out", str(out)], check=True, env=env)
            times[mode].append(time.perf_counter() - t0)
            data = json.loads(out.read_text())
            preds[mode] = data["predictions"] if mode == "warm" else data
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
    warm.close()
    same_warm = all(preds["new"][str(s)] == preds["warm"][str(s)] for s in seeds)

    def agree(mode: str) -> float:
        return float(np.mean([np.mean((np.asarray(preds["legacy"][str(s)]) > 0.5) == (np.asarray(preds[mode][str(s)]) > 0.5))
                              for s in seeds]))
    print(f"\nwarm == new predictions: {same_warm}; same hard prediction as legacy on {agree('exact'):.3f} (exact) "
          f"and {agree('new'):.3f} (new) of test rows")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
