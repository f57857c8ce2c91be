"""The operator's routes: researchers (create, usage), research-integrity flags and the audit log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict

from w2slab.grader.auth import create_researcher
from w2slab.grader.deps import CurrentAdmin, Db, State
from w2slab.grader.queries import audit_log, researcher_usage
from w2slab.integrity.probes import all_flags

router = APIRouter(prefix="/admin", tags=["admin"])


class ResearcherIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


@router.post("/researchers", status_code=201)
def add_researcher(body: ResearcherIn, engine: Db, _: CurrentAdmin) -> dict[str, Any]:
    try:
        r, token = create_researcher(engine, body.name)
    except ValueError as e:
        raise HTTPException(409 if "already exists" in str(e) else 422, str(e)) from None
    return {"id": r.id, "name": r.name, "token": token}


@router.get("/researchers")
def list_researchers(state: State, _: CurrentAdmin) -> list[dict[str, Any]]:
    return researcher_usage(state)


@router.get("/flags")
def get_flags(state: State, _: CurrentAdmin, researcher: str | None = None) -> list[dict[str, Any]]:
    """Research-integrity flags: submission audits, refused requests and live probe detection."""
    return all_flags(state.engine, state.thresholds, researcher)


@router.get("/audit")
def get_audit(engine: Db, _: CurrentAdmin, limit: int = Query(200, ge=1, le=10_000), researcher: str | None = None,
              kind: str | None = None) -> list[dict[str, Any]]:
    return audit_log(engine, limit, researcher, kind)
