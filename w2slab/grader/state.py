"""The grader's settings (chosen by the operator) and its per-process state: the database
engine, authenticator, testbed scorers, code store, feedback guard and auditor.

``prepare(settings)`` builds the state: it migrates the database and computes (or loads from the
engine cache) the weak and ceiling baselines of every testbed served.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import Engine, update
from sqlmodel import col

from w2slab import paths
from w2slab.grader.auth import Authenticator, load_admin_token, load_server_secret
from w2slab.grader.codestore import CodeStore
from w2slab.grader.db import SubmissionCheck, make_engine, migrate, write_session
from w2slab.grader.scoring import Scorer, load_scorer
from w2slab.integrity.guard import FeedbackGuard
from w2slab.integrity.probes import ProbeThresholds

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

