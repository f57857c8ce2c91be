"""The model-backend contract shared by the ``probe`` (CPU) and ``lm`` (GPU) backends.

A backend is a binary classifier over testbed rows, trained in torch, so every loss
works on both. Targets are soft ``(N, 2)`` class distributions (hard labels are one-hot);
a loss sees the student's logits for a batch, the targets, per-example weights and the
training progress in [0, 1] — enough for confidence losses such as Burns et al.'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from w2slab.testbeds.format import Split

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
"""loss(logits[B,2], targets[B,2], weights[B], progress) -> scalar."""


def soft_xent(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, progress: float) -> torch.Tensor:
    """Weighted cross-entropy to soft targets (the default loss)."""
    per_example = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)
    return (per_example * weights).sum() / weights.sum().clamp_min(1e-8)


# the probe head's optimiser arithmetic, in its cache keys: 2 = torch's fused AdamW kernel
# (results moved by float rounding from the single-tensor arithmetic of the keys without it)
PROBE_TRAINING = 2


@dataclass(frozen=True)
class BackendConfig:
    """Everything that defines a model. Fields marked ``cache=False`` don't change results."""

    kind: str = "probe"  # probe | lm
    model: str = "minilm-l6"  # probe: encoder name; lm: hub name or local path
    head: str = "mlp"  # probe head: linear | mlp
    hidden: int = 256
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-2
    n_train: int | None = None  # fit on at most the first n rows (makes a weaker teacher)
    lora_r: int = 32
    lora_alpha: int = 32
    max_length: int = 512
    warmup: float = 0.1
    # probe heads: on a large training set the batch grows (and lr by the square root of the growth)
    # so that an epoch takes at most this many steps; None: always batch_size (see ProbeBackend.fit)
    max_steps_per_epoch: int | None = 8
    # probe heads: train on the top ``rank`` principal components of the (standardised) training
    # features only, fitted without labels (a simplicity bias: the head cannot follow the teacher's
    # errors along the many low-variance directions); None: all features
    rank: int | None = None
    grad_checkpointing: bool = True
    device: str = field(default="auto", metadata={"cache": False})

    def cache_dict(self) -> dict[str, Any]:
        """The fields that affect results, for content-addressed cache keys (``max_steps_per_epoch``
        and ``rank`` only where they act: a probe with them set; so keys from before they existed
        stay valid)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("cache", True)}
        for knob in ("max_steps_per_epoch", "rank"):  # probe-only knobs, keyed only where set
            if d.get(knob) is None or self.kind != "probe":
                d.pop(knob, None)
        if self.kind == "probe":
            d["training"] = PROBE_TRAINING
        return d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | BackendConfig, base: BackendConfig | None = None) -> BackendConfig:
        """Build from ``"probe:model=glove-50,epochs=20"`` or a dict, on top of ``base``."""
        if isinstance(spec, BackendConfig):
            return spec
        values: dict[str, Any] = dict(base.to_dict()) if base else {}
        if isinstance(spec, str):
            kind, _, rest = spec.partition(":")
            if "=" in kind:  # no kind given: "model=x,epochs=3"
                kind, rest = "", spec
            if kind and kind != values.get("kind"):
                values = dict(KIND_DEFAULTS.get(kind, {}), kind=kind)  # each kind has its own defaults
            items = [p for p in rest.split(",") if p.strip()]
            spec = {}
            for item in items:
                key, eq, val = item.partition("=")
                if not eq:
                    raise ValueError(f"bad backend option '{item}': expected key=value")
                spec[key.strip()] = val.strip()
        types = {f.name: f.type for f in fields(cls)}
        for key, val in spec.items():
            if key not in types:
                raise ValueError(f"unknown backend option '{key}' (known: {', '.join(sorted(types))})")
            values[key] = _coerce(key, val, str(types[key]))
        if values.get("kind", "probe") not in KIND_DEFAULTS:
            raise ValueError(f"unknown backend kind '{values['kind']}' (known: probe, lm)")
        if values.get("kind") == "lm" and not values.get("model"):
            raise ValueError("the lm backend needs model=<hub name or local path>")
        if values.get("rank") is not None and values.get("kind", "probe") != "probe":
            raise ValueError("rank is an option of the probe backend's head (the lm backend trains LoRA adapters)")
        return cls(**values)


def _coerce(key: str, val: Any, type_name: str) -> Any:
    if not isinstance(val, str):
        return val
    try:
        if "None" in type_name and val.lower() in ("none", "null", ""):
            return None
        if type_name.startswith("int"):
            return int(val)
        if type_name.startswith("float"):
            return float(val)
        if type_name.startswith("bool"):
            if val.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return val.lower() in ("true", "1")
    except ValueError:
        raise ValueError(f"backend option '{key}' expects {type_name}, got '{val}'") from None
    return val


KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "probe": {},
    # lm: no activation checkpointing unless a step runs out of memory (LMBackend then switches it on)
    "lm": {"model": "", "epochs": 5, "lr": 1e-4, "batch_size": 32, "weight_decay": 0.0, "grad_checkpointing": False,
           "max_steps_per_epoch": None},
}


class Backend(Protocol):
    """A trainable binary classifier over testbed rows."""

    config: BackendConfig

    def fit(
        self,
        data: Split,
        targets: np.ndarray,
        weights: np.ndarray | None = None,
        loss: LossFn = soft_xent,
        seed: int = 0,
    ) -> Backend:
        """Train on ``targets`` (``(N,)`` class indices or ``(N, 2)`` soft labels)."""
        ...

    def predict_proba(self, data: Split) -> np.ndarray:
        """Class probabilities ``(N, 2)``."""
        ...

    def features(self, data: Split) -> np.ndarray:
        """A representation ``(N, D)`` of each row (frozen features or hidden states)."""
        ...


def as_soft_targets(targets: np.ndarray) -> np.ndarray:
    """Hard class indices -> one-hot; soft ``(N, 2)`` passes through (validated)."""
    t = np.asarray(targets)
    if t.ndim == 1:
        return np.eye(2, dtype=np.float32)[t.astype(int)]
    if t.ndim != 2 or t.shape[1] != 2:
        raise ValueError(f"targets must be (N,) class indices or (N, 2) probabilities, got shape {t.shape}")
    return t.astype(np.float32)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"
