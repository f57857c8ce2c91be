"""The grader's FastAPI app factory: evaluation on the dev third of each test set, submissions
scored on the board third, the sealed third scored once per researcher
(:mod:`w2slab.grader.scoring`), leaderboard, forum, code store, audit log and the dashboard.

Routes live in :mod:`w2slab.grader.routes` (one router per resource), their shared dependencies
in :mod:`w2slab.grader.deps`, the read-only queries in :mod:`w2slab.grader.queries`, settings and
start-up in :mod:`w2slab.grader.state`. ``create_app(settings)`` builds the app; start-up
migrates the database and computes (or loads from the engine cache) every testbed's baselines.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from w2slab.dashboard.views import mount_dashboard
from w2slab.grader.auth import AuthMiddleware
from w2slab.grader.errors import install_error_handlers
from w2slab.grader.routes import api_router, docs, health
from w2slab.grader.state import SETTINGS_ENV, GraderState, Settings, prepare, start_auditor

__all__ = ["SETTINGS_ENV", "GraderState", "Settings", "app_from_env", "create_app", "prepare"]


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

    # /docs and /redoc come from w2slab.grader.routes.docs, with their assets served here (no CDN)
    app = FastAPI(title="w2slab grader", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.grader = state
    app.add_middleware(AuthMiddleware, get_auth=lambda: app.state.grader.auth)
    install_error_handlers(app)
    app.include_router(api_router())
    app.include_router(health.router)
    app.include_router(docs.router)
    mount_dashboard(app)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings come as JSON in ``W2SLAB_GRADER_SETTINGS``."""
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]), recover=False)
