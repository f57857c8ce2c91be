"""The W2S pipeline: weak teacher -> weak labels -> method -> student -> PGR.

- weak: the weak model trained on ``train_label``'s ground truth; its soft labels on
  ``train_unlabel`` and ``test`` and its test accuracy (cached per seed);
- ceiling: the strong model trained on ``train_unlabel``'s ground truth (cached per seed);
- method: a plug-in trains a fresh strong student from the weak labels; its test
  probabilities give the transfer accuracy.
Every step is a :class:`Job` so executors can fan them out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from w2slab.engine import cache
from w2slab.engine.stats import accuracy
from w2slab.methods import MethodContext, bind_params, get_method
from w2slab.models.base import BackendConfig, make_backend
from w2slab.testbeds import get_testbed, load_testbed, testbed_fingerprint


@dataclass(frozen=True)
class Experiment:
    """A testbed with its weak and strong model configs."""

    testbed: str
    weak: BackendConfig
    strong: BackendConfig

    @classmethod
    def create(cls, testbed: str, weak: str | None = None, strong: str | None = None) -> "Experiment":
        """Testbed defaults, with optional overrides such as ``"model=glove-50"`` or ``"lm:model=/path"``."""
        spec = get_testbed(testbed)
        weak_cfg = BackendConfig.parse(spec.weak)
        strong_cfg = BackendConfig.parse(spec.strong)
        return cls(
            spec.name,
            BackendConfig.parse(weak, base=weak_cfg) if weak else weak_cfg,
            BackendConfig.parse(strong, base=strong_cfg) if strong else strong_cfg,
        )

    def key(self, role: Literal["weak", "ceiling"], seed: int) -> str:
        cfg = self.weak if role == "weak" else self.strong
        return cache.cache_key(role=role, data=testbed_fingerprint(self.testbed), model=cfg.cache_dict(), seed=seed)


def weak_artifacts(exp: Experiment, seed: int) -> dict[str, Any]:
    """Train the weak teacher on ground truth; its soft labels and test accuracy (cached)."""
    key = exp.key("weak", seed)
    hit = cache.load("weak", key)
    if hit is None:
        data = load_testbed(exp.testbed)
        teacher = make_backend(exp.weak).fit(data.train_label, data.train_label.labels, seed=seed)
        hit = {"train_probs": teacher.predict_proba(data.train_unlabel), "test_probs": teacher.predict_proba(data.test)}
        cache.store("weak", key, hit)
    data = load_testbed(exp.testbed)
    return {**hit, "test_acc": accuracy(hit["test_probs"], data.test.labels)}


def ceiling(exp: Experiment, seed: int) -> dict[str, Any]:
    """Train the strong model on train_unlabel's ground truth; its test accuracy (cached)."""
    key = exp.key("ceiling", seed)
    hit = cache.load("ceiling", key)
    data = load_testbed(exp.testbed)
    if hit is None:
        strong = make_backend(exp.strong).fit(data.train_unlabel, data.train_unlabel.labels, seed=seed)
        hit = {"test_probs": strong.predict_proba(data.test)}
        cache.store("ceiling", key, hit)
    return {**hit, "test_acc": accuracy(hit["test_probs"], data.test.labels)}


def method_context(exp: Experiment, seed: int) -> MethodContext:
    """What a method sees for one seed: no labels anywhere."""
    data = load_testbed(exp.testbed)
    weak = weak_artifacts(exp, seed)
    return MethodContext(
        train=data.train_unlabel.without_labels(),
        weak_probs=weak["train_probs"],
        test=data.test.without_labels(),
        strong=exp.strong,
        seed=seed,
        weak_test_probs=weak["test_probs"],
    )


def check_predictions(probs: Any, n: int) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.shape != (n, 2):
        raise ValueError(f"method returned shape {arr.shape}, expected ({n}, 2) test probabilities")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError("method returned NaN, infinite or negative probabilities")
    return arr / arr.sum(1, keepdims=True).clip(1e-12)


def run_method(exp: Experiment, method_ref: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    fn = get_method(method_ref)
    bound = bind_params(fn, params)
    ctx = method_context(exp, seed)
    start = time.perf_counter()
    probs = check_predictions(fn(ctx, **bound), len(ctx.test))
    data = load_testbed(exp.testbed)
    return {
        "test_probs": probs,
        "transfer_acc": accuracy(probs, data.test.labels),
        "seconds": time.perf_counter() - start,
        "params": bound,
        "notes": ctx.notes,
    }


@dataclass(frozen=True)
class Job:
    """One unit of work for an executor: a weak teacher, a ceiling or a method at one seed."""

    kind: Literal["weak", "ceiling", "method"]
    exp: Experiment
    seed: int
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    uses_gpu: bool = False

    @property
    def label(self) -> str:
        what = self.method if self.kind == "method" else self.kind
        return f"{what} seed {self.seed}"


def execute(job: Job) -> dict[str, Any]:
    if job.kind == "weak":
        return weak_artifacts(job.exp, job.seed)
    if job.kind == "ceiling":
        return ceiling(job.exp, job.seed)
    assert job.method is not None
    return run_method(job.exp, job.method, job.params, job.seed)


def resolve_method_ref(ref: str) -> str:
    """File references become absolute so worker processes find them."""
    path, sep, name = ref.partition(".py:")
    if ref.endswith(".py") or sep:
        p = Path(f"{path}.py" if sep else ref).resolve()
        return f"{p}:{name}" if sep else str(p)
    return ref
