"""The grader's FastAPI app: evaluation on the dev third of each test set, submissions scored on
the board third, the sealed third scored once per researcher (:mod:`w2slab.grader.scoring`),
leaderboard, forum, code store, audit log and the dashboard.

``create_app(settings)`` builds the app; start-up migrates the database and computes (or
loads from the engine cache) the weak and ceiling baselines of every testbed served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, func, insert, update
from sqlmodel import Session, col, select

from w2slab import paths
from w2slab.grader import forum, research
from w2slab.grader.auth import AuthMiddleware, Authenticator, Principal, admin, create_researcher
from w2slab.grader.auth import load_admin_token, load_server_secret, principal, researcher
from w2slab.grader.codestore import SHA_RE, ArchiveError, CodeStore, check_archive
from w2slab.grader.deps import ERRORS, SHA256_PATTERN, DbId, Offset, Sha256
from w2slab.grader.db import Audit, Researcher, Sealed, Snapshot, Submission, SubmissionCheck, dumps, make_engine, migrate, now
from w2slab.grader.db import Flag as Flag_
from w2slab.grader.db import read_session, write_session
from w2slab.grader.scoring import PredictionError, Scorer, load_scorer, parse_predictions
from w2slab.integrity.guard import FeedbackGuard
from w2slab.integrity.probes import ProbeThresholds, all_flags, upsert_flag

SETTINGS_ENV = "W2SLAB_GRADER_SETTINGS"


class Settings(BaseModel):
    """Everything the operator chooses; passed to uvicorn workers as JSON in an env variable."""

    testbeds: list[str] = Field(min_length=1, description="names, folders, or NAME=FOLDER")
    weak: str | None = None
    strong: str | None = None
    baseline_seeds: list[int] = [1, 2, 3, 4, 5]
    submit_seed_count: int = Field(5, ge=5)
    submit_seeds: list[int] | None = Field(None, min_length=5, description="fixed seeds instead of secret-drawn ones")
    db_url: str | None = None
    eval_per_hour: int = 60
    eval_total: int = 2000
    submit_per_hour: int = 10
    submit_total: int = 500
    post_per_hour: int = Field(120, ge=1, description="forum posts per researcher per hour (429 with Retry-After beyond)")
    comment_per_hour: int = Field(300, ge=1, description="forum comments per researcher per hour")
    vote_per_hour: int = Field(600, ge=1, description="forum votes cast or changed per researcher per hour")
    max_archive_bytes: int = 5 * 2**20
    max_unpacked_bytes: int = 50 * 2**20
    max_archive_members: int = 10_000
    baseline_workers: int | None = None
    dashboard_open_on_loopback: bool = True
    # research integrity (w2slab.integrity): dev-feedback hardening, probe detection, audits
    dev_noise: float = Field(1.0, ge=0, description="dev-answer noise, in multiples of the dev accuracy's sampling error (0: off)")
    dev_reuse_radius: int | None = Field(None, ge=0, description="rows; None: max(2, 1% of dev rows); 0: off")
    submit_dup_radius: int | None = Field(None, ge=0, description="refuse submissions 1..N rows from an earlier one; None: auto; 0: off")
    dev_ladder_seeds: int = Field(5, ge=1, le=100, description="ladders (seeds) per researcher and testbed")
    dev_ladder: float | None = Field(None, ge=0, le=0.5, description="Ladder margin in dev accuracy: answer only improvements on "
                                                                     "the researcher's best by more than this; None: auto "
                                                                     "(one dev sampling error); 0: off")
    dup_rows: Literal["all", "board"] = Field("all", description="rows the near-duplicate check compares: all (a refusal "
                                                                  "reveals nothing about the split) or board (red team only)")
    board_ladder: float | None = Field(None, ge=0, le=0.5, description="the submission Ladder's margin in board accuracy; None: "
                                                                       "auto (one board sampling error); 0: off, exact board "
                                                                       "numbers (for red-team comparison only)")
    audits: bool = True
    audit_workers: int = Field(default_factory=lambda: min(2, os.cpu_count() or 1), ge=0,
                               description="audit threads; with 2 or more no researcher holds more than all but one")
    audit_seeds: int = Field(2, ge=1, description="seeds for the teacher-dependence and generalisation re-runs")
    audit_wall_seconds: float = Field(600.0, gt=0, description="per-audit wall-clock limit (a researcher's experiment limit)")
    probe_flip_min: int = 5
    probe_near_min: int = 10
    probe_coord_min: int = 5
    probe_random_min: int = 10


@dataclass
class GraderState:
    settings: Settings
    engine: Engine
    auth: Authenticator
    scorers: dict[str, Scorer]
    store: CodeStore
    dashboard_key: str  # the dashboard login cookie's value
    secret: bytes = b""
    guard: FeedbackGuard | None = None
    auditor: Any = None  # w2slab.integrity.audit.Auditor, started with the app

    @property
    def thresholds(self) -> ProbeThresholds:
        st = self.settings
        return ProbeThresholds(st.probe_flip_min, st.probe_near_min, st.probe_coord_min, st.probe_random_min)

    def scorer(self, name: str) -> Scorer:
        if name not in self.scorers:
            raise HTTPException(404, f"unknown testbed '{name}'; this server scores: {', '.join(sorted(self.scorers))}")
        return self.scorers[name]


def prepare(settings: Settings, recover: bool = True) -> GraderState:
    """Migrate the database, load the secrets and every testbed's baselines; with ``recover``,
    audits cut short by a stop are queued again (only one process should do that)."""
    engine = make_engine(settings.db_url)
    migrate(engine)
    admin_token = load_admin_token()
    secret = load_server_secret()
    scorers: dict[str, Scorer] = {}
    for ref in settings.testbeds:
        sc = load_scorer(ref, settings.weak, settings.strong, settings.baseline_seeds, secret,
                         settings.submit_seed_count, settings.submit_seeds, settings.baseline_workers)
        if sc.name in scorers:
            raise ValueError(f"two testbeds are both called '{sc.name}': name one NAME=FOLDER")
        scorers[sc.name] = sc
    dash = hashlib.sha256(f"dashboard:{admin_token}".encode()).hexdigest()
    if recover:
        with write_session(engine) as s:
            s.exec(update(SubmissionCheck).where(col(SubmissionCheck.status) == "running").values(status="queued"))
            s.commit()
    guard = FeedbackGuard(secret, settings.dev_noise, settings.dev_reuse_radius, settings.submit_dup_radius, settings.dev_ladder,
                          settings.dev_ladder_seeds, settings.board_ladder, settings.dup_rows)
    return GraderState(settings, engine, Authenticator(engine, admin_token), scorers,
                       CodeStore(paths.home() / "grader" / "snapshots"), dash, secret, guard)


def start_auditor(state: GraderState) -> None:
    if not state.settings.audits or state.settings.audit_workers <= 0 or state.auditor is not None:
        return
    from w2slab.integrity.audit import AuditSettings, Auditor

    st = state.settings
    state.auditor = Auditor(state, AuditSettings(workers=st.audit_workers, audit_seeds=st.audit_seeds,
                                                 wall_seconds=st.audit_wall_seconds))
    state.auditor.start()


# ---------------------------------------------------------------- request bodies


class EvaluateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    testbed: str
    predictions: list[Any] = Field(description="P(class 1) in [0, 1], \"A\"/\"B\" or true/false, one per test row")
    seed: int | None = Field(None, description="the seed these predictions are for: the Ladder keeps one best per seed")


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    testbed: str
    method_name: str = Field(min_length=1, max_length=200)
    snapshot_sha256: str
    predictions: dict[str, Any] = Field(description="seed -> one prediction per test row")


class FinalPickIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    testbed: str
    submission_id: int = Field(ge=1, le=2**63 - 1)


class SealIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    testbed: str


class ResearcherIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


# ---------------------------------------------------------------- shared queries


def r3(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 3)


def sha_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def charge(
    state: GraderState, who: Principal, kind: str, testbed: str, pred_sha: str, score: dict[str, Any] | Callable[..., dict[str, Any]],
    add: Callable[[Session], Any] | None = None, after: Callable[[Session, int, Any], None] | None = None,
) -> tuple[int, int, int, Any]:
    """Check and spend one unit of this researcher's budget for ``kind``, record the audit row
    (and whatever ``add`` writes) in the same transaction. ``score`` may be ``f(session, extra)``,
    computed inside the transaction; ``after(session, audit_id, extra)`` runs once the audit row
    exists. Returns audit id, hour left, total left, and ``add``'s value (or the score, when
    ``score`` is computed and nothing is added). The hot path (every evaluation) uses Core
    statements on the session's connection: no ORM objects are built for the budget or audit rows."""
    st = state.settings
    per_hour, total = (st.eval_per_hour, st.eval_total) if kind == "evaluate" else (st.submit_per_hour, st.submit_total)
    researchers, audits = Researcher.__table__, Audit.__table__  # type: ignore[attr-defined]
    counter = researchers.c.evaluations if kind == "evaluate" else researchers.c.submissions
    t = now()
    with write_session(state.engine) as s:
        conn = s.connection()
        used = conn.execute(select(counter).where(researchers.c.id == who.id).with_for_update()).scalar_one()
        n = _budget_check(conn, state, who, kind, used, t)
        conn.execute(update(researchers).where(researchers.c.id == who.id).values({counter: counter + 1}))
        extra = add(s) if add else None
        computed = callable(score)
        if callable(score):
            score = score(s, extra)
        if isinstance(extra, Submission):
            s.flush()
            score = {"submission_id": extra.id, **score}
        audit_id = conn.execute(insert(audits).values(researcher_id=who.id, kind=kind, testbed=testbed, created_at=t,
                                                      predictions_sha256=pred_sha, score=dumps(score))).inserted_primary_key[0]
        if after:
            after(s, audit_id, extra)
        s.commit()
        return audit_id, per_hour - n - 1, total - used - 1, (score if computed and add is None else extra)


def _budget_check(conn: Any, state: GraderState, who: Principal, kind: str, used: int, t: float) -> int:
    """Raise 429 when ``who`` has no ``kind`` budget left; else the number used in the last hour."""
    st = state.settings
    per_hour, total = (st.eval_per_hour, st.eval_total) if kind == "evaluate" else (st.submit_per_hour, st.submit_total)
    audits = Audit.__table__  # type: ignore[attr-defined]
    if used >= total:
        raise HTTPException(429, f"total {kind} budget used up ({total}); it does not reset: ask the operator to raise it")
    n, oldest = conn.execute(select(func.count(), func.min(audits.c.created_at)).where(
        audits.c.researcher_id == who.id, audits.c.kind == kind, audits.c.created_at > t - 3600)).one()
    if n >= per_hour:
        wait = max(1, math.ceil(oldest + 3600 - t))
        raise HTTPException(429, f"hourly {kind} budget used up ({per_hour} per hour); retry in {wait} s",
                            headers={"Retry-After": str(wait)})
    return int(n)


def check_budget(state: GraderState, who: Principal, kind: str) -> None:
    """The budget check before anything else looks at a request: a request refused for its
    content (a near-duplicate submission) is refused only while budget is left."""
    researchers = Researcher.__table__  # type: ignore[attr-defined]
    counter = researchers.c.evaluations if kind == "evaluate" else researchers.c.submissions
    with read_session(state.engine) as s:
        conn = s.connection()
        _budget_check(conn, state, who, kind, conn.execute(select(counter).where(researchers.c.id == who.id)).scalar_one(), now())


def _with_checks(q: Any) -> Any:
    """Join each submission's audit (without loading the stored predictions)."""
    from sqlalchemy.orm import defer

    return (q.join(SubmissionCheck, col(SubmissionCheck.submission_id) == col(Submission.id), isouter=True)
            .options(defer(SubmissionCheck.predictions)))  # type: ignore[arg-type]


def leaderboard(engine: Engine, testbed: str, full: bool = False) -> list[dict[str, Any]]:
    """The W2S board of a testbed, best shown board PGR first (the submission Ladder's answers):
    every submission that the audit did not find teacher-free or reading labels (see
    :func:`teacher_free_board`)."""
    return [r for r in _boards(engine, testbed, full) if not r["teacher_free"]]


def teacher_free_board(engine: Engine, testbed: str, full: bool = False) -> list[dict[str, Any]]:
    """Submissions whose score survives without the weak teacher, or that read labels: shown
    apart, not ranked with W2S methods."""
    return [r for r in _boards(engine, testbed, full) if r["teacher_free"]]


def _boards(engine: Engine, testbed: str, full: bool) -> list[dict[str, Any]]:
    with read_session(engine) as s:
        rows = s.exec(_with_checks(select(Submission, Researcher.name, SubmissionCheck)
                                   .join(Researcher, col(Submission.researcher_id) == col(Researcher.id)))
                      .where(Submission.testbed == testbed)).all()
    def shown_pgr(sub: Submission) -> float | None:
        return json.loads(sub.shown or "{}").get("pgr")

    rows = sorted(rows, key=lambda r: (shown_pgr(r[0]) is None, -(shown_pgr(r[0]) or 0), r[0].created_at))
    out, rank = [], {True: 0, False: 0}
    for sub, name, check in rows:
        d = submission_dict(sub, name, check, full)
        d["teacher_free"] = d["teacher_free"] or "label-access" in d["flags"]  # read labels: off the W2S board too
        rank[d["teacher_free"]] += 1
        out.append(dict(d, rank=rank[d["teacher_free"]]))
    return out


def audit_summary(check: SubmissionCheck | None, full: bool = False) -> dict[str, Any]:
    """The audit of a submission as researchers see it (``full``: with every number, for the operator)."""
    if check is None:
        return {"status": "none", "flags": [], "teacher_free": False}
    result = json.loads(check.result or "{}")
    out: dict[str, Any] = {"status": "auditing" if check.status in ("queued", "running") else check.status,
                           "flags": json.loads(check.flags), "teacher_free": check.teacher_free, "post_id": check.post_id,
                           "finished_at": check.finished_at, "public": result.get("public", {}),
                           # researchers: kind, severity and a fixed text per kind, never what the audited code printed
                           "flag_details": [{"kind": f["kind"], "severity": f["severity"],
                                             "message": f.get("public") or "details are on the operator's dashboard"}
                                            for f in result.get("flags", [])]}
    if full:
        out["checks"] = result.get("checks", {})
        out["flag_details"] = result.get("flags", [])
    return out


def submission_dict(sub: Submission, name: str, check: SubmissionCheck | None = None, full: bool = False) -> dict[str, Any]:
    """A submission as researchers see it: the submission Ladder's shown board answer (2 decimals,
    ``improved`` false when it did not beat the researcher's best by the margin); ``full`` adds
    the real board numbers under ``board_exact``, for the operator."""
    audit = audit_summary(check, full)
    shown = json.loads(sub.shown or "{}")
    out = {
        "id": sub.id, "researcher": name, "testbed": sub.testbed, "method_name": sub.method_name,
        "snapshot_sha256": sub.snapshot_sha256, "created_at": sub.created_at, "split": "board",
        "pgr": shown.get("pgr"), "pgr_ci": shown.get("pgr_ci", [None, None]), "transfer_acc": shown.get("transfer_acc"),
        "improved": shown.get("improved"), "n_seeds": len(json.loads(sub.seeds)),
        "audit": audit["status"], "flags": audit["flags"], "teacher_free": audit["teacher_free"],
    }
    if full:
        out["board_exact"] = {"pgr": r3(sub.pgr), "pgr_ci": [r3(sub.pgr_lo), r3(sub.pgr_hi)], "pgr_se": r3(sub.pgr_se),
                              "transfer_acc": r3(sub.transfer_acc), "weak_acc": r3(sub.weak_acc), "ceiling_acc": r3(sub.ceiling_acc)}
        out["per_seed"] = json.loads(sub.per_seed)
        out["audit_detail"] = audit
    return out


def submissions(engine: Engine, testbed: str | None = None, researcher: str | None = None, limit: int = 200,
                full: bool = False) -> list[dict[str, Any]]:
    with read_session(engine) as s:
        q = _with_checks(select(Submission, Researcher.name, SubmissionCheck)
                         .join(Researcher, col(Submission.researcher_id) == col(Researcher.id)))
        if testbed:
            q = q.where(Submission.testbed == testbed)
        if researcher:
            q = q.where(Researcher.name == researcher)
        rows = s.exec(q.order_by(col(Submission.created_at).desc()).limit(limit)).all()
    return [submission_dict(sub, name, check, full) for sub, name, check in rows]


def submission_detail(engine: Engine, sid: int, full: bool = False) -> dict[str, Any] | None:
    with read_session(engine) as s:
        row = s.exec(_with_checks(select(Submission, Researcher.name, SubmissionCheck)
                                  .join(Researcher, col(Submission.researcher_id) == col(Researcher.id)))
                     .where(Submission.id == sid)).first()
    if row is None:
        return None
    sub, name, check = row
    out = submission_dict(sub, name, check, full)
    out["audit_detail"] = audit_summary(check, full)
    return out


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
    from w2slab.integrity.audit import unpack_predictions

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


def _sealed_predictions(state: GraderState, sid: int) -> dict[int, Any]:
    from w2slab.integrity.audit import unpack_predictions

    with read_session(state.engine) as s:
        check = s.get(SubmissionCheck, sid)
        return {} if check is None else unpack_predictions(check.predictions)


def sealed_board(state: GraderState, testbed: str, vs: int | None = None, full: bool = False) -> dict[str, Any]:
    """Every sealed pick of ``testbed``, best sealed PGR first, 2 decimals (3 with ``full``), with
    the paired difference against the sealed pick of submission ``vs`` on the same rows and seeds
    (only a sealed pick may be ``vs``: any other submission would be scored on the sealed rows)."""
    sc = state.scorer(testbed)
    digits = 3 if full else 2
    rnd = lambda x: None if x is None or not math.isfinite(x) else round(float(x), digits)  # noqa: E731
    with read_session(state.engine) as s:
        rows = s.exec(select(Sealed, Researcher.name, Submission).join(Researcher, col(Sealed.researcher_id) == col(Researcher.id))
                      .join(Submission, col(Sealed.submission_id) == col(Submission.id))
                      .where(Sealed.testbed == sc.name, col(Sealed.sealed_at).is_not(None))).all()
    sealed_ids = {row.submission_id for row, _, _ in rows}
    if vs is not None and vs not in sealed_ids:
        raise HTTPException(404, f"submission #{vs} is not a sealed pick on {sc.name}: comparisons are against sealed picks only")
    ref = _sealed_predictions(state, vs) if vs is not None else None
    out = []
    for row, name, sub in rows:
        r = json.loads(row.result)
        d = {"researcher": name, "submission_id": row.submission_id, "method_name": sub.method_name, "chosen_by": row.chosen_by,
             "sealed_at": row.sealed_at, "pgr": rnd(r["pgr"]), "pgr_ci": [rnd(r["lo"]), rnd(r["hi"])],
             "transfer_acc": rnd(r["transfer_acc"]), "n_rows": r["n_rows"], "n_seeds": r["n_seeds"],
             "board_pgr": json.loads(sub.shown or "{}").get("pgr")}
        if ref is not None and row.submission_id != vs:
            diff = sc.compare(_sealed_predictions(state, row.submission_id), ref, sc.sealed)
            d["vs"] = {"submission_id": vs, "diff": rnd(diff.diff), "ci": [rnd(diff.lo), rnd(diff.hi)]}
        out.append(d)
    out.sort(key=lambda d: (d["pgr"] is None, -(d["pgr"] or 0)))
    weak, ceil = sc.baseline(sc.sealed)
    return {"testbed": sc.name, "split": "sealed", "rows_scored": len(sc.sealed), "weak_acc": rnd(weak), "ceiling_acc": rnd(ceil),
            "rows": out}


def snapshots(engine: Engine, limit: int = 200) -> list[dict[str, Any]]:
    with read_session(engine) as s:
        rows = s.exec(select(Snapshot, Researcher.name).join(Researcher, col(Snapshot.uploader_id) == col(Researcher.id))
                      .order_by(col(Snapshot.created_at).desc()).limit(limit)).all()
    return [snapshot_dict(snap, name) for snap, name in rows]


def snapshot_dict(snap: Snapshot, name: str) -> dict[str, Any]:
    return {"sha256": snap.sha256, "uploader": name, "parent_sha256": snap.parent_sha256, "size": snap.size,
            "unpacked_size": snap.unpacked_size, "n_files": snap.n_files, "note": snap.note, "created_at": snap.created_at}


def researcher_usage(state: GraderState) -> list[dict[str, Any]]:
    """Every researcher with their evaluations (last hour, total), submissions and posts."""
    from w2slab.grader.db import Post

    t = now()
    with read_session(state.engine) as s:
        people = s.exec(select(Researcher).order_by(col(Researcher.name))).all()
        hour = dict(s.exec(select(Audit.researcher_id, func.count()).where(Audit.kind == "evaluate", Audit.created_at > t - 3600)
                           .group_by(col(Audit.researcher_id))).all())
        posts = dict(s.exec(select(Post.author_id, func.count()).group_by(col(Post.author_id))).all())
    st = state.settings
    return [{"id": r.id, "name": r.name, "created_at": r.created_at, "evaluations_last_hour": hour.get(r.id, 0),
             "evaluations_total": r.evaluations, "eval_per_hour": st.eval_per_hour, "eval_total": st.eval_total,
             "submissions": r.submissions, "posts": posts.get(r.id, 0)} for r in people]


def audit_log(engine: Engine, limit: int = 200, researcher: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    with read_session(engine) as s:
        q = select(Audit, Researcher.name).join(Researcher, col(Audit.researcher_id) == col(Researcher.id))
        if researcher:
            q = q.where(Researcher.name == researcher)
        if kind:
            q = q.where(Audit.kind == kind)
        rows = s.exec(q.order_by(col(Audit.id).desc()).limit(limit)).all()
    return [{"id": a.id, "researcher": n, "kind": a.kind, "testbed": a.testbed, "created_at": a.created_at,
             "predictions_sha256": a.predictions_sha256, "score": json.loads(a.score)} for a, n in rows]


# ---------------------------------------------------------------- the API


def api_router() -> APIRouter:
    api = APIRouter(prefix="/api", responses=ERRORS)  # every route declares the one error shape

    def st(request: Request) -> GraderState:
        return request.app.state.grader

    @api.get("/me")
    def me(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        if who.admin:
            return {"name": "admin", "role": "admin"}
        usage = next(u for u in researcher_usage(st(request)) if u["id"] == who.id)
        return {"name": who.name, "role": "researcher", "usage": usage}

    @api.get("/testbeds")
    def testbeds(request: Request) -> list[dict[str, Any]]:
        return [{"name": sc.name, "kind": sc.kind, "test_rows": sc.n_test, "dev_rows": len(sc.dev), "board_rows": len(sc.board),
                 "sealed_rows": len(sc.sealed), "sealed_mde_pgr": None if math.isnan(m := sc.sealed_mde()) else round(m, 2),
                 "seeds": sc.seeds}
                for sc in st(request).scorers.values()]

    @api.get("/seeds")
    def seeds(request: Request, testbed: str) -> dict[str, Any]:
        sc = st(request).scorer(testbed)
        return {"testbed": sc.name, "seeds": sc.seeds}

    @api.post("/evaluate")
    def evaluate(body: EvaluateIn, request: Request, response: Response, who: Principal = Depends(researcher)) -> dict[str, Any]:
        state = st(request)
        sc = state.scorer(body.testbed)
        p1 = parse_predictions(body.predictions, sc.n_test)
        assert state.guard is not None
        box: dict[str, Any] = {}

        def answer(s: Session, _: Any) -> dict[str, Any]:
            box["answer"], box["fp"] = state.guard.evaluate(s, who.id or 0, sc, p1, body.seed)  # type: ignore[union-attr]
            return box["answer"]

        def link(s: Session, audit_id: int, _: Any) -> None:
            state.guard.record(s, box["fp"], audit_id)  # type: ignore[union-attr]

        audit_id, hour_left, total_left, result = charge(state, who, "evaluate", sc.name, sha_of(body.predictions), answer,
                                                         after=link)
        response.headers.update({"X-Audit-Id": str(audit_id), "X-Budget-Hour-Left": str(hour_left),
                                 "X-Budget-Total-Left": str(total_left)})
        return result

    @api.post("/submit", status_code=201)
    def submit(body: SubmitIn, request: Request, response: Response, who: Principal = Depends(researcher)) -> dict[str, Any]:
        state = st(request)
        sc = state.scorer(body.testbed)
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
        assert state.guard is not None
        check_budget(state, who, "submit")  # first: no other refusal is given once the budget is spent
        hard_by_seed = [probs[s_] > 0.5 for s_ in sc.seeds]
        with read_session(state.engine) as s:
            dup = state.guard.near_duplicate(s, sc, hard_by_seed)
        if dup is not None:
            _refuse_near_duplicate(state, who, sc.name, *dup)
        summary = sc.score(probs, sc.board)
        out: dict[str, Any] = {"testbed": sc.name, "split": "board", "n_seeds": summary.n_seeds}

        def add(s: Session) -> Submission:
            if s.get(Snapshot, body.snapshot_sha256) is None:
                raise HTTPException(422, f"snapshot {body.snapshot_sha256} is not in the code store: upload it first (POST /api/snapshots)")
            nan = lambda x: None if math.isnan(x) else x  # noqa: E731
            shown = state.guard.board_answer(s, who.id or 0, sc, summary)  # type: ignore[union-attr]
            out.update(shown)
            sub = Submission(
                researcher_id=who.id or 0, testbed=sc.name, method_name=body.method_name, snapshot_sha256=body.snapshot_sha256,
                seeds=dumps(sc.seeds), pgr=nan(summary.pgr), pgr_lo=nan(summary.lo), pgr_hi=nan(summary.hi),
                pgr_se=nan(summary.se), transfer_acc=summary.transfer_acc, weak_acc=summary.weak_acc,
                ceiling_acc=summary.ceiling_acc, predictions_sha256=sha_of(body.predictions), shown=dumps(shown),
                per_seed=dumps([{"seed": s_, "pgr": nan(p)} for s_, p in zip(sc.seeds, summary.per_seed_pgr)]))
            s.add(sub)
            s.flush()
            from w2slab.integrity.audit import pack_predictions

            s.add(SubmissionCheck(submission_id=sub.id or 0, status="queued" if state.settings.audits else "skipped",
                                  predictions=pack_predictions(probs)))
            box["fp"] = state.guard.submit_fingerprint(s, who.id or 0, sc, hard_by_seed)  # type: ignore[union-attr]
            return sub

        box: dict[str, Any] = {}

        def link(s: Session, audit_id: int, _: Any) -> None:
            state.guard.record(s, box["fp"], audit_id)  # type: ignore[union-attr]

        audit_id, _, _, sub = charge(state, who, "submit", sc.name, sha_of(body.predictions), out, add, after=link)
        response.headers["X-Audit-Id"] = str(audit_id)
        if state.auditor is not None:
            state.auditor.poke()
        return {"id": sub.id, **out, "status": "auditing" if state.settings.audits else "not audited",
                "audit_url": f"/api/submissions/{sub.id}/audit",
                "final_pick": "POST /api/final {testbed, submission_id} picks the submission scored once on the sealed holdout"}

    @api.get("/leaderboard")
    def get_leaderboard(request: Request, testbed: str) -> dict[str, Any]:
        state = st(request)
        sc = state.scorer(testbed)
        weak, ceil = sc.baseline(sc.board)
        rows = leaderboard(state.engine, sc.name)
        return {"testbed": sc.name, "split": "board", "weak_acc": round(weak, 2), "ceiling_acc": round(ceil, 2),
                "rows": rows, "teacher_free": teacher_free_board(state.engine, sc.name),
                "sealed": sealed_board(state, sc.name)["rows"],
                "note": f"board scores: the submission Ladder's answers on the board third ({len(sc.board)} rows); the best of "
                        f"{len(rows)} submissions on the same rows is biased upward (winner's curse): the headline is the "
                        "sealed holdout, scored once per researcher"}

    @api.post("/final")
    def pick_final(body: FinalPickIn, request: Request, who: Principal = Depends(researcher)) -> dict[str, Any]:
        """Pick the submission scored once on the sealed holdout when the run ends (changeable until then)."""
        return pick(st(request), who, body.testbed, body.submission_id)

    @api.get("/sealed")
    def get_sealed(request: Request, testbed: str, vs: int | None = Query(None, ge=1, le=2**63 - 1)) -> dict[str, Any]:
        """Sealed-holdout scores (each researcher's one pick), with paired intervals against the
        sealed pick ``vs`` on the same rows and seeds."""
        return sealed_board(st(request), testbed, vs)

    @api.post("/admin/seal")
    def post_seal(body: SealIn, request: Request, _: Principal = Depends(admin)) -> dict[str, Any]:
        """Score every researcher's pick (or, without one, its best board submission) once on the sealed third."""
        return seal(st(request), body.testbed)

    @api.get("/submissions")
    def list_submissions(request: Request, testbed: str | None = None, researcher: str | None = None,
                         limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
        return submissions(st(request).engine, testbed, researcher, limit)

    @api.get("/submissions/{sid}/audit")
    def get_submission_audit(sid: DbId, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        """The audit of a submission: status, flags and coarse numbers (everything for the admin)."""
        d = submission_detail(st(request).engine, sid, full=who.admin)
        if d is None:
            raise HTTPException(404, f"no submission {sid}")
        return {"submission_id": sid, "testbed": d["testbed"], "researcher": d["researcher"], **d["audit_detail"]}

    # ---- code store
    @api.post("/snapshots", responses={201: {"description": "stored (a new snapshot)"}}, openapi_extra={"requestBody": {
        "required": True, "description": "a tar.gz archive (any content type)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload_snapshot(request: Request, response: Response, parent: str | None = Query(None, pattern=SHA256_PATTERN),
                              note: str = Query("", max_length=500),
                              who: Principal = Depends(researcher)) -> dict[str, Any]:
        state = st(request)
        cap = state.settings.max_archive_bytes
        if int(request.headers.get("content-length") or 0) > cap:
            raise ArchiveError(f"archive is {request.headers['content-length']} bytes; the limit is {cap} bytes compressed", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise ArchiveError(f"archive is larger than the limit of {cap} bytes compressed", 413)
            chunks.append(chunk)
        if len(note) > 500:
            raise ArchiveError("note: at most 500 characters")
        if parent is not None and not SHA_RE.match(parent):
            raise ArchiveError("parent must be a sha256 (64 lowercase hex characters)")
        data = b"".join(chunks)
        s = state.settings
        info = await run_in_threadpool(check_archive, data, cap, s.max_unpacked_bytes, s.max_archive_members)
        rec, created = await run_in_threadpool(_store_snapshot, state, who, info, data, parent, note)
        response.status_code = 201 if created else 200
        return {**rec, "created": created}

    @api.get("/snapshots")
    def list_snapshots(request: Request, limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
        return snapshots(st(request).engine, limit)

    @api.get("/snapshots/{sha}", response_class=FileResponse,
             responses={200: {"content": {"application/gzip": {}}, "description": "the snapshot as tar.gz"}})
    def download_snapshot(sha: Sha256, request: Request) -> FileResponse:
        state = st(request)
        _snapshot_or_404(state, sha)
        return FileResponse(state.store.path(sha), media_type="application/gzip", filename=f"{sha}.tar.gz")

    @api.get("/snapshots/{sha}/info")
    def snapshot_info(sha: Sha256, request: Request) -> dict[str, Any]:
        return _snapshot_or_404(st(request), sha)

    # ---- forum
    @api.post("/posts", status_code=201)
    def create_post(body: forum.PostIn, request: Request, who: Principal = Depends(researcher)) -> dict[str, Any]:
        post = forum.create_post(st(request).engine, who.id or 0, body, st(request).settings.post_per_hour)
        return forum.post_dict(post, who.name)

    @api.get("/posts")
    def list_posts(request: Request, kind: forum.ListKind | None = None, limit: int = Query(50, ge=1, le=500),
                   offset: Offset = 0) -> list[dict[str, Any]]:
        return forum.list_posts(st(request).engine, kind, limit, offset)

    @api.get("/posts/search")
    def search_posts(request: Request, q: str = Query(min_length=1, max_length=500),
                     limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
        return forum.search_posts(st(request).engine, q, limit)

    @api.get("/posts/{post_id}")
    def get_post(post_id: DbId, request: Request) -> dict[str, Any]:
        return forum.get_post(st(request).engine, post_id)

    @api.post("/posts/{post_id}/comments", status_code=201)
    def comment(post_id: DbId, body: forum.CommentIn, request: Request, who: Principal = Depends(researcher)) -> dict[str, Any]:
        c = forum.add_comment(st(request).engine, post_id, who.id or 0, body, st(request).settings.comment_per_hour)
        return {"id": c.id, "post_id": post_id, "author": who.name, "body": c.body, "created_at": c.created_at}

    @api.post("/posts/{post_id}/vote")
    def vote(post_id: DbId, request: Request, body: forum.VoteIn | None = None, who: Principal = Depends(researcher)) -> dict[str, Any]:
        score = forum.vote(st(request).engine, post_id, who.id or 0, body or forum.VoteIn(), st(request).settings.vote_per_hour)
        return {"post_id": post_id, "score": score}

    # ---- operator
    @api.post("/admin/researchers", status_code=201)
    def add_researcher(body: ResearcherIn, request: Request, _: Principal = Depends(admin)) -> dict[str, Any]:
        try:
            r, token = create_researcher(st(request).engine, body.name)
        except ValueError as e:
            raise HTTPException(409 if "already exists" in str(e) else 422, str(e)) from None
        return {"id": r.id, "name": r.name, "token": token}

    @api.get("/admin/researchers")
    def list_researchers(request: Request, _: Principal = Depends(admin)) -> list[dict[str, Any]]:
        return researcher_usage(st(request))

    @api.get("/admin/flags")
    def get_flags(request: Request, researcher: str | None = None, _: Principal = Depends(admin)) -> list[dict[str, Any]]:
        """Research-integrity flags: submission audits, refused requests and live probe detection."""
        state = st(request)
        return all_flags(state.engine, state.thresholds, researcher)

    @api.get("/admin/submissions/{sid}")
    def get_submission_full(sid: DbId, request: Request, _: Principal = Depends(admin)) -> dict[str, Any]:
        d = submission_detail(st(request).engine, sid, full=True)
        if d is None:
            raise HTTPException(404, f"no submission {sid}")
        return d

    @api.get("/admin/audit")
    def get_audit(request: Request, limit: int = Query(200, ge=1, le=10_000), researcher: str | None = None,
                  kind: str | None = None, _: Principal = Depends(admin)) -> list[dict[str, Any]]:
        return audit_log(st(request).engine, limit, researcher, kind)

    # ---- automated research runs (pushed by the `w2slab research` launcher)
    async def _capped_body(request: Request, what: str) -> dict[str, Any]:
        cap = research.MAX_BATCH_BYTES
        if int(request.headers.get("content-length") or 0) > cap:
            raise research.ResearchError(f"{what} is {request.headers['content-length']} bytes; the limit is {cap} bytes "
                                         "per request (send transcript lines in smaller batches)", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise research.ResearchError(f"{what} is larger than the limit of {cap} bytes per request "
                                             "(send transcript lines in smaller batches)", 413)
            chunks.append(chunk)
        return research.parse_body(b"".join(chunks), what)

    @api.post("/admin/research/status", openapi_extra=_json_body("status.json of a research run: run_id, sandboxed, accounting"))
    async def post_research_status(request: Request, _: Principal = Depends(admin)) -> dict[str, Any]:
        """The launcher's status.json (with ``run_id`` and ``sandboxed``): replaces the run's last one."""
        body = await _capped_body(request, "the status")
        return await run_in_threadpool(research.store_status, st(request).engine, body)

    @api.post("/admin/research/transcript", openapi_extra=_json_body("{run_id, researcher, start_seq, lines}: transcript lines"))
    async def post_research_transcript(request: Request, _: Principal = Depends(admin)) -> dict[str, Any]:
        """A batch of transcript lines of one researcher: ``{run_id, researcher, start_seq, lines}``, appended."""
        body = await _capped_body(request, "the transcript batch")
        return await run_in_threadpool(research.store_transcript, st(request).engine, body)

    @api.get("/admin/research/runs")
    def get_research_runs(request: Request, limit: int = Query(50, ge=1, le=500), _: Principal = Depends(admin)) -> list[dict[str, Any]]:
        return research.list_runs(st(request).engine, limit)

    @api.get("/admin/research/transcript")
    def get_research_transcript(request: Request, run_id: str, researcher: str, offset: Offset = 0,
                                limit: int = Query(100, ge=1, le=5000), _: Principal = Depends(admin)) -> dict[str, Any]:
        return research.transcript(st(request).engine, run_id, researcher, offset, limit)

    return api


def _json_body(description: str) -> dict[str, Any]:
    """The published request body of a route that reads its JSON by hand (size-capped first)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": {"type": "object"}}}}}


def _refuse_near_duplicate(state: GraderState, who: Principal, testbed: str, fp_id: int, distance: int) -> None:
    """409 for a submission that differs from an earlier one in only a few (row, seed) predictions
    (it could only serve to probe labels); the attempt is recorded as a flag. The refusal names the
    earlier submission only: the distance stays in the operator's flag."""
    from w2slab.grader.db import Fingerprint

    with write_session(state.engine) as s:
        earlier = s.get(Fingerprint, fp_id)
        sub_id = None
        if earlier is not None and earlier.audit_id is not None:
            a = s.get(Audit, earlier.audit_id)
            sub_id = json.loads(a.score).get("submission_id") if a else None
        mine = earlier is not None and earlier.researcher_id == who.id
        key = f"submit-near-duplicate:{testbed}:{who.id}"
        old = s.exec(select(Flag_).where(Flag_.key == key)).first()
        count = (json.loads(old.evidence).get("attempts", 0) if old else 0) + 1
        upsert_flag(s, key, researcher_id=who.id, testbed=testbed, kind="probe-submissions", severity="high",
                    message=f"{count} submission(s) refused for differing from an earlier submission (#{sub_id}) in only "
                            f"{distance} (row, seed) prediction(s): probing the labels",
                    evidence={"attempts": count, "nearest_submission": sub_id, "distance": distance, "own": mine})
        s.commit()
    raise HTTPException(409, f"refused: near-duplicate of submission #{sub_id}; near-identical resubmissions are refused because "
                             "they could only probe the labels (submit identical predictions, or a genuinely different method)")


def _snapshot_or_404(state: GraderState, sha: str) -> dict[str, Any]:
    if not SHA_RE.match(sha):
        raise HTTPException(422, "a snapshot is named by its sha256 (64 lowercase hex characters)")
    with read_session(state.engine) as s:
        row = s.exec(select(Snapshot, Researcher.name).join(Researcher, col(Snapshot.uploader_id) == col(Researcher.id))
                     .where(Snapshot.sha256 == sha)).first()
    if row is None:
        raise HTTPException(404, f"no snapshot {sha} in the code store")
    return snapshot_dict(*row)


def _store_snapshot(state: GraderState, who: Principal, info: Any, data: bytes, parent: str | None, note: str) -> tuple[dict[str, Any], bool]:
    with write_session(state.engine) as s:
        if parent and s.get(Snapshot, parent) is None:
            raise ArchiveError(f"parent snapshot {parent} is not in the code store")
        existing = s.get(Snapshot, info.sha256)
        if existing is not None:
            return snapshot_dict(existing, s.get(Researcher, existing.uploader_id).name), False  # type: ignore[union-attr]
        state.store.put(info.sha256, data)  # the file first: a committed row always has its file
        snap = Snapshot(sha256=info.sha256, uploader_id=who.id or 0, parent_sha256=parent, size=info.size,
                        unpacked_size=info.unpacked_size, n_files=info.n_files, note=note)
        s.add(snap)
        s.commit()
    return snapshot_dict(snap, who.name), True


# ---------------------------------------------------------------- errors and the app


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            return f"request body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts[:10]) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(PredictionError)
    async def _predictions(_: Request, exc: PredictionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ArchiveError)
    async def _archive(_: Request, exc: ArchiveError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(research.ResearchError)
    async def _research(_: Request, exc: research.ResearchError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(forum.ForumError)
    async def _forum(_: Request, exc: forum.ForumError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)


def create_app(settings: Settings, state: GraderState | None = None, recover: bool = True) -> FastAPI:
    """The grader app; ``state`` (from :func:`prepare`) is built at start-up when not given.
    Submission audits run in background threads started with the app."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "grader", None) is None:
            app.state.grader = await run_in_threadpool(prepare, settings, recover)
        start_auditor(app.state.grader)
        yield
        if app.state.grader.auditor is not None:
            app.state.grader.auditor.stop()
        app.state.grader.engine.dispose()

    app = FastAPI(title="w2slab grader", lifespan=lifespan, docs_url="/docs", openapi_url="/openapi.json")
    app.state.grader = state
    app.add_middleware(AuthMiddleware, get_auth=lambda: app.state.grader.auth)
    install_error_handlers(app)
    app.include_router(api_router())

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"ok": True, "testbeds": sorted(app.state.grader.scorers)}

    from w2slab.dashboard.views import mount_dashboard

    mount_dashboard(app)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings come as JSON in ``W2SLAB_GRADER_SETTINGS``."""
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]), recover=False)

