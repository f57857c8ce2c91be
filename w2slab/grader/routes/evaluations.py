"""``POST /api/evaluate``: score predictions on the dev third (through the feedback guard: noise,
reuse detection and the per-seed Ladder), one unit of the evaluation budget each."""

from __future__ import annotations

import functools
from typing import Any

import anyio

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from w2slab.grader.budget import Budget, sha_of
from w2slab.grader.deps import Budgets, ScoringLane, State
from w2slab.grader.scoring import parse_predictions
from w2slab.grader.state import GraderState

router = APIRouter(tags=["evaluations"])


class EvaluateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    testbed: str
    predictions: list[Any] = Field(description="P(class 1) in [0, 1], \"A\"/\"B\" or true/false, one per test row")
    seed: int | None = Field(None, description="the seed these predictions are for: the Ladder keeps one best per seed")


@router.post("/evaluate")
async def evaluate(body: EvaluateIn, response: Response, state: State, budget: Budgets, lane: ScoringLane) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(functools.partial(_evaluate, body, response, state, budget), limiter=lane)


def _evaluate(body: EvaluateIn, response: Response, state: GraderState, budget: Budget) -> dict[str, Any]:
    sc = state.scorer(body.testbed)
    p1 = parse_predictions(body.predictions, sc.n_test)
    guard = state.guard
    assert guard is not None
    who = budget.who
    box: dict[str, Any] = {}

    pending = guard.prepare(sc, p1)  # before the write lock: the serial section does only what needs it

    def answer(s: Session, _: Any) -> dict[str, Any]:
        box["answer"], box["fp"] = guard.evaluate(s, who.id or 0, sc, p1, body.seed, pending)
        return box["answer"]

    def link(s: Session, audit_id: int, _: Any) -> None:
        guard.record(s, box["fp"], audit_id)

    audit_id, hour_left, total_left, result = budget.charge("evaluate", sc.name, sha_of(body.predictions), answer, after=link)
    response.headers.update({"X-Audit-Id": str(audit_id), "X-Budget-Hour-Left": str(hour_left),
                             "X-Budget-Total-Left": str(total_left)})
    return result
