"""High-level runs: baselines over seeds, and a method over seeds with its PGR summary."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from w2slab.engine.pipeline import Experiment, Job, resolve_method_ref
from w2slab.engine.stats import PGRSummary, summarize
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

    @property
    def gap(self) -> float:
        return float(np.mean(self.ceiling_acc) - np.mean(self.weak_acc))


def cached_baselines(exp: Experiment, seeds: Sequence[int]) -> Baselines | None:
    """The baselines if every seed is already in the cache (no training), else None."""
    from w2slab.engine import cache
    from w2slab.engine.stats import accuracy

    labels = load_testbed(exp.testbed).test.labels
    accs: dict[str, list[float]] = {"weak": [], "ceiling": []}
    for role in accs:
        for s in seeds:
            hit = cache.load(role, exp.key(role, s))  # type: ignore[arg-type]
            if hit is None:
                return None
            accs[role].append(accuracy(hit["test_probs"], labels))
    return Baselines(list(seeds), accs["weak"], accs["ceiling"])


def compute_baselines(
    exp: Experiment, seeds: Sequence[int], executor: str = "local", workers: int | None = None, quiet: bool = False
) -> Baselines:
    prepare_features(exp, quiet)
    gpu = "lm" in (exp.weak.kind, exp.strong.kind)
    jobs = [Job(kind, exp, s, uses_gpu=gpu) for kind in ("weak", "ceiling") for s in seeds]
    out = _run(jobs, f"baselines on {exp.testbed}", executor, workers, quiet)
    n = len(seeds)
    return Baselines(list(seeds), [r["test_acc"] for r in out[:n]], [r["test_acc"] for r in out[n:]])


@dataclass
class RunResult:
    testbed: str
    method: str
    params: dict[str, Any]
    seeds: list[int]
    summary: PGRSummary
    per_seed: list[dict[str, Any]]
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "testbed": self.testbed,
            "method": self.method,
            "params": self.params,
            "seeds": self.seeds,
            "summary": self.summary.to_dict(),
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
    summary = summarize([r["transfer_acc"] for r in out], base.weak_acc, base.ceiling_acc)
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


def write_result(result: RunResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return path
