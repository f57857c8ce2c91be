"""The W2S pipeline: weak teacher -> weak labels -> method -> student -> PGR.

- weak: the weak model trained on ``train_label``'s ground truth; its soft labels on
  ``train_unlabel`` and ``test`` and its test accuracy (cached per seed);
- ceiling: the strong model trained on ``train_unlabel``'s ground truth (cached per seed);
- method: a plug-in trains a fresh strong student from the weak labels; its test
  probabilities give the transfer accuracy.
Every step is a :class:`Job` so executors can fan them out.
"""

from __future__ import annotations

import inspect
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from w2slab.engine import cache
from w2slab.engine.stats import accuracy
from w2slab.methods import MethodContext, MethodError, bind_params, get_method
from w2slab.models.base import BackendConfig
from w2slab.models.factory import make_backend
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
    sums = arr.sum(1)
    off = np.abs(sums - 1.0)
    if n and off.max() > 1e-3:
        i = int(off.argmax())
        raise ValueError(f"method returned rows that are not probabilities: row {i} is ({arr[i, 0]:g}, {arr[i, 1]:g}), summing to "
                         f"{sums[i]:g}, not 1 (return [P(class 0), P(class 1)] per row, e.g. predict_proba or a softmax)")
    return arr / sums[:, None]


def call_method(fn: Any, ref: str, ctx: MethodContext, params: dict[str, Any]) -> np.ndarray:
    """``fn(ctx, **params)`` checked as test probabilities. Whatever it raises becomes a MethodError
    naming the exception type, the file and line (in the method's own file where possible) and the seed."""
    try:
        out = fn(ctx, **params)
    except Exception as e:  # noqa: BLE001 - any failure of user code is reported, with where it happened
        frames = traceback.extract_tb(e.__traceback__)
        try:
            own = inspect.getsourcefile(inspect.unwrap(fn))
        except TypeError:
            own = None
        at = next((f for f in reversed(frames) if own and f.filename == own), frames[-1] if frames else None)
        where = f" at {at.filename}:{at.lineno} (in {at.name})" if at else ""
        raise MethodError(f"method {ref} raised {type(e).__name__}: {e}{where}, seed {ctx.seed}") from None
    try:
        return check_predictions(out, len(ctx.test))
    except ValueError as e:
        raise MethodError(f"method {ref}, seed {ctx.seed}: {e}") from None


def run_method(exp: Experiment, method_ref: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    fn = get_method(method_ref)
    bound = bind_params(fn, params)
    ctx = method_context(exp, seed)
    start = time.perf_counter()
    probs = call_method(fn, method_ref, ctx, bound)
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
