"""``probe`` backend: a frozen offline text encoder plus a small torch head (CPU).

Row features: pairwise rows -> ``e(prompt+first) - e(prompt+second)`` (a preference is
a difference); correctness rows -> ``[e(q), e(c), e(q) * e(c)]`` (the head must see
how the choice relates to the question).
"""

from __future__ import annotations

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


def encode_rows(encoder: str, data: Split) -> np.ndarray:
    left, right = row_texts(data)
    both = EmbeddingCache(encoder).encode(left + right)
    a, b = both[: len(left)], both[len(left) :]
    if data.kind == "pairwise":
        return a - b
    return np.concatenate([a, b, a * b], axis=1)


class ProbeBackend:
    def __init__(self, config: BackendConfig):
        self.config = config
        self.head: nn.Module | None = None
        self._mean: torch.Tensor | None = None
        self._std: torch.Tensor | None = None

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
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.head = self._make_head(x.shape[1])
        opt = torch.optim.AdamW(self.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, -(-n // cfg.batch_size))
        total = cfg.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup * total)) * max(0.0, 1 - s / total)
        )
        self.head.train()
        step = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                value = loss(self.head(x[idx]), y[idx], w[idx], step / total)
                opt.zero_grad()
                value.backward()
                opt.step()
                sched.step()
                step += 1
        self.head.eval()
        return self

    def logits(self, data: Split) -> np.ndarray:
        if self.head is None:
            raise RuntimeError("fit the backend before predicting")
        x = (torch.from_numpy(self.features(data)) - self._mean) / self._std
        with torch.no_grad():
            return self.head(x).numpy()

    def predict_proba(self, data: Split) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits(data)), -1).numpy()
