"""Grader commands: ``serve``, ``researcher add|list`` and ``audit`` (a typer app to mount)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The grader: evaluation server, leaderboard, forum, code store and dashboard.",
                  no_args_is_help=True, add_completion=False)
researcher_app = typer.Typer(help="Researchers and their tokens.", no_args_is_help=True)
app.add_typer(researcher_app, name="researcher")
console = Console()
err = Console(stderr=True)

DbOpt = Annotated[Optional[str], typer.Option("--db", help="Database URL (default: SQLite under W2SLAB_HOME/grader; "
                                                            "or postgresql+psycopg://user:pw@host/db).")]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


PARENT_ENV = "W2SLAB_GRADER_PARENT"  # the supervising `serve` process of uvicorn workers


def _sqlite_file(db: str | None) -> Path | None:
    """The file of a SQLite database URL (None: not SQLite, or in memory); a bad URL is a user error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from w2slab.grader.db import default_url

    try:
        url = make_url(db or default_url())
    except ArgumentError:
        _fail(f"--db: '{db}' is not a database URL (e.g. sqlite:////path/grader.db or postgresql+psycopg://user:pw@host/db)")
        raise
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser()


def _engine(db: str | None, create: bool = False):  # type: ignore[no-untyped-def]
    """The grader database, migrated. Without ``create`` (commands that only read), a SQLite file
    that does not exist is refused instead of being created empty; with it, only its folder must exist
    (the default folder under W2SLAB_HOME is made)."""
    from w2slab.grader.db import make_engine, migrate

    path = _sqlite_file(db)
    if path is not None and not create and not path.is_file():
        _fail(f"no grader database at {path}: start the grader first (`w2slab serve`), or name it with --db")
    if path is not None and create and db is not None and not path.parent.is_dir():
        _fail(f"--db: the folder {path.parent} does not exist (create it first, or fix the path)")
    engine = make_engine(db)
    migrate(engine)
    return engine


@app.command()
def serve(
    testbed: Annotated[list[str], typer.Option("--testbed", "-t", help="Testbed to serve: a name, a folder, or NAME=FOLDER (repeatable).")],
    weak: Annotated[Optional[str], typer.Option("--weak", help="Weak-model overrides for the baselines.")] = None,
    strong: Annotated[Optional[str], typer.Option("--strong", help="Strong-model overrides for the baselines.")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Baseline seeds: '1-5' or '1,2,3'.")] = "1-5",
    submit_seeds: Annotated[int, typer.Option("--submit-seeds", help="How many seeds a submission must cover (>= 5; drawn from a server secret).")] = 5,
    db: DbOpt = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8765,
    workers: Annotated[int, typer.Option("--workers", min=1, help="uvicorn worker processes (they exit with this process).")] = 1,
    eval_per_hour: Annotated[int, typer.Option("--eval-per-hour", help="Evaluations per researcher per hour.")] = 60,
    eval_total: Annotated[int, typer.Option("--eval-total", help="Evaluations per researcher in total.")] = 2000,
    submit_per_hour: Annotated[int, typer.Option("--submit-per-hour")] = 10,
    submit_total: Annotated[int, typer.Option("--submit-total")] = 500,
    post_per_hour: Annotated[int, typer.Option("--post-per-hour", min=1, help="Forum posts per researcher per hour.")] = 120,
    comment_per_hour: Annotated[int, typer.Option("--comment-per-hour", min=1, help="Forum comments per researcher per hour.")] = 300,
    vote_per_hour: Annotated[int, typer.Option("--vote-per-hour", min=1, help="Forum votes per researcher per hour.")] = 600,
    max_archive_mb: Annotated[float, typer.Option("--max-archive-mb", help="Snapshot size cap, compressed.")] = 5.0,
    max_unpacked_mb: Annotated[float, typer.Option("--max-unpacked-mb", help="Snapshot size cap, uncompressed.")] = 50.0,
    baseline_workers: Annotated[Optional[int], typer.Option("--baseline-workers", help="Processes for computing baselines.")] = None,
    dashboard_login: Annotated[bool, typer.Option("--dashboard-login", help="Require the admin-token login even on loopback.")] = False,
    dev_noise: Annotated[float, typer.Option("--dev-noise", help="Dev-answer noise in multiples of the dev accuracy's sampling error (0: off).")] = 1.0,
    dev_reuse_radius: Annotated[Optional[int], typer.Option("--dev-reuse-radius", help="Answer vectors within N dev rows of an earlier one with its answer (default: max(2, 1%); 0: off).")] = None,
    submit_dup_radius: Annotated[Optional[int], typer.Option("--submit-dup-radius", help="Refuse submissions 1..N final rows from an earlier one (default: auto; 0: off).")] = None,
    dev_ladder: Annotated[Optional[float], typer.Option("--dev-ladder", help="Ladder margin (Blum & Hardt 2015): an evaluation gets its own numbers only when it beats the researcher's best dev accuracy by more than this; otherwise the best's numbers again, with improved=false (default: one sampling error of the dev accuracy, 0.5/sqrt(dev rows); 0: off).")] = None,
    dup_rows: Annotated[str, typer.Option("--dup-rows", help="Rows the submission near-duplicate check compares: 'all' (default; a refusal reveals nothing about which rows are scored) or 'board' (the scored rows only: for red-team comparison).")] = "all",
    board_ladder: Annotated[Optional[float], typer.Option("--board-ladder", help="The submission Ladder's margin in board accuracy: a submission shows its own (rounded) board numbers only when it beats the researcher's best by more than this (default: one sampling error of the board accuracy, 0.5/sqrt(board rows); 0: off, exact numbers, for red-team comparison only).")] = None,
    dev_ladder_seeds: Annotated[int, typer.Option("--dev-ladder-seeds", help="Ladders per researcher and testbed: one per seed named in evaluations (the information a researcher can draw grows with this).")] = 5,
    audits: Annotated[bool, typer.Option("--audits/--no-audits", help="Audit every submission in the sandbox (re-run, teacher dependence, label access, generalisation).")] = True,
    audit_workers: Annotated[Optional[int], typer.Option("--audit-workers", help="Audit threads per server process (default: min(2, CPUs); with 2 or more, no researcher holds more than all but one).")] = None,
    audit_seeds: Annotated[int, typer.Option("--audit-seeds", help="Seeds for the teacher-dependence and generalisation re-runs.")] = 2,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
) -> None:
    """Run the grader: compute or load baselines, migrate the database, then serve the API and dashboard."""
    import uvicorn
    from pydantic import ValidationError

    from w2slab.cliutil import parse_seeds
    from w2slab.grader.app import SETTINGS_ENV, Settings, create_app, prepare
    from w2slab.grader.auth import admin_token_file
    from w2slab.grader.workers import balanced_available, run_workers
    from w2slab.testbeds.format import TestbedError

    try:
        settings = Settings(
            testbeds=testbed, weak=weak, strong=strong, baseline_seeds=parse_seeds(seeds), submit_seed_count=submit_seeds,
            db_url=db, eval_per_hour=eval_per_hour, eval_total=eval_total, submit_per_hour=submit_per_hour,
            submit_total=submit_total, post_per_hour=post_per_hour, comment_per_hour=comment_per_hour,
            vote_per_hour=vote_per_hour, max_archive_bytes=int(max_archive_mb * 2**20),
            max_unpacked_bytes=int(max_unpacked_mb * 2**20), baseline_workers=baseline_workers,
            dashboard_open_on_loopback=not dashboard_login, dev_noise=dev_noise, dev_reuse_radius=dev_reuse_radius,
            submit_dup_radius=submit_dup_radius, dev_ladder=dev_ladder, dev_ladder_seeds=dev_ladder_seeds, board_ladder=board_ladder, dup_rows=dup_rows, audits=audits, audit_seeds=audit_seeds,
            **({} if audit_workers is None else {"audit_workers": audit_workers}),
        )
        start = time.perf_counter()
        path = _sqlite_file(db) if db else None
        if path is not None and not path.parent.is_dir():
            _fail(f"--db: the folder {path.parent} does not exist (create it first, or fix the path)")
        _check_port(host, port)  # before the baselines, which may take long
        state = prepare(settings)  # once here, so workers start from the cache and a migrated database
    except typer.Exit:  # already reported (click's Exit is a RuntimeError)
        raise
    except ValidationError as e:  # a bad option value: name the option, one line
        _fail("; ".join(f"--{'-'.join(map(str, x['loc'])).replace('_', '-')}: {x['msg']}" for x in e.errors()))
        return
    except (ValueError, TestbedError, RuntimeError) as e:
        _fail(str(e))
        return
    for sc in state.scorers.values():
        weak_acc, ceiling_acc = sc.baseline(sc.board)
        console.print(f"{sc.name}: {sc.n_test} test rows ({len(sc.dev)} dev), weak {weak_acc:.3f} / "
                      f"ceiling {ceiling_acc:.3f} on the leaderboard rows; submission seeds {sc.seeds}",
                      soft_wrap=True, highlight=False)
    _check_port(host, port)  # again: "ready" is printed only when the port can be served
    who = "W2SLAB_ADMIN_TOKEN" if os.environ.get("W2SLAB_ADMIN_TOKEN") else str(admin_token_file())
    console.print(f"ready in {time.perf_counter() - start:.1f} s; admin token: {who}; http://{host}:{port}/", highlight=False, soft_wrap=True)
    opts = {"host": host, "port": port, "log_level": log_level, "timeout_graceful_shutdown": 5}
    if workers <= 1:
        uvicorn.run(create_app(settings, state), **opts)  # type: ignore[arg-type]
        return
    state.engine.dispose()
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    os.environ[PARENT_ENV] = str(os.getpid())
    if not balanced_available():  # no SO_REUSEPORT: uvicorn's workers on one shared socket
        uvicorn.run("w2slab.grader.cli:worker_app", factory=True, workers=workers, **opts)  # type: ignore[arg-type]
        return
    del opts["host"], opts["port"]  # the sockets are bound here, one per worker
    raise typer.Exit(run_workers("w2slab.grader.cli:worker_app", host, port, workers, opts))


def _check_port(host: str, port: int) -> None:
    """Fail (one line) when ``host:port`` cannot be listened on, e.g. another server holds it.
    Binds as uvicorn does (SO_REUSEADDR), so a port left in TIME_WAIT counts as free."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e.strerror or e} (another server there? pick another --port)")


def worker_app():  # type: ignore[no-untyped-def]
    """uvicorn's factory for ``--workers N``: the grader app, in a worker that exits when its
    supervising ``serve`` process dies (even by SIGKILL), so no orphan keeps the port."""
    from w2slab.grader.app import app_from_env

    die_with_parent(int(os.environ[PARENT_ENV]))
    return app_from_env()


def die_with_parent(parent: int, poll: float = 0.5) -> None:
    """SIGTERM this process (uvicorn's graceful stop; a hard exit 10 s later) once ``parent`` is gone:
    Linux's PR_SET_PDEATHSIG where available, and a thread watching the parent pid everywhere."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os._exit(1)

    threading.Thread(target=watch, name="w2slab-parent-watch", daemon=True).start()


@researcher_app.command("add")
def researcher_add(name: Annotated[str, typer.Argument(help="Researcher name.")], db: DbOpt = None) -> None:
    """Create a researcher and print their token (shown once; only its hash is stored)."""
    from w2slab.grader.auth import create_researcher

    try:
        r, token = create_researcher(_engine(db, create=True), name)
    except ValueError as e:
        _fail(str(e))
        return
    err.print(f"researcher '{r.name}' created; their token (shown once, store it now):")
    print(token)


@researcher_app.command("list")
def researcher_list(db: DbOpt = None) -> None:
    """Researchers with their query use."""
    from sqlmodel import select

    from w2slab.grader.db import Researcher, read_session

    with read_session(_engine(db)) as s:
        rows = s.exec(select(Researcher).order_by(Researcher.name)).all()
    table = Table(title="researchers")
    for c in ("name", "evaluations", "submissions", "since"):
        table.add_column(c)
    for r in rows:
        table.add_row(r.name, str(r.evaluations), str(r.submissions), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)))
    console.print(table)


@app.command()
def audit(
    db: DbOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
    researcher: Annotated[Optional[str], typer.Option("--researcher", "-r")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="evaluate or submit")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    flags_only: Annotated[bool, typer.Option("--flags", help="Only the research-integrity flags.")] = False,
) -> None:
    """The audit log: every evaluation and submission (who, when, sha256 of predictions, score),
    then the research-integrity flags (submission audits, refused requests, probe detection)."""
    from w2slab.grader.queries import audit_log
    from w2slab.integrity.probes import all_flags

    engine = _engine(db)
    rows = [] if flags_only else audit_log(engine, limit, researcher, kind)
    flags = all_flags(engine, researcher=researcher)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        for f in flags:
            print(json.dumps({"flag": f}))
        return
    if flags_only:
        _print_flags(flags)
        return
    table = Table(title="audit log (newest first)")
    for c in ("id", "when", "researcher", "kind", "testbed", "predictions sha256", "score"):
        table.add_column(c, no_wrap=c == "predictions sha256", min_width=24 if c == "score" else None)
    for r in rows:
        sc = r["score"]
        score = f"PGR {sc.get('pgr')}" + (f" {sc['pgr_ci']} (#{sc['submission_id']})" if "pgr_ci" in sc else f", acc {sc.get('transfer_acc')}")
        table.add_row(str(r["id"]), time.strftime("%m-%d %H:%M:%S", time.localtime(r["created_at"])), r["researcher"],
                      r["kind"], r["testbed"], r["predictions_sha256"][:12], score)
    console.print(table)
    _print_flags(flags)


def _print_flags(flags: list[dict]) -> None:
    from rich.markup import escape

    if not flags:
        console.print("no research-integrity flags")
        return
    table = Table(title="research-integrity flags (newest first)")
    for c in ("when", "researcher", "testbed", "submission", "flag", "severity", "message"):
        table.add_column(c, overflow="fold")
    for f in flags:
        table.add_row(time.strftime("%m-%d %H:%M:%S", time.localtime(f["created_at"])), str(f["researcher"]), f["testbed"],
                      f"#{f['submission_id']}" if f["submission_id"] else "", f["kind"],
                      f"[red]{f['severity']}[/]" if f["severity"] == "high" else f["severity"], escape(f["message"]))
    console.print(table)


if __name__ == "__main__":
    app()
