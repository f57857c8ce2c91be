"""Typed dependencies and inputs shared by the grader's routes (``w2slab.grader.routes``):

- ``State``, ``Db``: the process's :class:`GraderState` and its database engine;
- ``CurrentPrincipal``, ``CurrentResearcher``, ``CurrentAdmin``: who is asking (403 for the wrong role);
- ``Budgets``: the asking researcher's evaluation and submission budgets;
- ``ScoringLane``: the one worker thread per process that evaluations run on;
- ids and offsets bounded to the database's integer range (a signed 64-bit INTEGER in SQLite and
  PostgreSQL's BIGINT), and the one error shape every route declares.

The dependency functions are ``async`` (they never block), so FastAPI calls them on the event
loop instead of a worker thread.

Every error the grader sends is ``{"detail": "<one line>"}``, request validation (422) included;
:data:`ERRORS` declares that body for the status codes the API uses, so the published schema
(``/openapi.json``) matches what clients receive.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from w2slab.grader.auth import Principal
from w2slab.grader.budget import Budget
from w2slab.grader.state import GraderState

DB_INT_MAX = 2**63 - 1  # the largest value an INTEGER column holds (SQLite, PostgreSQL BIGINT)

DbId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="a database id (1 .. 2^63-1)")]
"""A row id in a route path."""

Offset = Annotated[int, Query(ge=0, le=DB_INT_MAX, description="rows to skip (0 .. 2^63-1)")]
"""How many rows a listing skips."""

BodyId = Annotated[int, Field(ge=1, le=DB_INT_MAX)]
"""A row id inside a request body (e.g. a post's ``submission_ids``)."""


class ErrorOut(BaseModel):
    """Every error response: one line saying what was wrong (and, for 429, when to retry)."""

    detail: str = Field(description="what was wrong, in one line")


_WHY = {
    400: "the request body could not be read (e.g. not UTF-8)",
    401: "missing or invalid bearer token",
    403: "the token may not do this (researcher vs admin)",
    404: "no such testbed, submission, post or snapshot",
    409: "conflicts with stored state (duplicate, near-duplicate, gap)",
    413: "request body over the size limit",
    422: "invalid request: the detail names each bad field",
    429: "budget or rate limit used up; see the Retry-After header",
}
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut, "description": why} for code, why in _WHY.items()}
"""``responses=`` for every API route: the error codes it may answer with, all as :class:`ErrorOut`."""

SHA256_PATTERN = r"^[0-9a-f]{64}$"
Sha256 = Annotated[str, Path(pattern=SHA256_PATTERN, description="a snapshot's sha256 (64 lowercase hex characters)")]
"""A snapshot named in a route path."""


# ---------------------------------------------------------------- dependencies


async def get_state(request: Request) -> GraderState:
    return request.app.state.grader


State = Annotated[GraderState, Depends(get_state)]
"""The grader's state in this process."""


async def get_engine(state: State) -> Engine:
    return state.engine


Db = Annotated[Engine, Depends(get_engine)]
"""The grader's database engine."""


async def get_principal(request: Request) -> Principal:
    return request.state.principal  # set by AuthMiddleware for every /api/ request


async def get_researcher(request: Request) -> Principal:
    p: Principal = request.state.principal
    if p.admin:
        raise HTTPException(403, "this action needs a researcher token, not the admin token")
    return p


async def get_admin(request: Request) -> Principal:
    p: Principal = request.state.principal
    if not p.admin:
        raise HTTPException(403, "this action needs the admin token")
    return p


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
"""Whoever sent the bearer token: a researcher or the admin."""
CurrentResearcher = Annotated[Principal, Depends(get_researcher)]
"""A researcher (403 for the admin token)."""
CurrentAdmin = Annotated[Principal, Depends(get_admin)]
"""The admin (403 for a researcher token)."""


async def get_budget(state: State, who: CurrentResearcher) -> Budget:
    return Budget(state, who)


Budgets = Annotated[Budget, Depends(get_budget)]
"""The asking researcher's budgets: ``.check(kind)`` and ``.charge(kind, ...)``."""


SCORING_THREADS = 1


async def get_scoring_lane(request: Request) -> anyio.CapacityLimiter:
    lane = getattr(request.app.state, "scoring_lane", None)
    if lane is None:  # made on the event loop, once per app (a limiter belongs to its loop)
        lane = request.app.state.scoring_lane = anyio.CapacityLimiter(SCORING_THREADS)
    return lane


ScoringLane = Annotated[anyio.CapacityLimiter, Depends(get_scoring_lane)]
"""The threads evaluations run on, one per process: each one queues for the database's write lock
anyway, and with fewer threads competing for the GIL the lock's holder finishes sooner (with the
default pool of 40, 2 workers and 50 clients served 250-320 evaluations/s on 2 cores; see
``benchmarks/grader_load.py``)."""
