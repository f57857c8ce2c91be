"""Boards: the leaderboard (board third, submission Ladder), each researcher's final pick and the
sealed holdout, scored once per researcher when the operator seals a testbed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from w2slab.grader.auth import Principal
from w2slab.grader.db import Sealed, Submission, SubmissionCheck, dumps, now, write_session
from w2slab.grader.deps import DB_INT_MAX, CurrentAdmin, CurrentResearcher, State
from w2slab.grader.predictions import unpack_predictions
from w2slab.grader.queries import leaderboard, sealed_board, teacher_free_board
from w2slab.grader.state import GraderState

router = APIRouter(tags=["boards"])


class FinalPickIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    testbed: str
    submission_id: int = Field(ge=1, le=DB_INT_MAX)


class SealIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    testbed: str


@router.get("/leaderboard")
def get_leaderboard(state: State, testbed: str) -> dict[str, Any]:
    sc = state.scorer(testbed)
    weak, ceil = sc.baseline(sc.board)
    rows = leaderboard(state.engine, sc.name)
    return {"testbed": sc.name, "split": "board", "weak_acc": round(weak, 2), "ceiling_acc": round(ceil, 2),
            "rows": rows, "teacher_free": teacher_free_board(state.engine, sc.name),
            "sealed": sealed_board(state, sc.name)["rows"],
            "note": f"board scores: the submission Ladder's answers on the board third ({len(sc.board)} rows); the best of "
                    f"{len(rows)} submissions on the same rows is biased upward (winner's curse): the headline is the "
                    "sealed holdout, scored once per researcher"}


@router.post("/final")
def pick_final(body: FinalPickIn, state: State, who: CurrentResearcher) -> dict[str, Any]:
    """Pick the submission scored once on the sealed holdout when the run ends (changeable until then)."""
    return pick(state, who, body.testbed, body.submission_id)


@router.get("/sealed")
def get_sealed(state: State, testbed: str, vs: int | None = Query(None, ge=1, le=DB_INT_MAX)) -> dict[str, Any]:
    """Sealed-holdout scores (each researcher's one pick), with paired intervals against the
    sealed pick ``vs`` on the same rows and seeds."""
    return sealed_board(state, testbed, vs)


@router.post("/admin/seal")
def post_seal(body: SealIn, state: State, _: CurrentAdmin) -> dict[str, Any]:
    """Score every researcher's pick (or, without one, its best board submission) once on the sealed third."""
    return seal(state, body.testbed)


def pick(state: GraderState, who: Principal, testbed: str, sid: int) -> dict[str, Any]:
    """Record ``who``'s final pick on ``testbed`` (one of its own submissions); refused once sealed."""
    sc = state.scorer(testbed)
    with write_session(state.engine) as s:
        sub = s.get(Submission, sid)
        if sub is None or sub.researcher_id != who.id or sub.testbed != sc.name:
            raise HTTPException(404, f"no submission #{sid} of yours on {sc.name}")
        row = s.exec(select(Sealed).where(Sealed.researcher_id == who.id, Sealed.testbed == sc.name)).first()
        if row is not None and row.sealed_at is not None:
            raise HTTPException(409, f"your pick on {sc.name} (submission #{row.submission_id}) is already sealed: "
                                     "the sealed holdout scores one pick per researcher, once")
        if row is None:
            row = Sealed(researcher_id=who.id or 0, testbed=sc.name, submission_id=sid)
        row.submission_id, row.chosen_by, row.picked_at = sid, "researcher", now()
        s.add(row)
        s.commit()
    return {"testbed": sc.name, "submission_id": sid, "status": "picked",
            "note": "scored once on the sealed holdout when the run ends; you may change the pick until then"}


def seal(state: GraderState, testbed: str) -> dict[str, Any]:
    """Score once on the sealed third, for every researcher with a submission on ``testbed`` and no
    sealed score yet: its pick, or else its submission with the best real board accuracy (the
    selection uses the board only). Sealed scores are never recomputed."""
    sc = state.scorer(testbed)
    with write_session(state.engine) as s:
        subs = s.exec(select(Submission).where(Submission.testbed == sc.name).order_by(col(Submission.id))).all()
        picks = {r.researcher_id: r for r in s.exec(select(Sealed).where(Sealed.testbed == sc.name)).all()}
        best: dict[int, Submission] = {}
        for sub in subs:
            if sub.researcher_id not in best or sub.transfer_acc > best[sub.researcher_id].transfer_acc:
                best[sub.researcher_id] = sub
        for rid, sub in best.items():
            row = picks.get(rid) or Sealed(researcher_id=rid, testbed=sc.name, submission_id=sub.id or 0, chosen_by="board")
            if row.sealed_at is not None:
                continue
            check = s.get(SubmissionCheck, row.submission_id)
            if check is None:
                continue
            score = sc.score(unpack_predictions(check.predictions), sc.sealed)
            row.result, row.sealed_at = dumps(score.to_dict()), now()
            s.add(row)
        s.commit()
    return sealed_board(state, sc.name, full=True)
