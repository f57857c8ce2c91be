"""The method contract: :class:`MethodContext`, the ``@method`` decorator and the registry it
fills. Re-exported by :mod:`w2slab.methods`; the built-in methods import it from here, so the
package can load them without an import circle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from w2slab.models.base import Backend, BackendConfig
from w2slab.models.factory import make_backend
from w2slab.testbeds.format import Split

MethodFn = Callable[..., np.ndarray]
REGISTRY: dict[str, MethodFn] = {}


class MethodError(ValueError):
    """A user-facing problem with a method name, file or parameters."""


@dataclass
class MethodContext:
    """What a method may see: unlabeled rows, the teacher's soft labels, a student factory."""

    train: Split  # train_unlabel rows, labels hidden
    weak_probs: np.ndarray  # (N_train, 2) the weak teacher's soft labels on `train`
    test: Split  # test rows, labels hidden
    strong: BackendConfig
    seed: int
    weak_test_probs: np.ndarray | None = None  # (N_test, 2) the teacher on `test`
    notes: dict[str, Any] = field(default_factory=dict)  # metrics a method wants reported

    def new_student(self, **overrides: Any) -> Backend:
        """A fresh, untrained strong model (optionally with config overrides)."""
        return make_backend(BackendConfig.parse(overrides, base=self.strong) if overrides else self.strong)

    @property
    def weak_hard(self) -> np.ndarray:
        return self.weak_probs.argmax(1)


def method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Register a method under ``name``."""

    def register(fn: MethodFn) -> MethodFn:
        fn.method_name = name  # type: ignore[attr-defined]
        REGISTRY[name] = fn
        return fn

    return register
