"""Grader state: SQLModel tables, the engine (SQLite in WAL mode or PostgreSQL by URL) and migrations.

Timestamps are UNIX seconds (floats). JSON-valued columns hold compact JSON text so the
same schema works on both databases. The schema is created by the alembic revision in
``migrations/``, never by ``create_all``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on Windows: writers of several processes then meet at SQLite's busy handler
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import Column, Engine, Index, LargeBinary, UniqueConstraint, create_engine, event
from sqlmodel import Field, Session, SQLModel

from w2slab import paths

POST_KINDS = ("result", "hypothesis", "insight", "negative_result", "question")


def now() -> float:
    return time.time()


class Researcher(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: float = Field(default_factory=now)
    evaluations: int = 0  # total evaluations used (the budget counter)
    submissions: int = 0


class Audit(SQLModel, table=True):
    """One scored request: who, when, what (sha256 of the predictions) and the score returned."""

    __table_args__ = (Index("ix_audit_who", "researcher_id", "kind", "created_at"),)
    id: int | None = Field(default=None, primary_key=True)
    researcher_id: int = Field(foreign_key="researcher.id")
    kind: str = Field(max_length=16)  # evaluate | submit
    testbed: str = Field(max_length=200)
    created_at: float = Field(default_factory=now, index=True)
    predictions_sha256: str = Field(max_length=64)
    score: str = "{}"  # JSON of what was returned


class Snapshot(SQLModel, table=True):
    sha256: str = Field(primary_key=True, max_length=64)
    uploader_id: int = Field(foreign_key="researcher.id", index=True)
    parent_sha256: str | None = Field(default=None, foreign_key="snapshot.sha256", max_length=64)
    size: int
    unpacked_size: int
    n_files: int
    note: str = Field(default="", max_length=500)
    created_at: float = Field(default_factory=now)


class Submission(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    researcher_id: int = Field(foreign_key="researcher.id", index=True)
    testbed: str = Field(max_length=200, index=True)
    method_name: str = Field(max_length=200)
    snapshot_sha256: str = Field(foreign_key="snapshot.sha256", max_length=64)
    created_at: float = Field(default_factory=now)
    seeds: str  # JSON list
    pgr: float | None = None  # None where the ceiling does not beat the weak model
    pgr_lo: float | None = None
    pgr_hi: float | None = None
    pgr_se: float | None = None
    transfer_acc: float
    weak_acc: float
    ceiling_acc: float
    per_seed: str  # JSON list of {seed, transfer_acc, pgr}
    predictions_sha256: str = Field(max_length=64)
    # the numbers above are the real board scores (operator only); researchers see ``shown``:
    # the submission Ladder's answer, rounded (w2slab.integrity.guard.FeedbackGuard.board_answer)
    shown: str = "{}"


class Sealed(SQLModel, table=True):
    """A researcher's final pick on a testbed and, once sealed, its one score on the sealed third."""

    __table_args__ = (UniqueConstraint("researcher_id", "testbed", name="uq_sealed_pick"),)
    id: int | None = Field(default=None, primary_key=True)
    researcher_id: int = Field(foreign_key="researcher.id", index=True)
    testbed: str = Field(max_length=200, index=True)
    submission_id: int = Field(foreign_key="submission.id")
    chosen_by: str = Field(default="researcher", max_length=16)  # researcher | board (best board score, no pick made)
    picked_at: float = Field(default_factory=now)
    sealed_at: float | None = None  # None: picked, not yet scored
    result: str = "{}"  # JSON: the PGRInterval on the sealed rows


class Post(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    author_id: int = Field(foreign_key="researcher.id", index=True)
    kind: str = Field(max_length=32, index=True)
    title: str = Field(max_length=300)
    body: str
    metrics: str | None = None  # JSON object
    submission_ids: str = "[]"  # JSON list of Submission ids
    snapshot_shas: str = "[]"  # JSON list of Snapshot sha256
    created_at: float = Field(default_factory=now, index=True)
    score: int = 0  # sum of votes
    n_comments: int = 0


class Comment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    post_id: int = Field(foreign_key="post.id", index=True)
    author_id: int = Field(foreign_key="researcher.id")
    body: str
    created_at: float = Field(default_factory=now)


class Vote(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("post_id", "researcher_id", name="uq_vote_once"),)
    id: int | None = Field(default=None, primary_key=True)
    post_id: int = Field(foreign_key="post.id", index=True)
    researcher_id: int = Field(foreign_key="researcher.id")
    value: int
    created_at: float = Field(default_factory=now)


class Fingerprint(SQLModel, table=True):
    """The hard prediction vector of one scored request, packed 8 rows per byte (``np.packbits``):
    for ``evaluate`` the test rows in order; for ``submit`` every required seed's vector, one after
    the other. Distances to earlier vectors on the same testbed are computed once, at insert, on the
    rows that were scored (dev rows for evaluations, final rows for submissions): they drive the
    dev-answer reuse and the probe detector (:mod:`w2slab.integrity.probes`)."""

    __table_args__ = (Index("ix_fingerprint_scan", "testbed", "kind", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    audit_id: int | None = Field(default=None, foreign_key="audit.id", index=True)
    researcher_id: int = Field(foreign_key="researcher.id", index=True)
    testbed: str = Field(max_length=200)
    kind: str = Field(max_length=16)  # evaluate | submit
    created_at: float = Field(default_factory=now)
    n_rows: int  # rows per vector
    bits: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    anchor_id: int | None = None  # evaluate: the earlier fingerprint whose answer was reused
    answer: str = "{}"  # evaluate: the JSON answer (the real one: the Ladder may have shown the best's)
    ladder_key: str | None = Field(default=None, max_length=32)  # evaluate: the seed whose ladder it climbed
    nearest_own: int | None = None  # Hamming distance (scored rows) to this researcher's nearest earlier vector
    nearest_own_id: int | None = None
    nearest_other: int | None = None  # ... and to anyone else's
    nearest_other_id: int | None = None
    nearest_other_researcher_id: int | None = None
    flipped: str = "[]"  # JSON: the test rows that differ from the nearest own vector, when at most a few


class SubmissionCheck(SQLModel, table=True):
    """The integrity audit of one submission (:mod:`w2slab.integrity.audit`)."""

    submission_id: int = Field(primary_key=True, foreign_key="submission.id")
    status: str = Field(default="queued", max_length=16, index=True)  # queued | running | done | error
    created_at: float = Field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    predictions: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # gzip JSON {seed: [p1, ...]}
    result: str = "{}"  # JSON: checks and evidence
    teacher_free: bool = False
    flags: str = "[]"  # JSON list of flag kinds
    post_id: int | None = None  # the forum thread of the audit


class Flag(SQLModel, table=True):
    """A research-integrity flag raised by a submission audit or a refused request. (Probe flags
    from the evaluation history are computed live, see :func:`w2slab.integrity.probes.probe_flags`.)"""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=200, unique=True)  # one flag per key (re-raising updates it)
    researcher_id: int | None = Field(default=None, foreign_key="researcher.id", index=True)
    submission_id: int | None = Field(default=None, foreign_key="submission.id", index=True)
    testbed: str = Field(default="", max_length=200)
    kind: str = Field(max_length=40)
    severity: str = Field(max_length=16)  # high | warning
    message: str
    evidence: str = "{}"  # JSON
    created_at: float = Field(default_factory=now, index=True)


class ResearchRun(SQLModel, table=True):
    """The latest status.json of one ``w2slab research`` session, pushed by its launcher."""

    run_id: str = Field(primary_key=True, max_length=100)
    sandboxed: bool = True  # False: the run used --unsafe-no-sandbox
    state: str = Field(default="", max_length=32)
    testbed: str = Field(default="", max_length=200)
    status: str = "{}"  # JSON: the whole status.json (researchers, totals, budgets, summary)
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now, index=True)


class TranscriptLine(SQLModel, table=True):
    """One line of a researcher's transcript.jsonl (a message, tool call, tool result or event)."""

    __table_args__ = (UniqueConstraint("run_id", "researcher", "seq", name="uq_transcript_seq"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=100)
    researcher: str = Field(max_length=64)
    seq: int  # 0-based line number within this run's part of the transcript
    kind: str = Field(default="", max_length=32)  # message | tool_call | tool_result | event | ...
    ts: float | None = None
    line: str  # the JSON line as written


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def default_url() -> str:
    return f"sqlite:///{paths.home() / 'grader' / 'grader.db'}"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


PG_WRITE_LOCK = 74192  # the PostgreSQL advisory lock that write sessions take (migrations add 74193)


def make_engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (default: SQLite under W2SLAB_HOME). On SQLite: WAL mode,
    a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for write sessions. On PostgreSQL,
    write sessions take one transaction-scoped advisory lock first, so they queue the same way
    (the count-then-insert and get-or-create steps rely on it)."""
    url = url or default_url()
    if not url.startswith("sqlite"):
        engine = create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)
        if engine.dialect.name == "postgresql":

            @event.listens_for(engine, "begin")
            def _pg_begin(conn: Any) -> None:  # write sessions queue, as under SQLite's BEGIN IMMEDIATE
                if conn.get_execution_options().get("immediate", False):
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")

        return engine
    if ":memory:" not in url and url.count("///"):
        Path(url.split("///", 1)[1]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=32, max_overflow=16)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _begin)
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def read_session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


_WRITE_LOCK = threading.Lock()
_LOCK_FILES: dict[str, Any] = {}  # database -> its open write-lock file


def _same_file(handle: Any, path: str) -> bool:
    try:
        a, b = os.fstat(handle.fileno()), os.stat(path)
    except (OSError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive ``flock`` on ``<database>-writelock``, shared by every process that writes
    this SQLite file: waiters sleep in the kernel and wake the moment the holder releases it,
    instead of polling in SQLite's busy handler (which sleeps up to 100 ms between tries)."""
    database = engine.url.database
    if fcntl is None or not database or database == ":memory:":
        yield
        return
    path = f"{database}-writelock"
    handle = _LOCK_FILES.get(path)  # opened once per process (callers hold _WRITE_LOCK)
    if handle is None or not _same_file(handle, path):  # new, or the file was replaced (a new database)
        if handle is not None:
            handle.close()
        handle = _LOCK_FILES[path] = open(path, "a+b")  # noqa: SIM115 - kept open for the process's life
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction takes the write lock up front (SQLite ``BEGIN IMMEDIATE``),
    so concurrent writers queue instead of failing on lock upgrade (PostgreSQL: an advisory lock).
    On SQLite, writers queue first on a fair in-process lock and then on a file lock shared by
    all processes (uvicorn workers, the CLI), so at most one waits on SQLite's own lock and its
    sleeping busy handler stays out of the way."""
    if not is_sqlite(engine):
        with Session(engine.execution_options(immediate=True), expire_on_commit=False) as session:
            yield session
        return
    with _WRITE_LOCK, _file_lock(engine), Session(engine.execution_options(immediate=True), expire_on_commit=False) as session:
        yield session


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest alembic revision (safe to call from several workers)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.execution_options(immediate=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(74193)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
