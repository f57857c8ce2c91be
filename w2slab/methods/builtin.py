"""The built-in W2S methods: the known baselines, each in a few lines."""

from __future__ import annotations

import numpy as np
import torch

from w2slab.methods.core import MethodContext, method
from w2slab.models.base import LossFn


@method("naive")
def naive(ctx: MethodContext) -> np.ndarray:
    """Train the student on the teacher's hard labels."""
    return ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)


@method("soft")
def soft(ctx: MethodContext) -> np.ndarray:
    """Train the student on the teacher's soft labels (cross-entropy to probabilities)."""
    return ctx.new_student().fit(ctx.train, ctx.weak_probs, seed=ctx.seed).predict_proba(ctx.test)


def aux_confidence_loss(weak_positive_rate: float, alpha_max: float, warmup: float) -> LossFn:
    """Burns et al. (2023): mix weak soft labels with the student's own thresholded guesses.

    target = (1 - a) * weak + a * hard(student), where hard(student) thresholds the
    student's P(class 1) at the batch quantile that matches the weak labels' class
    balance, and a rises linearly from 0 to ``alpha_max`` over the first ``warmup``.
    """

    def loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, progress: float) -> torch.Tensor:
        alpha = alpha_max * min(1.0, progress / warmup) if warmup > 0 else alpha_max
        p1 = torch.softmax(logits.detach(), -1)[:, 1]
        threshold = torch.quantile(p1, 1 - weak_positive_rate)
        hard = torch.nn.functional.one_hot((p1 > threshold).long(), 2).to(targets.dtype)
        mixed = (1 - alpha) * targets + alpha * hard
        per_example = -(mixed * torch.log_softmax(logits, -1)).sum(-1)
        return (per_example * weights).sum() / weights.sum().clamp_min(1e-8)

    return loss


@method("aux-conf")
def aux_conf(ctx: MethodContext, alpha_max: float = 0.75, warmup: float = 0.2) -> np.ndarray:
    """Auxiliary confidence loss (Burns et al. 2023) with an adaptive threshold and warm-up."""
    loss = aux_confidence_loss(float(ctx.weak_probs[:, 1].mean()), alpha_max, warmup)
    return ctx.new_student().fit(ctx.train, ctx.weak_probs, loss=loss, seed=ctx.seed).predict_proba(ctx.test)


@method("confident")
def confident(ctx: MethodContext, threshold: float = 0.75) -> np.ndarray:
    """Keep only rows where the teacher is confident (max probability >= threshold)."""
    keep = np.flatnonzero(ctx.weak_probs.max(1) >= threshold)
    if len(keep) < 10:
        keep = np.argsort(-ctx.weak_probs.max(1))[:10]
    student = ctx.new_student().fit(ctx.train.subset(keep), ctx.weak_hard[keep], seed=ctx.seed)
    ctx.notes["kept_fraction"] = len(keep) / len(ctx.train)
    return student.predict_proba(ctx.test)


@method("self-train")
def self_train(ctx: MethodContext, rounds: int = 2, teacher_weight: float = 0.5) -> np.ndarray:
    """Iterative self-training: each round a fresh student learns from a mix of the
    teacher's soft labels and the previous student's hard pseudo-labels (bootstrapping)."""
    targets = ctx.weak_probs
    for r in range(rounds + 1):
        student = ctx.new_student().fit(ctx.train, targets, seed=ctx.seed + r)
        pseudo = np.eye(2)[student.predict_proba(ctx.train).argmax(1)]
        targets = teacher_weight * ctx.weak_probs + (1 - teacher_weight) * pseudo
    return student.predict_proba(ctx.test)


@method("unsupervised")
def unsupervised(ctx: MethodContext) -> np.ndarray:
    """Teacher-free control: 2-means clustering of the student's features; never reads
    the weak labels. Without a teacher nothing fixes which cluster is which class, so
    by convention the larger training cluster is class 1."""
    from sklearn.cluster import KMeans

    student = ctx.new_student()
    train_x, test_x = student.features(ctx.train), student.features(ctx.test)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    km = KMeans(2, n_init=10, random_state=ctx.seed).fit((train_x - mean) / std)
    positive = int(np.bincount(km.labels_, minlength=2).argmax())
    d = km.transform((test_x - mean) / std)  # distances to the two centroids
    logit = d[:, 1 - positive] - d[:, positive]
    p1 = 1 / (1 + np.exp(-logit / (logit.std() + 1e-6)))
    return np.stack([1 - p1, p1], 1)
