"""``probe`` backend: a frozen offline text encoder plus a small torch head (CPU).

Row features: pairwise rows -> ``e(prompt+first) - e(prompt+second)`` (a preference is
a difference); correctness rows -> ``[e(q), e(c), e(q) * e(c)]`` (the head must see
how the choice relates to the question).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from w2slab.models.base import BackendConfig, LossFn, as_soft_targets, soft_xent
from w2slab.models.encoders import EmbeddingCache
from w2slab.testbeds.format import Split


def row_texts(data: Split) -> tuple[list[str], list[str]]:
    if data.kind == "pairwise":
        return (
            [f"{r['prompt']}\n{r['first']}" for r in data.rows],
            [f"{r['prompt']}\n{r['second']}" for r in data.rows],
        )
    return [r["question"] for r in data.rows], [r["choice"] for r in data.rows]


FEATURE_MEMO = 8  # the features of this many recent row sets are kept per process
_features: OrderedDict[tuple, np.ndarray] = OrderedDict()


def encode_rows(encoder: str, data: Split) -> np.ndarray:
    """The rows' features (a fresh array). A recipe fits several students on the same rows, so
    the features of the last few row sets are kept in memory instead of hashing every text
    and reading the embedding cache again."""
    left, right = row_texts(data)
    key = (encoder, data.kind, tuple(left), tuple(right))
    x = _features.get(key)
    if x is None:
        both = EmbeddingCache(encoder).encode(left + right)
        a, b = both[: len(left)], both[len(left) :]
        x = a - b if data.kind == "pairwise" else np.concatenate([a, b, a * b], axis=1)
        _features[key] = x
        while len(_features) > max(0, FEATURE_MEMO):
            _features.popitem(last=False)
    else:
        _features.move_to_end(key)
    return x.copy()


def batch_plan(n: int, cfg: BackendConfig) -> tuple[int, float]:
    """Batch size and learning rate for ``n`` training rows.

    ``batch_size`` and ``lr`` as configured, unless an epoch would take more than
    ``max_steps_per_epoch`` steps: then the batch grows to ``ceil(n / max_steps_per_epoch)``
    and the learning rate by the square root of the growth (Adam's usual scaling). The head is
    a small model on frozen features whose cost is mostly per-step overhead, so this cuts a
    student's steps 3x (1,496 rows) to 6x (3,000 rows), while the built-in testbeds' ceiling and
    naive-student accuracies move by at most 0.002 (benchmarks/README.md, section
    ``offline_experiment_speed.py``). The 500-row weak teachers (8 steps of 64) are unchanged.
    """
    if cfg.max_steps_per_epoch is None or n <= cfg.batch_size * cfg.max_steps_per_epoch:
        return cfg.batch_size, cfg.lr
    batch = -(-n // cfg.max_steps_per_epoch)
    return batch, cfg.lr * math.sqrt(batch / cfg.batch_size)


def principal_directions(x: torch.Tensor, rank: int) -> torch.Tensor:
    """The top ``rank`` principal directions (columns, unit length) of centred rows ``x``, with a
    deterministic sign (each column's largest entry positive)."""
    cov = (x.T @ x).double() / max(1, len(x) - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vecs[:, -rank:].flip(1)
    top = top * torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
    return top.to(x.dtype).contiguous()


def train_head_torch(head: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, loss: LossFn,
                     gen: torch.Generator, epochs: int, batch_size: int, lr: float, weight_decay: float, warmup: float,
                     fused: bool = False) -> None:
    """The head's training before it was written out by hand: ``torch.optim.AdamW`` stepped by
    ``LambdaLR``. With ``fused=True`` it is the reference :func:`train_head` matches bit for bit
    (tests); with the default single-tensor optimiser, the speed benchmark's ``legacy`` mode."""
    n = len(x)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    total = epochs * max(1, -(-n // batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup * total)) * max(0.0, 1 - s / total))
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            value = loss(head(x[idx]), y[idx], w[idx], step / total)
            opt.zero_grad()
            value.backward()
            opt.step()
            sched.step()
            step += 1


def train_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, loss: LossFn,
               gen: torch.Generator, epochs: int, batch_size: int, lr: float, weight_decay: float, warmup: float) -> None:
    """Mini-batch AdamW with linear warm-up and linear decay, written out by hand.

    The arithmetic of ``torch.optim.AdamW(fused=True)`` (torch's fused kernel, betas 0.9/0.999,
    eps 1e-8) stepped by ``LambdaLR(min(1, (s + 1) / (warmup * total)) * (1 - s / total))``, so
    results are bit-for-bit those of the torch optimiser (tests/test_research_offline.py checks it),
    but without its per-step bookkeeping and without the ``torch._dynamo`` import that constructing
    any ``torch.optim`` optimiser triggers (2-3 s of start-up in every experiment process). The fused
    kernel updates all parameters in one call: 0.5 s of a 15 s tweets-claims experiment, where the
    single-tensor arithmetic took 1.4 s (benchmarks/offline_experiment_speed.py). ``PROBE_TRAINING``
    in the probe's cache keys marks the change (results moved by float rounding only).
    """
    n = len(x)
    params = [p for p in head.parameters() if p.requires_grad]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros(()) for _ in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    total = epochs * max(1, -(-n // batch_size))
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]  # index_select: the rows of x[idx], several times faster
            value = loss(head(x.index_select(0, idx)), y.index_select(0, idx), w.index_select(0, idx), step / total)
            for p in params:
                p.grad = None
            value.backward()
            rate = lr * min(1.0, (step + 1) / max(1, warmup * total)) * max(0.0, 1 - step / total)
            live = [i for i, p in enumerate(params) if p.grad is not None]
            with torch.no_grad():
                group = [[lst[i] for i in live] for lst in (params, exp_avg, exp_avg_sq, steps)]
                torch._foreach_add_(group[3], 1)
                torch._fused_adamw_(group[0], [p.grad for p in group[0]], group[1], group[2], [], group[3], lr=rate,
                                    beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)
            step += 1


class ProbeBackend:
    def __init__(self, config: BackendConfig):
        self.config = config
        self.head: nn.Module | None = None
        self._mean: torch.Tensor | None = None
        self._std: torch.Tensor | None = None
        self._basis: torch.Tensor | None = None  # (features, rank) when config.rank is set

    def features(self, data: Split) -> np.ndarray:
        return encode_rows(self.config.model, data)

    def _make_head(self, dim: int) -> nn.Module:
        if self.config.head == "linear":
            return nn.Linear(dim, 2)
        if self.config.head == "mlp":
            h = self.config.hidden
            return nn.Sequential(nn.Linear(dim, h), nn.ReLU(), nn.Dropout(0.1), nn.Linear(h, 2))
        raise ValueError(f"unknown probe head '{self.config.head}' (known: linear, mlp)")

    def fit(
        self,
        data: Split,
        targets: np.ndarray,
        weights: np.ndarray | None = None,
        loss: LossFn = soft_xent,
        seed: int = 0,
    ) -> "ProbeBackend":
        cfg = self.config
        n = len(data) if cfg.n_train is None else min(cfg.n_train, len(data))
        x = torch.from_numpy(self.features(data)[:n])
        y = torch.from_numpy(as_soft_targets(targets)[:n])
        w = torch.ones(n) if weights is None else torch.as_tensor(np.asarray(weights)[:n], dtype=torch.float32)
        if len(x) != len(y) or len(w) != len(x):
            raise ValueError(f"{len(x)} rows but {len(y)} targets and {len(w)} weights")
        self._mean, self._std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = (x - self._mean) / self._std
        if cfg.rank is not None:
            if not 1 <= cfg.rank <= min(x.shape):
                raise ValueError(f"rank={cfg.rank}: must be between 1 and {min(x.shape)} (rows and features)")
            self._basis = principal_directions(x, cfg.rank)
            x = x @ self._basis
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.head = self._make_head(x.shape[1])
        self.head.train()
        batch, lr = batch_plan(n, cfg)
        train_head(self.head, x, y, w, loss, gen, cfg.epochs, batch, lr, cfg.weight_decay, cfg.warmup)
        self.head.eval()
        return self

    def logits(self, data: Split) -> np.ndarray:
        if self.head is None:
            raise RuntimeError("fit the backend before predicting")
        x = (torch.from_numpy(self.features(data)) - self._mean) / self._std
        if self._basis is not None:
            x = x @ self._basis
        with torch.no_grad():
            return self.head(x).numpy()

    def predict_proba(self, data: Split) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits(data)), -1).numpy()
