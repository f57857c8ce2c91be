"""``/healthz``: the readiness probe (200 once start-up is done; lists the testbeds served)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from w2slab.grader.deps import State

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz(state: State) -> dict[str, Any]:
    return {"ok": True, "testbeds": sorted(state.scorers)}
