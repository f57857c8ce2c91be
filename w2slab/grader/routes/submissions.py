"""Submissions: ``POST /api/submit`` (scored on the board third through the submission Ladder,
audited in the background), their listing and audits, and the operator's full view."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, select

from w2slab.grader.auth import Principal
from w2slab.grader.budget import sha_of
from w2slab.grader.codestore import SHA_RE
from w2slab.grader.db import Audit, Fingerprint, Flag, Snapshot, Submission, SubmissionCheck, dumps, read_session, write_session
from w2slab.grader.deps import Budgets, CurrentAdmin, CurrentPrincipal, Db, DbId, State
from w2slab.grader.predictions import pack_predictions
from w2slab.grader.queries import submission_detail, submissions
from w2slab.grader.scoring import PredictionError, parse_predictions
from w2slab.grader.state import GraderState
from w2slab.integrity.probes import upsert_flag

router = APIRouter(tags=["submissions"])


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    testbed: str
    method_name: str = Field(min_length=1, max_length=200)
    snapshot_sha256: str
    predictions: dict[str, Any] = Field(description="seed -> one prediction per test row")


@router.post("/submit", status_code=201)
def submit(body: SubmitIn, response: Response, state: State, budget: Budgets) -> dict[str, Any]:
    sc = state.scorer(body.testbed)
    who = budget.who
    given: dict[int, Any] = {}
    for key, value in body.predictions.items():
        try:
            given[int(key)] = value
        except ValueError:
            raise PredictionError(f"predictions: keys must be seeds (integers), got {key!r}") from None
    missing, extra = sorted(set(sc.seeds) - set(given)), sorted(set(given) - set(sc.seeds))
    if missing or extra:
        what = "; ".join(x for x in (f"missing seeds {missing}" if missing else "",
                                     f"unexpected seeds {extra}" if extra else "") if x)
        raise PredictionError(f"predictions: {what}; the required seeds are {sc.seeds} (GET /api/seeds?testbed={sc.name})")
    probs = {s: parse_predictions(given[s], sc.n_test, f"predictions[{s}]") for s in sc.seeds}
    if not SHA_RE.match(body.snapshot_sha256):
        raise PredictionError("snapshot_sha256 must be 64 lowercase hex characters")
    guard = state.guard
    assert guard is not None
    budget.check("submit")  # first: no other refusal is given once the budget is spent
    hard_by_seed = [probs[s_] > 0.5 for s_ in sc.seeds]
    with read_session(state.engine) as s:
        dup = guard.near_duplicate(s, sc, hard_by_seed)
    if dup is not None:
        refuse_near_duplicate(state, who, sc.name, *dup)
    summary = sc.score(probs, sc.board)
    out: dict[str, Any] = {"testbed": sc.name, "split": "board", "n_seeds": summary.n_seeds}
    box: dict[str, Any] = {}

    def add(s: Session) -> Submission:
        if s.get(Snapshot, body.snapshot_sha256) is None:
            raise HTTPException(422, f"snapshot {body.snapshot_sha256} is not in the code store: upload it first (POST /api/snapshots)")
        nan = lambda x: None if math.isnan(x) else x  # noqa: E731
        shown = guard.board_answer(s, who.id or 0, sc, summary)
        out.update(shown)
        sub = Submission(
            researcher_id=who.id or 0, testbed=sc.name, method_name=body.method_name, snapshot_sha256=body.snapshot_sha256,
            seeds=dumps(sc.seeds), pgr=nan(summary.pgr), pgr_lo=nan(summary.lo), pgr_hi=nan(summary.hi),
            pgr_se=nan(summary.se), transfer_acc=summary.transfer_acc, weak_acc=summary.weak_acc,
            ceiling_acc=summary.ceiling_acc, predictions_sha256=sha_of(body.predictions), shown=dumps(shown),
            per_seed=dumps([{"seed": s_, "pgr": nan(p)} for s_, p in zip(sc.seeds, summary.per_seed_pgr)]))
        s.add(sub)
        s.flush()
        s.add(SubmissionCheck(submission_id=sub.id or 0, status="queued" if state.settings.audits else "skipped",
                              predictions=pack_predictions(probs)))
        box["fp"] = guard.submit_fingerprint(s, who.id or 0, sc, hard_by_seed)
        return sub

    def link(s: Session, audit_id: int, _: Any) -> None:
        guard.record(s, box["fp"], audit_id)

    audit_id, _, _, sub = budget.charge("submit", sc.name, sha_of(body.predictions), out, add, after=link)
    response.headers["X-Audit-Id"] = str(audit_id)
    if state.auditor is not None:
        state.auditor.poke()
    return {"id": sub.id, **out, "status": "auditing" if state.settings.audits else "not audited",
            "audit_url": f"/api/submissions/{sub.id}/audit",
            "final_pick": "POST /api/final {testbed, submission_id} picks the submission scored once on the sealed holdout"}


@router.get("/submissions")
def list_submissions(engine: Db, testbed: str | None = None, researcher: str | None = None,
                     limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
    return submissions(engine, testbed, researcher, limit)


@router.get("/submissions/{sid}/audit")
def get_submission_audit(sid: DbId, engine: Db, who: CurrentPrincipal) -> dict[str, Any]:
    """The audit of a submission: status, flags and coarse numbers (everything for the admin)."""
    d = submission_detail(engine, sid, full=who.admin)
    if d is None:
        raise HTTPException(404, f"no submission {sid}")
    return {"submission_id": sid, "testbed": d["testbed"], "researcher": d["researcher"], **d["audit_detail"]}


@router.get("/admin/submissions/{sid}")
def get_submission_full(sid: DbId, engine: Db, _: CurrentAdmin) -> dict[str, Any]:
    d = submission_detail(engine, sid, full=True)
    if d is None:
        raise HTTPException(404, f"no submission {sid}")
    return d


def refuse_near_duplicate(state: GraderState, who: Principal, testbed: str, fp_id: int, distance: int) -> None:
    """409 for a submission that differs from an earlier one in only a few (row, seed) predictions
    (it could only serve to probe labels); the attempt is recorded as a flag. The refusal names the
    earlier submission only: the distance stays in the operator's flag."""
    with write_session(state.engine) as s:
        earlier = s.get(Fingerprint, fp_id)
        sub_id = None
        if earlier is not None and earlier.audit_id is not None:
            a = s.get(Audit, earlier.audit_id)
            sub_id = json.loads(a.score).get("submission_id") if a else None
        mine = earlier is not None and earlier.researcher_id == who.id
        key = f"submit-near-duplicate:{testbed}:{who.id}"
        old = s.exec(select(Flag).where(Flag.key == key)).first()
        count = (json.loads(old.evidence).get("attempts", 0) if old else 0) + 1
        upsert_flag(s, key, researcher_id=who.id, testbed=testbed, kind="probe-submissions", severity="high",
                    message=f"{count} submission(s) refused for differing from an earlier submission (#{sub_id}) in only "
                            f"{distance} (row, seed) prediction(s): probing the labels",
                    evidence={"attempts": count, "nearest_submission": sub_id, "distance": distance, "own": mine})
        s.commit()
    raise HTTPException(409, f"refused: near-duplicate of submission #{sub_id}; near-identical resubmissions are refused because "
                             "they could only probe the labels (submit identical predictions, or a genuinely different method)")
