"""Typed request inputs shared by the grader's routes: ids and offsets bounded to the database's
integer range (a signed 64-bit INTEGER in SQLite and PostgreSQL's BIGINT), and the one error
shape every route declares.

Every error the grader sends is ``{"detail": "<one line>"}``, request validation (422) included;
:data:`ERRORS` declares that body for the status codes the API uses, so the published schema
(``/openapi.json``) matches what clients receive.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, Field

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
