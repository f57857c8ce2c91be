"""The grader's HTTP API, one router per resource, all under ``/api`` and all declaring the one
error shape (:data:`w2slab.grader.deps.ERRORS`); shared dependencies are in ``w2slab.grader.deps``."""

from __future__ import annotations

from fastapi import APIRouter

from w2slab.grader.deps import ERRORS
from w2slab.grader.routes import admin, boards, evaluations, posts, research_runs, snapshots, submissions, testbeds

RESOURCES = (testbeds, evaluations, submissions, boards, snapshots, posts, admin, research_runs)
"""The route modules, in the order their routes are matched and published."""


def api_router() -> APIRouter:
    api = APIRouter(prefix="/api", responses=ERRORS)  # every route declares the one error shape
    for module in RESOURCES:
        api.include_router(module.router)
    return api
