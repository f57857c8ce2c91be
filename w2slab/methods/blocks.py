"""Building blocks for W2S recipes that target why weak-to-strong transfer fails.

Each block is label-free (it sees rows, the teacher's soft labels and a student's outputs, never
ground truth) and independent of any testbed's name; the offline researcher's recipes
(:mod:`w2slab.researchers.recipes`) compose them, and a researcher's own method may import them.

- **exclusive consistency** (:func:`exclusive_scores`, :func:`calibrate_to_rate`): on
  correctness rows whose choices come from a small closed set, at most one choice answers a
  question, so a student's ``P(true | question, choice)`` over every choice of the same
  question should sum to about one. Each row is re-scored by its share of its question's
  total (rows sharing a question and the counterfactual rows with the other choices of the set
  form the group), then turned back into probabilities at the teacher's class balance. A student
  that imitates the teacher's errors says "true" to two choices of one question, or to none;
  normalising over the group forces it to decide, which is the consistency signal of unsupervised
  elicitation (Burns et al. 2022; Wen et al. 2025) applied to claims.
- **teacher-error modelling** (:func:`crossfit_proba`, :func:`agreement`): a student fitted on
  one half of the rows predicts the other half (cross-fitting), so it cannot have memorised the
  teacher's label on the row it scores; rows where it confidently disagrees with the teacher are
  probably teacher errors and are dropped or down-weighted (small-loss selection, as in
  co-teaching, without the in-sample memorisation of a student scored on its own training rows).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from w2slab.testbeds.format import Split

MAX_CHOICES = 12  # a choice set larger than this is open-ended: no counterfactual rows


def choice_set(*splits: Split, max_choices: int = MAX_CHOICES) -> list[str]:
    """The closed set of choices of correctness rows (sorted), or ``[]`` when the rows are
    pairwise, the set is open-ended (more than ``max_choices`` values) or has a single value."""
    if not splits or splits[0].kind != "correctness":
        return []
    values = sorted({r["choice"] for s in splits for r in s.rows})
    return values if 2 <= len(values) <= max_choices else []


def counterfactual_rows(split: Split, choices: list[str]) -> Split:
    """Every row's question with every choice of ``choices`` (row-major: row ``i``, choice ``j``
    is row ``i * len(choices) + j``); the other fields are kept."""
    rows = [dict(r, choice=c) for r in split.rows for c in choices]
    return Split(split.kind, rows, None, split.name)


def question_groups(split: Split) -> np.ndarray:
    """A group id per row: rows with the same question text share one."""
    ids: dict[str, int] = {}
    return np.asarray([ids.setdefault(r["question"], len(ids)) for r in split.rows], dtype=np.int64)


def exclusive_scores(p_true: np.ndarray, own: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Each row's share of its question's total ``P(true)``.

    ``p_true[i, j]`` is a student's ``P(true)`` for row ``i``'s question with choice ``j`` of the
    closed set, ``own[i]`` the index of row ``i``'s own choice. Rows in the same ``groups``
    entry share a question: their rows are pooled (averaged per choice) first, so two real rows
    of one question get scores that sum to at most one. Returns shares in [0, 1].
    """
    p = np.clip(np.asarray(p_true, dtype=np.float64), 1e-6, 1.0)
    if groups is not None:
        g = np.asarray(groups)
        uniq, inv = np.unique(g, return_inverse=True)
        pooled = np.zeros((len(uniq), p.shape[1]))
        np.add.at(pooled, inv, p)
        pooled /= np.bincount(inv, minlength=len(uniq))[:, None]
        p = pooled[inv]
    share = p / p.sum(1, keepdims=True)
    return share[np.arange(len(p)), np.asarray(own, dtype=np.int64)]


def calibrate_to_rate(score: np.ndarray, rate: float, sharpness: float = 4.0) -> np.ndarray:
    """Scores to ``(N, 2)`` probabilities: ``P(class 1) > 0.5`` for the top ``rate`` fraction
    (the teacher's class balance), a logistic in the score's own spread around that threshold."""
    s = np.asarray(score, dtype=np.float64)
    rate = float(np.clip(rate, 0.01, 0.99))
    threshold = np.quantile(s, 1 - rate)
    z = (s - threshold) / (s.std() + 1e-8)
    p1 = 1 / (1 + np.exp(-sharpness * z))
    return np.stack([1 - p1, p1], 1)


def exclusive_consistency(proba: Callable[[Split], np.ndarray], split: Split, choices: list[str], rate: float) -> np.ndarray | None:
    """A student's predictions on ``split`` made consistent over each question's closed choice set.

    ``proba(split)`` returns the student's ``(N, 2)`` probabilities. Returns ``(N, 2)``
    probabilities calibrated to ``rate`` (:func:`calibrate_to_rate`), or ``None`` when the rows
    have no closed choice set (pairwise rows, a single choice, open-ended answers)."""
    if not choices or split.kind != "correctness":
        return None
    index = {c: j for j, c in enumerate(choices)}
    own = np.asarray([index.get(r["choice"], -1) for r in split.rows])
    if (own < 0).any():
        return None
    p_true = proba(counterfactual_rows(split, choices))[:, 1].reshape(len(split), len(choices))
    return calibrate_to_rate(exclusive_scores(p_true, own, question_groups(split)), rate)


def crossfit_proba(fit_predict: Callable[[np.ndarray, np.ndarray, int], np.ndarray], n: int, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold probabilities: ``fit_predict(train_rows, score_rows, fold)`` fits a student on
    ``train_rows`` and returns its ``(len(score_rows), 2)`` probabilities on ``score_rows``; every
    row is scored by a student that never trained on it."""
    order = np.random.default_rng(seed).permutation(n)
    out = np.zeros((n, 2))
    for k in range(folds):
        held = np.sort(order[k::folds])
        train = np.setdiff1d(np.arange(n), held)
        out[held] = fit_predict(train, held, k)
    return out


def agreement(oof: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """How much an out-of-fold student agrees with the targets, per row: ``sum_k q_k t_k`` in
    [0, 1] (high: the teacher's label is probably right)."""
    return (np.asarray(oof) * np.asarray(targets)).sum(1)
