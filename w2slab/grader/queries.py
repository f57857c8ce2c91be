"""Read-only queries over the grader's database, shared by the API routes, the dashboard and the
CLI: leaderboards, submissions and their audits, sealed scores, snapshots, researcher usage and
the audit log. Each returns plain JSON-able dicts.
"""

from __future__ import annotations

import json
import math
import re  # dashboard queries (H4)
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from sqlalchemy import Engine, func
from sqlalchemy import or_  # dashboard queries (H4)
from sqlalchemy.orm import defer
from sqlmodel import col, select

from w2slab.grader.codestore import SHA_RE
from w2slab.grader.db import Audit, Post, Researcher, Sealed, Snapshot, Submission, SubmissionCheck, now, read_session
from w2slab.grader.predictions import unpack_predictions
from w2slab.grader.db import Fingerprint, ResearchRun, TranscriptLine  # dashboard queries (H4)

if TYPE_CHECKING:
    from w2slab.grader.state import GraderState


def r3(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 3)



def _with_checks(q: Any) -> Any:
    """Join each submission's audit (without loading the stored predictions)."""
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


def _sealed_predictions(state: GraderState, sid: int) -> dict[int, Any]:
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


def snapshot_or_404(state: GraderState, sha: str) -> dict[str, Any]:
    """A snapshot's record; 422 for a malformed sha256, 404 when the code store lacks it."""
    if not SHA_RE.match(sha):
        raise HTTPException(422, "a snapshot is named by its sha256 (64 lowercase hex characters)")
    with read_session(state.engine) as s:
        row = s.exec(select(Snapshot, Researcher.name).join(Researcher, col(Snapshot.uploader_id) == col(Researcher.id))
                     .where(Snapshot.sha256 == sha)).first()
    if row is None:
        raise HTTPException(404, f"no snapshot {sha} in the code store")
    return snapshot_dict(*row)


# ---- dashboard queries (H4)


def evaluations(engine: Engine, testbed: str | None = None, researcher: str | None = None, offset: int = 0,
                limit: int = 100) -> tuple[list[dict[str, Any]], int]:
    """Dev evaluations, newest first, and their count: what the researcher was shown (``shown``,
    the Ladder's answer) and what the grader stored (``stored``, the answer before the Ladder) and
    the seed whose ladder it climbed."""
    with read_session(engine) as s:
        q = (select(Audit, Researcher.name, Fingerprint.answer, Fingerprint.ladder_key)
             .join(Researcher, col(Audit.researcher_id) == col(Researcher.id))
             .join(Fingerprint, col(Fingerprint.audit_id) == col(Audit.id), isouter=True).where(Audit.kind == "evaluate"))
        n = select(func.count()).select_from(Audit).join(Researcher, col(Audit.researcher_id) == col(Researcher.id)).where(
            Audit.kind == "evaluate")
        if testbed:
            q, n = q.where(Audit.testbed == testbed), n.where(Audit.testbed == testbed)
        if researcher:
            q, n = q.where(Researcher.name == researcher), n.where(Researcher.name == researcher)
        rows = s.exec(q.order_by(col(Audit.id).desc()).offset(offset).limit(limit)).all()
        total = int(s.exec(n).one())
    return [_evaluation(a, name, answer, key) for a, name, answer, key in rows], total


def _evaluation(a: Audit, name: str, answer: str | None, key: str | None) -> dict[str, Any]:
    return {"id": a.id, "researcher": name, "testbed": a.testbed, "created_at": a.created_at, "seed": key,
            "shown": json.loads(a.score or "{}"), "stored": json.loads(answer) if answer else None}


def pgr_history(engine: Engine, testbed: str, full: bool) -> list[dict[str, Any]]:
    """Per researcher (by name): dev evaluations (``full`` only: researchers never see each other's
    dev feedback), board submissions (the shown Ladder answer, or the exact board score with
    ``full``) and sealed scores (only once sealed), each with its time and interval."""
    digits = 3 if full else 2
    rnd = lambda x: None if x is None else round(float(x), digits)  # noqa: E731
    out: dict[str, dict[str, list[Any]]] = {}

    def who(name: str) -> dict[str, list[Any]]:
        return out.setdefault(name, {"dev": [], "board": [], "sealed": []})

    with read_session(engine) as s:
        if full:
            evs = s.exec(select(Audit.id, Audit.created_at, Audit.score, Researcher.name, Fingerprint.answer)
                         .join(Researcher, col(Audit.researcher_id) == col(Researcher.id))
                         .join(Fingerprint, col(Fingerprint.audit_id) == col(Audit.id), isouter=True)
                         .where(Audit.kind == "evaluate", Audit.testbed == testbed).order_by(col(Audit.id))).all()
        else:
            evs = []
        subs = s.exec(select(Submission, Researcher.name).join(Researcher, col(Submission.researcher_id) == col(Researcher.id))
                      .where(Submission.testbed == testbed).order_by(col(Submission.id))).all()
        sealed = s.exec(select(Sealed, Researcher.name).join(Researcher, col(Sealed.researcher_id) == col(Researcher.id))
                        .where(Sealed.testbed == testbed, col(Sealed.sealed_at).is_not(None))).all()
    for aid, t, score, name, answer in evs:
        stored = json.loads(answer) if answer else json.loads(score or "{}")
        if stored.get("pgr") is not None:
            who(name)["dev"].append({"id": aid, "t": t, "pgr": stored["pgr"], "shown": json.loads(score or "{}").get("pgr")})
    for sub, name in subs:
        if full:
            pgr, lo, hi = sub.pgr, sub.pgr_lo, sub.pgr_hi
        else:
            shown = json.loads(sub.shown or "{}")
            pgr, (lo, hi) = shown.get("pgr"), (shown.get("pgr_ci") or [None, None])
        if pgr is not None:
            who(name)["board"].append({"id": sub.id, "t": sub.created_at, "pgr": rnd(pgr), "lo": rnd(lo), "hi": rnd(hi)})
    for row, name in sealed:
        r = json.loads(row.result or "{}")
        if r.get("pgr") is not None:
            who(name)["sealed"].append({"id": row.submission_id, "t": row.sealed_at, "pgr": rnd(r["pgr"]), "lo": rnd(r.get("lo")),
                                        "hi": rnd(r.get("hi"))})
    return [{"name": n, **v} for n, v in sorted(out.items())]


def snapshots_page(engine: Engine, offset: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
    """One page of snapshots, newest first, and their count."""
    with read_session(engine) as s:
        rows = s.exec(select(Snapshot, Researcher.name).join(Researcher, col(Snapshot.uploader_id) == col(Researcher.id))
                      .order_by(col(Snapshot.created_at).desc()).offset(offset).limit(limit)).all()
        total = int(s.exec(select(func.count()).select_from(Snapshot)).one())
    return [snapshot_dict(snap, name) for snap, name in rows], total


def count_runs(engine: Engine) -> int:
    """Research runs pushed to this grader."""
    with read_session(engine) as s:
        return int(s.exec(select(func.count()).select_from(ResearchRun)).one())


_TRANSCRIPT_TOOL = re.compile(r'"tool":\s*"((?:[^"\\]|\\.){1,100})"')


def _like_escaped(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def transcript_page(engine: Engine, run_id: str, researcher: str, kind: str = "", tool: str = "", q: str = "", offset: int = 0,
               limit: int = 50) -> dict[str, Any]:
    """One page of a transcript (oldest first) filtered by entry kind, tool and a substring of the
    raw line; with the number of matching lines, of all lines, and the tools used."""
    base = [TranscriptLine.run_id == run_id, TranscriptLine.researcher == researcher]
    where = list(base)
    if kind:
        where.append(TranscriptLine.kind == kind)
    if tool:
        where.append(or_(col(TranscriptLine.line).like(_like_escaped(f'"tool": {json.dumps(tool)}'), escape="\\"),
                         col(TranscriptLine.line).like(_like_escaped(f'"tool":{json.dumps(tool)}'), escape="\\")))
    if q:
        where.append(col(TranscriptLine.line).like(_like_escaped(q), escape="\\"))
    with read_session(engine) as s:
        total = int(s.exec(select(func.count()).select_from(TranscriptLine).where(*base)).one())
        matching = int(s.exec(select(func.count()).select_from(TranscriptLine).where(*where)).one())
        rows = s.exec(select(TranscriptLine).where(*where).order_by(col(TranscriptLine.seq)).offset(offset).limit(limit)).all()
        heads = s.exec(select(func.substr(TranscriptLine.line, 1, 300)).where(
            *base, col(TranscriptLine.kind).in_(("tool_call", "tool_result"))).distinct()).all()
    tools = sorted({m.group(1) for h in heads if (m := _TRANSCRIPT_TOOL.search(h))})
    return {"total": total, "matching": matching, "tools": tools,
            "lines": [{"seq": r.seq, "kind": r.kind, "ts": r.ts, "entry": json.loads(r.line)} for r in rows]}


def experiment_lines(engine: Engine) -> list[tuple[str, str, int, float | None, str]]:
    """(run_id, researcher, seq, ts, line) of every transcript message that starts with
    ``experiment `` (how the offline researcher logs an experiment and its outcome), in order."""
    with read_session(engine) as s:
        return [tuple(r) for r in s.exec(  # type: ignore[misc]
            select(TranscriptLine.run_id, TranscriptLine.researcher, TranscriptLine.seq, TranscriptLine.ts, TranscriptLine.line)
            .where(TranscriptLine.kind == "message", col(TranscriptLine.line).like('%"content": "experiment %'))
            .order_by(col(TranscriptLine.run_id), col(TranscriptLine.researcher), col(TranscriptLine.seq))).all()]


def author_records(engine: Engine, author: str, before: float | None = None) -> dict[str, Any]:
    """What the grader returned to ``author`` (optionally up to time ``before``): each evaluation's
    shown answer (with the seed it climbed) and each submission's shown board answer, with their times."""
    with read_session(engine) as s:
        rid = s.exec(select(Researcher.id).where(Researcher.name == author)).first()
        if rid is None:
            return {"evaluations": {}, "submissions": {}}
        eq = (select(Audit.id, Audit.score, Fingerprint.ladder_key, Audit.created_at).join(Fingerprint, col(Fingerprint.audit_id) == col(Audit.id),
                                                                         isouter=True)
              .where(Audit.researcher_id == rid, Audit.kind == "evaluate"))
        sq = select(Submission.id, Submission.shown, Submission.created_at).where(Submission.researcher_id == rid)
        if before is not None:
            eq, sq = eq.where(Audit.created_at <= before), sq.where(Submission.created_at <= before)
        evs = s.exec(eq).all()
        subs = s.exec(sq).all()
    return {"evaluations": {i: {"pgr": json.loads(score or "{}").get("pgr"), "seed": key, "t": t} for i, score, key, t in evs},
            "submissions": {i: {"pgr": json.loads(shown or "{}").get("pgr"), "t": t} for i, shown, t in subs}}


def post_bodies(engine: Engine, ids: list[int]) -> dict[int, str]:
    """The bodies of these posts (the forum list leaves them out)."""
    with read_session(engine) as s:
        return dict(s.exec(select(Post.id, Post.body).where(col(Post.id).in_(ids))).all()) if ids else {}
