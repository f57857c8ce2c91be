"""Naive weak-to-strong reference: the strong student trained on the weak teacher's hard labels.

A method file, not imported by w2slab: the launcher copies it into the ``naive-baseline``
workspace and submits it as the leaderboard's reference (see :mod:`w2slab.researchers.summary`)."""

import numpy as np

from w2slab.methods import MethodContext, method


@method("naive-reference")
def run(ctx: MethodContext) -> np.ndarray:
    return ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)
