"""Budgets: every scored request (an evaluation or a submission) spends one unit of the
researcher's hourly and total budget, in the same transaction as its audit-log row."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from sqlalchemy import text
from sqlmodel import Session

from w2slab.grader.auth import Principal
from w2slab.grader.db import Submission, dumps, now, read_session, write_session
from w2slab.grader.state import GraderState


def sha_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# The hot path (every evaluation) runs these fixed SQL statements on the session's connection:
# no ORM objects and no statement building per request (SQLAlchemy caches a text statement's
# compiled form by its string). Table and column names are those of w2slab.grader.db.
_USED = {"evaluate": text("SELECT evaluations FROM researcher WHERE id = :rid"),
         "submit": text("SELECT submissions FROM researcher WHERE id = :rid")}
_USED_PG = {k: text(f"{v.text} FOR UPDATE") for k, v in _USED.items()}
_SPEND = {"evaluate": text("UPDATE researcher SET evaluations = evaluations + 1 WHERE id = :rid"),
          "submit": text("UPDATE researcher SET submissions = submissions + 1 WHERE id = :rid")}
_RECENT = text("SELECT count(*), min(created_at) FROM audit WHERE researcher_id = :rid AND kind = :kind AND created_at > :since")
_AUDIT = text("INSERT INTO audit (researcher_id, kind, testbed, created_at, predictions_sha256, score) "
              "VALUES (:rid, :kind, :testbed, :t, :sha, :score) RETURNING id")


Run = Callable[[Any, dict[str, Any]], Any]
"""Runs one of the fixed statements above in the open transaction; its first row (None for an UPDATE)."""


def _runner(conn: Any) -> Run:
    """On SQLite, the transaction's own DBAPI cursor runs the statement's SQL: the same SQL in the
    same transaction, without SQLAlchemy's per-statement overhead (about a third of the serial
    section). Elsewhere (PostgreSQL) the Core connection runs it."""
    if conn.dialect.name == "sqlite":
        cursor = conn.connection.driver_connection.cursor()
        return lambda stmt, params: cursor.execute(stmt.text, params).fetchone()

    def run(stmt: Any, params: dict[str, Any]) -> Any:
        result = conn.execute(stmt, params)
        return result.first() if result.returns_rows else None
    return run


def charge(
    state: GraderState, who: Principal, kind: str, testbed: str, pred_sha: str, score: dict[str, Any] | Callable[..., dict[str, Any]],
    add: Callable[[Session], Any] | None = None, after: Callable[[Session, int, Any], None] | None = None,
) -> tuple[int, int, int, Any]:
    """Check and spend one unit of this researcher's budget for ``kind``, record the audit row
    (and whatever ``add`` writes) in the same transaction. ``score`` may be ``f(session, extra)``,
    computed inside the transaction; ``after(session, audit_id, extra)`` runs once the audit row
    exists. Returns audit id, hour left, total left, and ``add``'s value (or the score, when
    ``score`` is computed and nothing is added)."""
    st = state.settings
    per_hour, total = (st.eval_per_hour, st.eval_total) if kind == "evaluate" else (st.submit_per_hour, st.submit_total)
    t = now()
    with write_session(state.engine) as s:
        conn = s.connection()
        run = _runner(conn)
        used = run((_USED_PG if conn.dialect.name == "postgresql" else _USED)[kind], {"rid": who.id})[0]
        n = _budget_check(run, state, who, kind, used, t)
        run(_SPEND[kind], {"rid": who.id})
        extra = add(s) if add else None
        computed = callable(score)
        if callable(score):
            score = score(s, extra)
        if isinstance(extra, Submission):
            s.flush()
            score = {"submission_id": extra.id, **score}
        row = {"rid": who.id, "kind": kind, "testbed": testbed, "t": t, "sha": pred_sha, "score": dumps(score)}
        audit_id = run(_AUDIT, row)[0]
        if after:
            after(s, audit_id, extra)
        s.commit()
        return audit_id, per_hour - n - 1, total - used - 1, (score if computed and add is None else extra)


def _budget_check(run: Run, state: GraderState, who: Principal, kind: str, used: int, t: float) -> int:
    """Raise 429 when ``who`` has no ``kind`` budget left; else the number used in the last hour."""
    st = state.settings
    per_hour, total = (st.eval_per_hour, st.eval_total) if kind == "evaluate" else (st.submit_per_hour, st.submit_total)
    if used >= total:
        raise HTTPException(429, f"total {kind} budget used up ({total}); it does not reset: ask the operator to raise it")
    n, oldest = run(_RECENT, {"rid": who.id, "kind": kind, "since": t - 3600})
    if n >= per_hour:
        wait = max(1, math.ceil(oldest + 3600 - t))
        raise HTTPException(429, f"hourly {kind} budget used up ({per_hour} per hour); retry in {wait} s",
                            headers={"Retry-After": str(wait)})
    return int(n)


def check_budget(state: GraderState, who: Principal, kind: str) -> None:
    """The budget check before anything else looks at a request: a request refused for its
    content (a near-duplicate submission) is refused only while budget is left."""
    with read_session(state.engine) as s:
        run = _runner(s.connection())
        _budget_check(run, state, who, kind, run(_USED[kind], {"rid": who.id})[0], now())


@dataclass
class Budget:
    """One researcher's budgets, as a route sees them (``deps.Budgets``)."""

    state: GraderState
    who: Principal

    def check(self, kind: str) -> None:
        check_budget(self.state, self.who, kind)

    def charge(self, kind: str, testbed: str, pred_sha: str, score: dict[str, Any] | Callable[..., dict[str, Any]],
               add: Callable[[Session], Any] | None = None,
               after: Callable[[Session, int, Any], None] | None = None) -> tuple[int, int, int, Any]:
        return charge(self.state, self.who, kind, testbed, pred_sha, score, add, after)
