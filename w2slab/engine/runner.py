"""High-level runs: baselines over seeds, and a method over seeds with its PGR and a paired
bootstrap interval over test rows and seeds."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from w2slab.engine.pipeline import Experiment, Job, resolve_method_ref
from w2slab.engine.stats import CI_METHOD, PGRInterval, correct_matrix, pgr_interval
from w2slab.executors import run_jobs
from w2slab.testbeds import load_testbed


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=quiet, transient=False
    )


def prepare_features(exp: Experiment, quiet: bool = False) -> None:
    """Encode every split once, in this process, before workers fan out (probe backends)."""
    from w2slab.models.encoders import EmbeddingCache
    from w2slab.models.probe import row_texts

    data = load_testbed(exp.testbed)
    encoders = {cfg.model for cfg in (exp.weak, exp.strong) if cfg.kind == "probe"}
    texts: list[str] = []
    for split in (data.train_label, data.train_unlabel, data.test):
        left, right = row_texts(split)
        texts += left + right
    with _progress(quiet) as bar:
        for name in sorted(encoders):
            task = bar.add_task(f"embedding with {name}", total=len(set(texts)))
            EmbeddingCache(name).encode(texts, on_progress=lambda n, t=task: bar.advance(t, n))
            bar.update(task, completed=len(set(texts)))


def _run(jobs: list[Job], description: str, executor: str, workers: int | None, quiet: bool) -> list[dict[str, Any]]:
    with _progress(quiet) as bar:
        task = bar.add_task(description, total=len(jobs))
        return run_jobs(jobs, executor, workers, on_done=lambda job, res: bar.advance(task))


@dataclass
class Baselines:
    seeds: list[int]
    weak_acc: list[float]
    ceiling_acc: list[float]
    weak_probs: list[np.ndarray] = field(default_factory=list, repr=False)  # (n_test, 2) per seed
    ceiling_probs: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def gap(self) -> float:
        return float(np.mean(self.ceiling_acc) - np.mean(self.weak_acc))

    def disagreement(self) -> float:
        """Fraction of test rows where weak and ceiling predict differently (mean over seeds)."""
        pairs = zip(self.weak_probs, self.ceiling_probs)
        return float(np.mean([(np.argmax(w, 1) != np.argmax(c, 1)).mean() for w, c in pairs]))


def cached_baselines(exp: Experiment, seeds: Sequence[int]) -> Baselines | None:
    """The baselines if every seed is already in the cache (no training), else None."""
    from w2slab.engine import cache
    from w2slab.engine.stats import accuracy

    labels = load_testbed(exp.testbed).test.labels
    accs: dict[str, list[float]] = {"weak": [], "ceiling": []}
    probs: dict[str, list[np.ndarray]] = {"weak": [], "ceiling": []}
    for role in accs:
        for s in seeds:
            hit = cache.load(role, exp.key(role, s))  # type: ignore[arg-type]
            if hit is None:
                return None
            accs[role].append(accuracy(hit["test_probs"], labels))
            probs[role].append(hit["test_probs"])
    return Baselines(list(seeds), accs["weak"], accs["ceiling"], probs["weak"], probs["ceiling"])


def compute_baselines(
    exp: Experiment, seeds: Sequence[int], executor: str = "local", workers: int | None = None, quiet: bool = False
) -> Baselines:
    prepare_features(exp, quiet)
    gpu = "lm" in (exp.weak.kind, exp.strong.kind)
    jobs = [Job(kind, exp, s, uses_gpu=gpu) for kind in ("weak", "ceiling") for s in seeds]
    out = _run(jobs, f"baselines on {exp.testbed}", executor, workers, quiet)
    n = len(seeds)
    weak, ceil = out[:n], out[n:]
    return Baselines(
        list(seeds), [r["test_acc"] for r in weak], [r["test_acc"] for r in ceil],
        [r["test_probs"] for r in weak], [r["test_probs"] for r in ceil],
    )


@dataclass
class RunResult:
    testbed: str
    method: str
    params: dict[str, Any]
    seeds: list[int]
    summary: PGRInterval  # PGR on the full test set, paired bootstrap over test rows and seeds
    per_seed: list[dict[str, Any]]
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "testbed": self.testbed,
            "method": self.method,
            "params": self.params,
            "seeds": self.seeds,
            "summary": summary_json(self.summary),
            "per_seed": self.per_seed,
            "config": self.config,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def run_method_over_seeds(
    exp: Experiment,
    method: str,
    seeds: Sequence[int],
    params: dict[str, Any] | None = None,
    executor: str = "local",
    workers: int | None = None,
    quiet: bool = False,
) -> RunResult:
    base = compute_baselines(exp, seeds, executor, workers, quiet)
    ref = resolve_method_ref(method)
    jobs = [Job("method", exp, s, ref, dict(params or {}), uses_gpu=exp.strong.kind == "lm") for s in seeds]
    out = _run(jobs, f"{method} on {exp.testbed}", executor, workers, quiet)
    labels = load_testbed(exp.testbed).test.labels
    summary = pgr_interval(
        correct_matrix([r["test_probs"] for r in out], labels),
        correct_matrix(base.weak_probs, labels),
        correct_matrix(base.ceiling_probs, labels),
    )
    per_seed = [
        {
            "seed": s,
            "weak_acc": w,
            "ceiling_acc": c,
            "transfer_acc": r["transfer_acc"],
            "pgr": p,
            "seconds": r["seconds"],
            "notes": r["notes"],
            "test_probs_p1": [round(float(x), 6) for x in r["test_probs"][:, 1]],
        }
        for s, w, c, r, p in zip(seeds, base.weak_acc, base.ceiling_acc, out, summary.per_seed_pgr)
    ]
    config = {"weak": exp.weak.to_dict(), "strong": exp.strong.to_dict()}
    return RunResult(exp.testbed, method, out[0]["params"], list(seeds), summary, per_seed, config)


def summary_json(iv: PGRInterval) -> dict[str, Any]:
    """A run's summary for JSON: the point PGR, its row x seed interval and what it rests on."""
    d = iv.to_dict()
    out = {
        "pgr": d["pgr"],
        "pgr_ci": [d["lo"], d["hi"]],
        "pgr_se": d["se"],
        "ci_level": iv.level,
        "ci_method": CI_METHOD,
        **{k: d[k] for k in ("weak_acc", "ceiling_acc", "transfer_acc", "per_seed_pgr", "n_rows", "n_seeds", "n_boot", "n_dropped")},
    }
    if iv.note:
        out["note"] = iv.note
    return out


def write_result(result: RunResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return path
