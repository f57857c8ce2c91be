"""The dashboard in a real browser (Debian chromium via Playwright) against a real grader
server: the leaderboard shows a submission, the PGR chart renders, forum search works;
everything loads from the server itself (no internet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_toy_testbed, offline_page
from test_grader_support import STRONG, WEAK, GraderServer, targz



@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_testbed(tmp_path_factory.mktemp("dash") / "toy", "pairwise")


@pytest.fixture(scope="module")
def server(toy: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = GraderServer(toy, tmp_path_factory.mktemp("dashdb") / "grader.db").start()
    seeds = None
    y = np.array([1 if '"label": "B"' in line else 0 for line in (toy / "test.jsonl").read_text().splitlines()])
    for name, method, noise in (("erin", "entropy-reg", 0.1), ("frank", "naive-baseline", 0.4)):
        with srv.add_researcher(name) as c:
            seeds = seeds or c.get("/api/seeds", params={"testbed": "toy"}).json()["seeds"]
            sha = c.post("/api/snapshots", content=targz([(f"{method}.py", method.encode())])).json()["sha256"]
            rng = np.random.default_rng(len(name))
            preds = {str(s): np.where(rng.random(120) < noise, 1 - y, y).astype(float).tolist() for s in seeds}
            r = c.post("/api/submit", json={"testbed": "toy", "method_name": method, "snapshot_sha256": sha, "predictions": preds})
            assert r.status_code == 201, r.text
            c.post("/api/evaluate", json={"testbed": "toy", "predictions": [0.5] * 120})
            title = "Entropy regularisation beats naive training" if name == "erin" else "Bigger batches did nothing"
            c.post("/api/posts", json={"kind": "result" if name == "erin" else "negative_result", "title": title,
                                       "body": f"Details for *{method}*.", "snapshot_shas": [sha]})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(server: GraderServer):
    with offline_page(server.url) as pg:
        # operator-only pages need the admin login even on loopback; the open view is what a researcher sees
        pg.goto(f"{server.url}/researchers")
        assert "/login" in pg.url
        pg.fill("input[name=token]", server.admin_token())
        pg.click("button[type=submit]")
        assert pg.url.endswith("/researchers")
        yield pg


def test_leaderboard_shows_submissions_and_chart(server: GraderServer, page) -> None:
    page.goto(f"{server.url}/")
    assert page.url.endswith("/leaderboard")
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == 2
    first = rows.nth(0).inner_text()
    assert "erin" in first and "entropy-reg" in first and "[" in first  # the interval is shown
    assert "frank" in rows.nth(1).inner_text()
    assert float(page.inner_text("#mde")) > 0  # what the sealed holdout can tell apart
    assert "Not sealed yet" in page.inner_text("#sealed")
    page.wait_for_selector("#pgr-chart svg.main-svg")
    assert page.evaluate("document.getElementById('pgr-chart').data.length") == 2
    assert page.locator("#pgr-chart .legendtext").all_text_contents() == ["erin", "frank"]


def test_forum_search_finds_post(server: GraderServer, page) -> None:
    page.goto(f"{server.url}/forum")
    assert page.locator("#results li.post").count() == 2
    page.fill("input[name=q]", "entropy")  # htmx-lite swaps the results in as you type
    page.wait_for_function("document.querySelectorAll('#results li.post').length === 1")
    assert "Entropy regularisation beats naive training" in page.inner_text("#results")
    assert "q=entropy" in page.url  # hx-push-url
    page.goto(f"{server.url}/forum?q=batches")  # the same search without JavaScript
    assert "Bigger batches did nothing" in page.inner_text("#results")
    page.click("text=Bigger batches did nothing")
    assert "negative result" in page.inner_text("h1") and "naive-baseline" in page.inner_text("article")


def test_other_pages(server: GraderServer, page) -> None:
    page.goto(f"{server.url}/researchers")
    text = page.inner_text("main")
    assert "erin" in text and "frank" in text and "1 / 60" in text  # evaluations used this hour / budget
    page.goto(f"{server.url}/submissions?researcher=frank")
    assert "naive-baseline" in page.inner_text("main") and "entropy-reg" not in page.inner_text("main")
    page.goto(f"{server.url}/snapshots")
    assert page.locator("tbody tr").count() == 2


def test_login_required_away_from_loopback(toy: Path, tmp_path: Path, server: GraderServer) -> None:
    """In-process (Starlette TestClient: client host 'testclient', not loopback): login with the admin token."""
    from fastapi.testclient import TestClient

    from w2slab.grader.app import Settings, create_app
    from w2slab.grader.auth import admin_token_file

    settings = Settings(testbeds=[f"toy={toy}"], weak=WEAK, strong=STRONG, db_url=f"sqlite:///{server.db}", baseline_workers=1)
    with TestClient(create_app(settings)) as client:
        r = client.get("/leaderboard", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/leaderboard"
        assert client.post("/login", data={"token": "wrong", "next": "/leaderboard"}).status_code == 401
        researcher_token = client.post("/api/admin/researchers", json={"name": "gail"},
                                       headers={"Authorization": f"Bearer {admin_token_file().read_text().strip()}"}).json()["token"]
        assert client.post("/login", data={"token": researcher_token}).status_code == 401  # researchers are not operators
        r = client.post("/login", data={"token": admin_token_file().read_text().strip(), "next": "/researchers"},
                        follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/researchers"
        assert "httponly" in r.headers["set-cookie"].lower() and admin_token_file().read_text().strip() not in r.headers["set-cookie"]
        assert "gail" in client.get("/researchers").text


# ---------------------------------------------------------------- automated research runs


def _research_status(run_id: str, sandboxed: bool) -> dict:
    rows = [{"name": "offline-1", "direction": "confidence", "status": "running", "tokens_in": 12345, "tokens_out": 678,
             "usd": 1.25, "wall_seconds": 61.0, "experiments": 7, "grader_queries": 3},
            {"name": "offline-2", "direction": "ensembles", "status": "done", "tokens_in": 100, "tokens_out": 22,
             "usd": 0.5, "wall_seconds": 30.0, "experiments": 2, "grader_queries": 1}]
    total = {k: sum(r[k] for r in rows) for k in ("tokens_in", "tokens_out", "usd", "wall_seconds", "experiments", "grader_queries")}
    return {"run_id": run_id, "sandboxed": sandboxed, "state": "running", "testbed": "toy", "backend": "offline",
            "researchers": rows, "total": total}


@pytest.fixture(scope="module")
def research_run(server: GraderServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run pushed the way the launcher pushes it (ResearchPusher), in two rounds."""
    from w2slab.researchers.launcher import ResearchPusher, Transcript

    folder = tmp_path_factory.mktemp("research")
    paths = {n: folder / n / "transcript.jsonl" for n in ("offline-1", "offline-2")}
    tr = Transcript(paths["offline-1"], "offline-1")
    tr.message("assistant", "I will try confidence weighting first.\nLine two of the thought.")
    tr.tool_call("run_experiment", {"method": "conf.py", "seeds": [1, 2]})
    Transcript(paths["offline-2"], "offline-2").event("process_start", pid=1)
    warnings: list[str] = []
    pusher = ResearchPusher(server.url, server.admin_token(), "unsafe-run-1", interval=0, warn=warnings.append,
                            max_batch_bytes=200)  # tiny batches: several POSTs per transcript
    assert pusher.push(_research_status("unsafe-run-1", sandboxed=False), paths, force=True)
    tr.tool_result("run_experiment", {"dev_pgr": 0.4242, "log": "x" * 300})  # longer than a batch
    with open(paths["offline-1"], "a") as f:
        f.write('{"ts": 1, "type": "message", "role": "user", "content": "partial')  # no newline yet
    assert pusher.push(_research_status("unsafe-run-1", sandboxed=False), paths, force=True)
    assert warnings == []
    ok = ResearchPusher(server.url, server.admin_token(), "safe-run-1", interval=0, warn=warnings.append)
    assert ok.push(_research_status("safe-run-1", sandboxed=True), {}, force=True)
    return {"pusher": pusher, "paths": paths}


def test_research_push_api(server: GraderServer, research_run: dict) -> None:
    from w2slab.researchers.launcher import ResearchPusher

    with server.client(server.admin_token()) as admin:
        runs = {r["run_id"]: r for r in admin.get("/api/admin/research/runs").json()}
        assert runs["unsafe-run-1"]["sandboxed"] is False and runs["safe-run-1"]["sandboxed"] is True
        assert runs["unsafe-run-1"]["status"]["total"]["tokens_in"] == 12445
        assert runs["unsafe-run-1"]["transcript_lines"] == {"offline-1": 3, "offline-2": 1}  # the partial line waits
        tr = admin.get("/api/admin/research/transcript", params={"run_id": "unsafe-run-1", "researcher": "offline-1"}).json()
        assert [e["kind"] for e in tr["lines"]] == ["message", "tool_call", "event"]
        assert [e["seq"] for e in tr["lines"]] == [0, 1, 2] and tr["lines"][2]["entry"]["event"] == "line_truncated"
        # a retried batch is idempotent; a gap is refused
        r = admin.post("/api/admin/research/transcript", json={"run_id": "unsafe-run-1", "researcher": "offline-1",
                                                                 "start_seq": 0, "lines": [{"type": "message", "content": "dup"}]})
        assert r.status_code == 200 and r.json() == {"run_id": "unsafe-run-1", "researcher": "offline-1", "stored": 0, "next_seq": 3}
        r = admin.post("/api/admin/research/transcript", json={"run_id": "unsafe-run-1", "researcher": "offline-1",
                                                                 "start_seq": 9, "lines": [{"type": "x"}]})
        assert r.status_code == 409 and "next_seq 3" in r.json()["detail"]
        big = {"run_id": "r", "researcher": "a", "start_seq": 0, "lines": ["x" * (3 << 20)]}
        r = admin.post("/api/admin/research/transcript", json=big)
        assert r.status_code == 413 and "limit is 2097152 bytes" in r.json()["detail"]
        r = admin.post("/api/admin/research/status", json={"run_id": "r", "researchers": []})
        assert r.status_code == 422 and "sandboxed" in r.json()["detail"]
    with server.add_researcher("rita") as rita:  # researchers cannot read or write research runs
        for path, body in (("/api/admin/research/status", _research_status("x", True)),
                           ("/api/admin/research/transcript", {"run_id": "x", "researcher": "rita", "lines": []})):
            r = rita.post(path, json=body)
            assert r.status_code == 403 and "admin token" in r.json()["detail"]
        assert rita.get("/api/admin/research/runs").status_code == 403
    # a grader that is down: push returns False, warns once, never raises
    warnings: list[str] = []
    down = ResearchPusher("http://127.0.0.1:9", "t", "r", interval=0, warn=warnings.append, timeout=1, backoff=0)
    assert not down.push({"sandboxed": True}, research_run["paths"], force=True)
    assert not down.push({"sandboxed": True}, research_run["paths"], force=True)
    assert len(warnings) == 1 and "could not push" in warnings[0] and down.failures == 2


def test_research_page(server: GraderServer, research_run: dict, page) -> None:
    page.goto(f"{server.url}/leaderboard")
    page.click("nav >> text=Research runs")
    unsafe = page.locator("section.run[data-run='unsafe-run-1']")
    assert "UNSANDBOXED RUN" in unsafe.locator(".unsafe-banner").inner_text()
    assert page.locator("section.run[data-run='safe-run-1'] .unsafe-banner").count() == 0
    row = unsafe.locator("tr[data-researcher='offline-1']").inner_text()
    for value in ("12345", "678", "1.25", "61", "7", "3", "3 lines"):
        assert value in row
    total = unsafe.locator("tr.total").inner_text()
    for value in ("12445", "700", "1.75", "91", "9", "4"):
        assert value in total
    unsafe.locator("tr[data-researcher='offline-1'] a").click()
    assert "Transcript of offline-1" in page.inner_text("h1")
    entries = page.locator("ol.transcript li")
    assert entries.count() == 3
    first = entries.nth(0)
    assert "message (assistant)" in first.locator(".kind").inner_text()
    assert first.locator("pre").inner_text() == "I will try confidence weighting first.\nLine two of the thought."
    assert "tool call (run_experiment)" in entries.nth(1).inner_text() and '"conf.py"' in entries.nth(1).locator("pre").inner_text()
    assert "line_truncated" in entries.nth(2).locator("pre").inner_text()
