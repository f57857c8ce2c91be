"""The grader on PostgreSQL: a throwaway cluster (``initdb`` + ``pg_ctl`` on a free loopback port,
socket in a temp dir), a real ``w2slab serve --db postgresql+psycopg://...`` subprocess, driven
over HTTP: migrations, researchers, evaluation, snapshots, submissions, the leaderboard, the forum
with ``tsvector`` search, and a restart on the same database.

Skipped when the PostgreSQL server binaries (``initdb``, ``pg_ctl``) or ``psycopg`` are missing."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import make_toy_testbed
from test_grader_support import GraderServer, targz

from w2slab.grader.process import free_port

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")


def _pg_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: $PG_BINDIR, PATH, or Debian's versioned dirs."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    if found := shutil.which("initdb"):
        candidates.append(str(Path(found).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                         reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


BINDIR = _pg_bindir()
if BINDIR is None:
    pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; set PG_BINDIR or install postgresql",
                allow_module_level=True)


def _run_as() -> tuple[list[str], int | None, int | None]:
    """initdb refuses root: as root, run the server tools as the ``postgres`` user."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to own the cluster")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and runuser is missing")
    return [runuser, "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


@pytest.fixture(scope="module")
def pg_url():
    """A fresh PostgreSQL cluster and database for this module; stopped and removed at the end."""
    prefix, uid, gid = _run_as()
    root = Path(tempfile.mkdtemp(prefix="w2slab-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if uid is not None:
        for p in (root, sock):
            os.chown(p, uid, gid)
    root.chmod(0o700)
    port = free_port()
    env = dict(os.environ, LC_ALL="C", LANG="C")
    started = False
    try:
        subprocess.run([*prefix, str(BINDIR / "initdb"), "-D", str(data), "-U", "w2s", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, text=True, env=env, timeout=120)
        opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} -c fsync=off "
                f"-c full_page_writes=off -c synchronous_commit=off -c max_connections=100 -c shared_buffers=32MB")
        subprocess.run([*prefix, str(BINDIR / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", opts,
                        "-w", "-t", "60", "start"], check=True, capture_output=True, text=True, env=env, timeout=90)
        started = True
        with psycopg.connect(host="127.0.0.1", port=port, user="w2s", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE grader")
        yield f"postgresql+psycopg://w2s@127.0.0.1:{port}/grader"
    except subprocess.CalledProcessError as e:
        log = (root / "server.log").read_text()[-2000:] if (root / "server.log").exists() else ""
        pytest.fail(f"could not start PostgreSQL: {e.cmd[len(prefix):][:2]}\n{e.stdout}\n{e.stderr}\n{log}")
    finally:
        if started:
            subprocess.run([*prefix, str(BINDIR / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, env=env, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


class PgGraderServer(GraderServer):
    """:class:`GraderServer` on a database URL instead of a SQLite file (``log`` still lands in ``log_dir``)."""

    def __init__(self, testbed: Path, log_dir: Path, url: str, *extra: str) -> None:
        super().__init__(testbed, log_dir / "grader.db", *extra)
        self._url = url

    @property
    def db_url(self) -> str:
        return self._url


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_testbed(tmp_path_factory.mktemp("grader-pg") / "toy", "pairwise")


@pytest.fixture(scope="module")
def server(toy: Path, pg_url: str, tmp_path_factory: pytest.TempPathFactory):
    srv = PgGraderServer(toy, tmp_path_factory.mktemp("db"), pg_url, "--no-audits").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def state() -> dict:
    """What the tests wrote, for the restart test to find again."""
    return {}


def labels(toy: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (toy / "test.jsonl").read_text().splitlines()]
    return np.array([1 if r["label"] == "B" else 0 for r in rows])


def _tables(pg_url: str) -> set[str]:
    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql")) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_migrations_apply_at_start_up(server: GraderServer, pg_url: str) -> None:
    assert server.db_url == pg_url
    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql")) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0005",)]
        search = conn.execute("SELECT data_type FROM information_schema.columns "
                              "WHERE table_name = 'post' AND column_name = 'search'").fetchall()
    assert search == [("tsvector",)]
    assert {"researcher", "audit", "snapshot", "submission", "post", "comment", "vote", "fingerprint",
            "submissioncheck", "flag", "researchrun", "transcriptline"} <= _tables(pg_url)


def test_researchers_evaluate_submit_forum(server: GraderServer, toy: Path, state: dict) -> None:
    alice, bob = server.add_researcher("alice"), server.add_researcher("bob")
    with alice, bob, server.client(server.admin_token()) as admin:
        names = {r["name"] for r in admin.get("/api/admin/researchers").json()}
        assert {"alice", "bob"} <= names
        assert alice.get("/api/me").json()["name"] == "alice"
        assert bob.get("/api/me").json()["usage"]["evaluations_total"] == 0

        # dev feedback
        y = labels(toy)
        r = bob.post("/api/evaluate", json={"testbed": "toy", "predictions": (1 - y).astype(float).tolist()})
        assert r.status_code == 200 and r.json()["transfer_acc"] < 0.2, r.text
        r = bob.post("/api/evaluate", json={"testbed": "toy", "predictions": y.astype(float).tolist()})
        assert r.status_code == 200, r.text
        assert set(r.json()) >= {"pgr", "transfer_acc"} and r.json()["transfer_acc"] > 0.8 and r.json()["improved"]
        r = bob.post("/api/evaluate", json={"testbed": "toy", "predictions": (1 - y).astype(float).tolist()})
        assert r.json()["transfer_acc"] > 0.8 and r.json()["improved"] is False  # the Ladder, replayed from PostgreSQL

        # snapshot + submission -> leaderboard row
        r = alice.post("/api/snapshots", content=targz([("method/m.py", b"def m(): pass\n")]),
                       params={"note": "pg"}, headers={"content-type": "application/gzip"})
        assert r.status_code == 201, r.text
        snap = r.json()["sha256"]
        seeds = alice.get("/api/seeds", params={"testbed": "toy"}).json()["seeds"]
        rng = np.random.default_rng(0)
        preds = {str(s): np.where(rng.random(len(y)) < 0.15, 1 - y, y).astype(float).tolist() for s in seeds}
        r = alice.post("/api/submit", json={"testbed": "toy", "method_name": "noisy", "snapshot_sha256": snap,
                                            "predictions": preds})
        assert r.status_code == 201, r.text
        sub = r.json()
        board = alice.get("/api/leaderboard", params={"testbed": "toy"}).json()
        row = next(x for x in board["rows"] if x["id"] == sub["id"])
        assert row["researcher"] == "alice" and row["method_name"] == "noisy" and row["pgr"] == sub["pgr"]
        assert row["snapshot_sha256"] == snap and row["n_seeds"] == len(seeds)

        # forum: post, comment, vote, tsvector search (stemmed words)
        r = alice.post("/api/posts", json={"kind": "hypothesis", "title": "Auxiliary confidence loss",
                                           "body": "Students **overfit** weak errors; thresholding should help.",
                                           "metrics": {"pgr": 0.31}, "submission_ids": [sub["id"]],
                                           "snapshot_shas": [snap]})
        assert r.status_code == 201, r.text
        post = r.json()
        assert bob.post(f"/api/posts/{post['id']}/comments", json={"body": "Tried it: PGR 0.28"}).status_code == 201
        assert bob.post(f"/api/posts/{post['id']}/vote", json={"value": 1}).json()["score"] == 1
        assert bob.post(f"/api/posts/{post['id']}/vote", json={"value": -1}).json()["score"] == -1
        assert alice.post(f"/api/posts/{post['id']}/vote", json={"value": 1}).status_code == 403
        hits = bob.get("/api/posts/search", params={"q": "overfitting threshold"}).json()
        assert [h["id"] for h in hits] == [post["id"]]
        assert bob.get("/api/posts/search", params={"q": "confidence"}).json()[0]["id"] == post["id"]
        assert bob.get("/api/posts/search", params={"q": "zebra"}).json() == []
        assert bob.get("/api/posts/search", params={"q": 'weak" OR * -( &|!'}).status_code == 200  # syntax is inert
        full = bob.get(f"/api/posts/{post['id']}").json()
        assert full["score"] == -1 and full["comments"][0]["author"] == "bob" and full["metrics"]["pgr"] == 0.31

        audit = admin.get("/api/admin/audit", params={"limit": 1000}).json()
        assert sorted(a["kind"] for a in audit) == ["evaluate", "evaluate", "evaluate", "submit"]
        assert admin.get("/healthz").status_code == 200 and admin.get("/leaderboard").status_code == 200
        assert admin.get("/forum").status_code == 200
        state.update(sub=sub, snap=snap, post=post["id"], bob_token=bob.headers["Authorization"].split()[1],
                     board=board, me=bob.get("/api/me").json())


def test_concurrent_writes_are_serialized_like_sqlite(server: GraderServer, pg_url: str) -> None:
    """The same transcript batch stored by 8 threads at once: the store counts the stored lines and
    appends the rest, which is only safe when write transactions queue (SQLite's BEGIN IMMEDIATE; on
    PostgreSQL the advisory lock of ``write_session``). Without it, about half fail on the unique seq."""
    from w2slab.grader import research
    from w2slab.grader.db import make_engine

    engine = make_engine(pg_url)
    lines = [{"type": "message", "ts": 1.0 + i, "text": f"line {i}"} for i in range(20)]
    try:
        with ThreadPoolExecutor(8) as pool:
            out = list(pool.map(lambda i: research.store_transcript(
                engine, {"run_id": f"pg-race-{i // 8}", "researcher": "alice", "start_seq": 0, "lines": lines}), range(48)))
        assert sorted(o["stored"] for o in out) == [0] * 42 + [20] * 6 and {o["next_seq"] for o in out} == {20}
    finally:
        engine.dispose()
    with server.client(server.admin_token()) as admin:
        for k in range(6):
            got = admin.get("/api/admin/research/transcript", params={"run_id": f"pg-race-{k}", "researcher": "alice",
                                                                      "limit": 100}).json()
            assert got["total"] == 20 and [x["entry"]["text"] for x in got["lines"]] == [f"line {i}" for i in range(20)]


def test_restart_on_same_database_keeps_everything(server: GraderServer, state: dict) -> None:
    assert state, "needs test_researchers_evaluate_submit_forum"
    server.stop()
    server.start()  # migrations run again on an up-to-date schema: a no-op
    with server.client(state["bob_token"]) as bob:
        assert bob.get("/api/me").json() == state["me"]
        assert bob.get("/api/leaderboard", params={"testbed": "toy"}).json() == state["board"]
        assert bob.get(f"/api/snapshots/{state['snap']}/info").status_code == 200
        full = bob.get(f"/api/posts/{state['post']}").json()
        assert full["score"] == -1 and len(full["comments"]) == 1
        assert [h["id"] for h in bob.get("/api/posts/search", params={"q": "overfit"}).json()] == [state["post"]]
        r = bob.post("/api/evaluate", json={"testbed": "toy", "predictions": [0.7] * 120})
        assert r.status_code == 200, r.text
        assert bob.get("/api/me").json()["usage"]["evaluations_total"] == state["me"]["usage"]["evaluations_total"] + 1
