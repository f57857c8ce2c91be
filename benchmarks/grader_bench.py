"""What the grader benchmarks share: the toy testbed and models they serve, and the ``w2slab``
package of another git revision for ``--compare`` (imported by path from this folder, so it
imports nothing from ``w2slab`` at module level: a child may run another revision's package)."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=glove-50,head=mlp,epochs=10"
WORDS = "good great bad awful movie plot actor story fun boring weak strong student teacher label noise".split()


def make_testbed(folder: Path, n_test: int) -> Path:
    """A small deterministic pairwise testbed (same bytes each run, so baselines come from the cache)."""
    from w2slab.testbeds.format import write_jsonl  # the package the running process serves (see module doc)

    rng = random.Random(7)
    for split, n in (("train_label", 60), ("train_unlabel", 240), ("test", n_test)):
        rows = []
        for _ in range(n):
            pos = rng.random() < 0.5
            good, bad = " ".join(rng.choices(WORDS[:2] + WORDS[4:8], k=7)), " ".join(rng.choices(WORDS[2:8], k=7))
            rows.append({"prompt": "Which is more positive?", "first": good if pos else bad,
                         "second": bad if pos else good, "label": "A" if pos else "B"})
        write_jsonl(folder / f"{split}.jsonl", rows)
    return folder


def extract(ref: str, dest: Path) -> Path:
    """``w2slab/`` of git revision ``ref`` under ``dest`` (read-only use of the repository)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "w2slab"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def package_env(package: Path | None) -> dict[str, str]:
    """This process's environment, with ``package`` (a folder holding a ``w2slab``) first on the path."""
    env = dict(os.environ)
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(package), *filter(None, [env.get("PYTHONPATH")])])
    return env
