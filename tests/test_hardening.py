"""Hardening of the grader and the command line (issue 14): schema fuzzing of a real server,
edge validation of ids and offsets, process supervision, refusals of bad configuration,
forum rate limits and researcher names."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import make_toy_testbed
from test_grader_support import STRONG, WEAK, GraderServer

from w2slab.grader.process import free_port

ST = Path(sys.executable).parent / "st"  # the schemathesis command line, installed with the dev extra
BIG = 2**63  # one past the database's largest integer


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_testbed(tmp_path_factory.mktemp("hardening") / "toy", "pairwise")


@pytest.fixture(scope="module")
def server(toy: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = GraderServer(toy, tmp_path_factory.mktemp("db") / "grader.db", "--post-per-hour", "5", "--comment-per-hour", "5",
                       "--vote-per-hour", "5").start()
    yield srv
    srv.stop()


# ---------------------------------------------------------------- schema fuzzing


SCHEMATHESIS_CONFIG = """
[parameters]
"query.testbed" = "toy"
"body.testbed" = "toy"
"""  # the served testbed, so requests reach the scoring code rather than stopping at 404
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"


def _schemathesis(server: GraderServer, token: str, paths: str, folder: Path, examples: int) -> subprocess.CompletedProcess:
    config = folder / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    cmd = [str(ST), "--config-file", str(config), "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {token}",
           "-c", CHECKS, "-n", str(examples), "--generation-deterministic", "--no-color", "--max-failures", "20",
           "--request-timeout", "20", *paths.split()]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=folder, timeout=600)


@pytest.mark.skipif(not ST.exists(), reason="schemathesis is not installed (pip install -e '.[dev]')")
def test_schema_fuzzing_finds_no_5xx_and_no_schema_violation(server: GraderServer, tmp_path: Path) -> None:
    """schemathesis, from the server's own /openapi.json: every operation (a researcher's token for
    the researcher routes, the admin token for /api/admin); any 5xx, undeclared status, wrong
    content type or body off the published schema fails the run."""
    with server.add_researcher("fuzzer") as c:
        token = c.headers["Authorization"].split()[1]
    runs = [(token, "--exclude-path-regex ^/api/admin"), (server.admin_token(), "--include-path-regex ^/api/admin")]
    for who, paths in runs:
        start = time.monotonic()
        r = _schemathesis(server, who, paths, tmp_path, examples=25)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-8000:]
        tested = re.search(r"Tested: (\d+)", out)
        assert tested and int(tested.group(1)) >= (5 if "admin" in paths.split()[1] and "include" in paths else 15), out[-3000:]
        assert re.search(r"(\d+) generated", out) and time.monotonic() - start < 300
    log = server.log.read_text()
    assert "Traceback" not in log and "Internal Server Error" not in log, log[-3000:]


def _filler(name: str, schema: dict) -> object:
    """A valid value for a required parameter that is not under test."""
    if schema.get("type") == "integer":
        return max(1, schema.get("minimum", 1))
    return {"testbed": "toy", "sha": "0" * 64}.get(name, "x")


def test_every_integer_parameter_is_bounded_to_the_database_range(server: GraderServer) -> None:
    """Every integer in a path or query of the published schema, at 2^63, 2^64 and -2^63-1: a 422
    naming the parameter, never a 5xx (SQLite's INTEGER holds at most 2^63-1)."""
    with server.add_researcher("bounds") as c:
        researcher = c.headers["Authorization"]
    admin = f"Bearer {server.admin_token()}"
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # one error shape: {"detail": "<one line>"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for code in ("401", "404", "422", "429"):
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorOut"), (method, path, code, ref)
    tried = 0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                params = op.get("parameters", [])
                for p in params:
                    if p["schema"].get("type") != "integer" and not any(s.get("type") == "integer" for s in p["schema"].get("anyOf", [])):
                        continue
                    for value in (BIG, 2**64, -(2**63) - 1):
                        url, query = path, {}
                        for q in params:
                            v = value if q is p else _filler(q["name"], q["schema"])
                            if q["in"] == "path":
                                url = url.replace("{" + q["name"] + "}", str(v))
                            elif q is p or q.get("required"):
                                query[q["name"]] = v
                        auth = admin if path.startswith("/api/admin") else researcher
                        r = http.request(method, url, params=query, headers={"Authorization": auth},
                                         json={} if "requestBody" in op else None)
                        assert r.status_code == 422, (method, url, query, r.status_code, r.text)
                        assert p["name"] in r.json()["detail"], r.text
                        tried += 1
        # ids inside bodies, and the dashboard's pages (not in the published schema)
        r = http.post("/api/posts", headers={"Authorization": researcher},
                      json={"kind": "result", "title": "t", "body": "b", "submission_ids": [BIG]})
        assert r.status_code == 422 and "submission_ids" in r.json()["detail"], r.text
        for page in (f"/forum/{BIG}", f"/submissions/{BIG}", f"/forum/{2**64}"):
            assert http.get(page).status_code == 422
        top = BIG - 1  # the largest id and offset: accepted, and nothing is there
        assert http.get("/api/posts", params={"offset": top}, headers={"Authorization": researcher}).json() == []
        assert http.get(f"/api/posts/{top}", headers={"Authorization": researcher}).status_code == 404
        assert http.post("/api/admin/research/status", json={"run_id": "r", "sandboxed": True},
                         headers={"Authorization": admin}).status_code == 200
        r = http.get("/api/admin/research/transcript", params={"run_id": "r", "researcher": "x", "offset": top},
                     headers={"Authorization": admin})
        assert r.status_code == 200 and r.json()["lines"] == [], r.text
        for start in (BIG, 2**64, -1):  # the launcher's transcript batches (a body read by hand, not by a model)
            r = http.post("/api/admin/research/transcript", headers={"Authorization": admin},
                          json={"run_id": "r1", "researcher": "x", "start_seq": start, "lines": ["{}"]})
            assert r.status_code in (409, 422), r.text
        r = http.post("/api/evaluate", headers={"Authorization": researcher},
                      json={"testbed": "toy", "predictions": [0.5] * 120, "seed": BIG})
        assert r.status_code in (200, 422), r.text
    assert tried >= 3 * 7  # post and submission ids, offsets, limits
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


# ---------------------------------------------------------------- process supervision


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_serve_with_two_workers_leaves_no_orphans_and_the_port_restarts(toy: Path, tmp_path: Path) -> None:
    srv = GraderServer(toy, tmp_path / "grader.db", workers=2).start()
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(srv.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) >= 2, workers
        with srv.add_researcher("before") as c:
            assert c.get("/api/me").status_code == 200
        os.kill(srv.proc.pid, signal.SIGKILL)  # the supervisor only, as the OOM killer or `kill -9` would
        srv.proc.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "orphaned workers survived their supervisor"
        port = srv.port
        srv.start(workers=2, port=port)  # the same port, at once: nothing holds it
        assert srv.port == port
        with srv.client(srv.admin_token()) as admin:
            names = [r["name"] for r in admin.get("/api/admin/researchers").json()]
        assert "before" in names
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def _serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "w2slab.grader.cli", "serve", "--weak", WEAK, "--strong", STRONG,
                           "--baseline-workers", "1", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_on_a_busy_port_fails_before_saying_ready(toy: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _serve("-t", f"toy={toy}", "--port", str(port), "--db", f"sqlite:///{tmp_path / 'g.db'}")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ready" not in r.stdout and "Traceback" not in r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "in use" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_database_folder_that_does_not_exist(toy: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    r = _serve("-t", f"toy={toy}", "--port", str(free_port()), "--db", f"sqlite:///{missing / 'x.db'}")
    assert r.returncode == 2 and "ready" not in r.stdout
    assert f"the folder {missing} does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not missing.exists()
    r = _serve("-t", f"toy={toy}", "--workers", "0")
    assert r.returncode == 2 and "--workers" in r.stderr and "ready" not in r.stdout


@pytest.mark.parametrize("command", [["flags"], ["flags", "--json"], ["audit"], ["researcher", "list"]])
def test_read_only_commands_refuse_a_missing_database(command: list[str], tmp_path: Path) -> None:
    db = tmp_path / "none.db"
    r = subprocess.run([sys.executable, "-m", "w2slab", *command, "--db", f"sqlite:///{db}"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [f"error: no grader database at {db}: start the grader first (`w2slab serve`), "
                                             "or name it with --db"]
    assert not db.exists() and r.stdout == ""


# ---------------------------------------------------------------- abuse: names and forum rate limits


def test_researcher_names_are_validated(server: GraderServer) -> None:
    with server.client(server.admin_token()) as admin:
        for bad in ("0..0", "Infinity", "nan", "NULL", "admin", "a.b", "1abc", "-x", "", "x" * 65, "é", "a b"):
            r = admin.post("/api/admin/researchers", json={"name": bad})
            assert r.status_code == 422 and "bad researcher name" in r.json()["detail"], (bad, r.text)
        r = admin.post("/api/admin/researchers", json={"name": "Ok-name_1"})
        assert r.status_code == 201, r.text
        names = [x["name"] for x in admin.get("/api/admin/researchers").json()]
    assert "Ok-name_1" in names and not {"0..0", "Infinity", "nan"} & set(names)


def test_forum_posts_comments_and_votes_are_rate_limited_per_researcher(server: GraderServer) -> None:
    """The server runs with 5 posts, 5 comments and 5 votes per researcher per hour."""
    from w2slab.researchers.client import GraderClient, GraderError

    with server.add_researcher("poster") as a, server.add_researcher("reader") as b, server.add_researcher("third") as c:
        ids = []
        for i in range(5):
            r = a.post("/api/posts", json={"kind": "insight", "title": f"post {i}", "body": "b"})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        r = a.post("/api/posts", json={"kind": "insight", "title": "one too many", "body": "b"})
        assert r.status_code == 429 and "at most 5 posts per hour" in r.json()["detail"]
        assert 3500 <= int(r.headers["Retry-After"]) <= 3600
        assert c.post("/api/posts", json={"kind": "insight", "title": "other", "body": "b"}).status_code == 201  # per researcher
        other = c.get("/api/posts", params={"limit": 1}).json()[0]["id"]
        for i in range(5):
            assert b.post(f"/api/posts/{ids[0]}/comments", json={"body": f"c{i}"}).status_code == 201
        r = b.post(f"/api/posts/{ids[0]}/comments", json={"body": "again"})
        assert r.status_code == 429 and "comments per hour" in r.json()["detail"] and r.headers["Retry-After"]
        for post_id in ids:
            assert b.post(f"/api/posts/{post_id}/vote", json={"value": 1}).status_code == 200
        r = b.post(f"/api/posts/{other}/vote", json={"value": 1})
        assert r.status_code == 429 and "votes per hour" in r.json()["detail"]
        assert c.get(f"/api/posts/{other}").json()["score"] == 0
        client = GraderClient(server.url, b.headers["Authorization"].split()[1], retries=0)
        with pytest.raises(GraderError) as e:
            client.vote(other, -1)
        client.close()
        assert e.value.status == 429 and e.value.retry_after and "votes per hour" in e.value.message
