"""``/api/me``, ``/api/testbeds`` and ``/api/seeds``: who am I, what is scored, with which seeds."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter

from w2slab.grader.deps import CurrentPrincipal, State
from w2slab.grader.queries import researcher_usage

router = APIRouter(tags=["testbeds"])


@router.get("/me")
def me(state: State, who: CurrentPrincipal) -> dict[str, Any]:
    if who.admin:
        return {"name": "admin", "role": "admin"}
    usage = next(u for u in researcher_usage(state) if u["id"] == who.id)
    return {"name": who.name, "role": "researcher", "usage": usage}


@router.get("/testbeds")
def testbeds(state: State) -> list[dict[str, Any]]:
    return [{"name": sc.name, "kind": sc.kind, "test_rows": sc.n_test, "dev_rows": len(sc.dev), "board_rows": len(sc.board),
             "sealed_rows": len(sc.sealed), "sealed_mde_pgr": None if math.isnan(m := sc.sealed_mde()) else round(m, 2),
             "seeds": sc.seeds}
            for sc in state.scorers.values()]


@router.get("/seeds")
async def seeds(state: State, testbed: str) -> dict[str, Any]:
    sc = state.scorer(testbed)
    return {"testbed": sc.name, "seeds": sc.seeds}
