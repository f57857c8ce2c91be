"""The dashboard in a real browser (Debian chromium via Playwright) against a real grader
server: the leaderboard shows a submission, the PGR chart renders, forum search works;
everything loads from the server itself (no internet)."""

from __future__ import annotations

import contextlib
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
        pg.set_default_timeout(60_000)  # the first leaderboard parses Plotly (4.8 MB): slow on a loaded 2-core machine
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
    # operator view (logged in): one panel per researcher, dev evaluations as stored and exact board scores
    traces = page.evaluate("document.getElementById('pgr-chart').data.map(t => [t.name, t.xaxis, t.y])")
    assert sorted((name, ax) for name, ax, _ in traces) == [("board", "x"), ("board", "x2"), ("dev evaluation", "x"),
                                                             ("dev evaluation", "x2")]
    titles = page.evaluate("document.getElementById('pgr-chart').layout.annotations.map(a => a.text)")
    assert titles == ["<b>erin</b>", "<b>frank</b>"]
    assert page.locator("#pgr-chart .legendtext").all_text_contents() == ["dev evaluation", "board"]


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
    from w2slab.researchers.contract import Transcript
    from w2slab.researchers.pusher import ResearchPusher

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
    from w2slab.researchers.pusher import ResearchPusher

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
    assert "I will try confidence weighting first. Line two" in first.locator("summary").inner_text()  # one line
    assert first.locator("pre").text_content() == "I will try confidence weighting first.\nLine two of the thought."
    assert "tool call (run_experiment)" in entries.nth(1).inner_text() and '"conf.py"' in entries.nth(1).locator("pre").text_content()
    assert "line_truncated" in entries.nth(2).locator("pre").text_content()


# ---------------------------------------------------------------- researcher vs operator view of the PGR chart


@contextlib.contextmanager
def researcher_view(page, base_url: str):
    """The same page without the operator's cookie (what a researcher on loopback sees); the
    cookie is restored afterwards. (The same browser context keeps Plotly in its cache.)"""
    cookies = page.context.cookies()
    page.context.clear_cookies()
    try:
        yield page
    finally:
        page.context.add_cookies(cookies)


def chart_points(pg) -> dict:
    pg.wait_for_selector("#pgr-chart svg.main-svg")
    return pg.evaluate("Object.fromEntries(document.getElementById('pgr-chart').data.map(t => [t.name + '/' + t.xaxis, "
                       "{y: t.y, lo: t.error_y ? t.error_y.arrayminus : null, ids: t.customdata}]))")


def test_pgr_chart_researcher_view_shows_only_what_the_api_shows(server: GraderServer, page) -> None:
    with server.client(server.admin_token()) as admin:
        shown = {s["id"]: s["pgr"] for s in admin.get("/api/submissions").json()}
        exact = {sid: admin.get(f"/api/admin/submissions/{sid}").json()["board_exact"]["pgr"] for sid in shown}
    page.goto(f"{server.url}/leaderboard")
    operator = chart_points(page)
    assert {i: y for t in ("board/x", "board/x2") for i, y in zip(operator[t]["ids"], operator[t]["y"])} == exact
    assert operator["board/x"]["lo"] is not None  # interval bars
    with researcher_view(page, server.url) as open_view:  # loopback, no login: what a researcher sees
        open_view.goto(f"{server.url}/leaderboard")
        points = chart_points(open_view)
        assert set(points) == {"board/x", "board/x2"}  # no dev evaluations: private to their author
        board = {i: y for p in points.values() for i, y in zip(p["ids"], p["y"])}
        assert board == shown and all(round(y, 2) == y for y in board.values())
        assert "Dev evaluations are private" in open_view.inner_text("main")
        assert open_view.locator("nav a[href='/evaluations']").count() == 1
        open_view.goto(f"{server.url}/evaluations")
        assert "/login" in open_view.url  # the dev records are the operator's


def test_pgr_chart_stays_readable_with_44_researchers(server: GraderServer, page) -> None:
    """Small multiples: 44 researchers make 44 panels of one shared scale, 4 per row, a 3-entry legend."""
    page.goto(f"{server.url}/leaderboard")
    page.wait_for_selector("#pgr-chart svg.main-svg")
    page.evaluate("""() => {
      const rs = [];
      for (let i = 0; i < 44; i++) {
        const part = n => ({x: Array.from({length: n}, (_, k) => `2026-01-0${1 + k} 10:00:00`),
                            y: Array.from({length: n}, (_, k) => 0.1 + 0.01 * i + 0.02 * k), lo: Array(n).fill(null),
                            hi: Array(n).fill(null), id: Array.from({length: n}, (_, k) => k + 1)});
        rs.push({name: `researcher-${i}`, dev: part(6), board: part(2), sealed: part(i % 2)});
      }
      window.w2slabProgress.setData({researchers: rs, yrange: [0, 1]});
    }""")
    layout = page.evaluate("(() => { const l = document.getElementById('pgr-chart').layout; "
                           "return {n: l.annotations.length, height: l.height, cols: l.grid.columns}; })()")
    assert layout == {"n": 44, "height": 70 + 11 * 190, "cols": 4}
    assert page.locator("#pgr-chart .legendtext").all_text_contents() == ["dev evaluation", "board", "sealed"]
    assert page.locator("#progress-who option").count() == 45
    page.select_option("#progress-who", "researcher-7")  # one researcher at full width
    assert page.evaluate("document.getElementById('pgr-chart').layout.annotations.map(a => a.text)") == ["<b>researcher-7</b>"]
    page.evaluate("window.w2slabProgress.setData({researchers: [], yrange: [0, 1]})")  # nobody has a score yet
    empty = page.evaluate("(() => { const l = document.getElementById('pgr-chart').layout; return [l.height, l.annotations[0].text]; })()")
    assert empty == [260, "no scores yet"]


# ---------------------------------------------------------------- transcripts, experiments, claims, pagination

N_EXPERIMENTS = 20


@pytest.fixture(scope="module")
def long_run(server: GraderServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A pushed run whose transcript logs experiments the way the offline researcher does (a message
    with the recipe, sandbox and grader tool calls, a 'done' message): 20 experiments, 161 entries."""
    from w2slab.researchers.contract import Transcript
    from w2slab.researchers.pusher import ResearchPusher

    path = tmp_path_factory.mktemp("long") / "offline-9" / "transcript.jsonl"
    tr = Transcript(path, "offline-9")
    rng = np.random.default_rng(0)
    for n in range(1, N_EXPERIMENTS + 1):
        recipe = {"alpha": round(0.1 * n, 1), "epochs": 2 + n % 3, "soft_labels": n % 2 == 0}
        tr.message("assistant", f"experiment {n}: try alpha {recipe['alpha']}", action="try", recipe=recipe, seeds=[1, 2])
        tr.tool_call("sandbox.run", {"argv": ["w2slab", "predict", f"recipe_{n}.py"], "sandboxed": True})
        tr.tool_result("sandbox.run", {"returncode": 0, "stdout": "ok\n" * 40, "stderr": ""})
        dev = {}
        for seed in (1, 2):
            tr.tool_call("grader.evaluate", {"testbed": "toy", "seed": seed, "predictions": rng.random(120).round(3).tolist()})
            dev[str(seed)] = round(0.05 * n + 0.01 * seed, 2)
            tr.tool_result("grader.evaluate", {"pgr": dev[str(seed)], "transfer_acc": 0.7})
        tr.message("assistant", f"experiment {n} done: dev PGR {dev}; best so far alpha")
    tr.event("stop", reason="budget")
    status = {"run_id": "long-run", "sandboxed": True, "state": "done", "testbed": "toy", "backend": "offline",
              "researchers": [{"name": "offline-9", "status": "done"}], "total": {}}
    assert ResearchPusher(server.url, server.admin_token(), "long-run", interval=0, warn=print).push(
        status, {"offline-9": path}, force=True)
    return {"total": 8 * N_EXPERIMENTS + 1}


def test_transcript_one_line_per_entry_with_filters(server: GraderServer, long_run: dict, page) -> None:
    page.goto(f"{server.url}/research/long-run/offline-9")
    entries = page.locator("ol.transcript > li")
    assert entries.count() == 50 and f"showing 1-50 of {long_run['total']}" in page.locator(".pager").first.inner_text()
    # one line each, collapsed: the page of 50 entries stays short
    heights = page.evaluate("[...document.querySelectorAll('ol.transcript summary')].map(s => s.getBoundingClientRect().height)")
    assert max(heights) < 30
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 5000, height
    first = entries.nth(0)
    assert "message (assistant)" in first.locator(".kind").inner_text() and "experiment 1: try alpha 0.1" in first.inner_text()
    assert not first.locator("pre").is_visible()
    first.locator("summary").click()  # expand: the whole entry
    assert first.locator("pre").is_visible() and '"alpha": 0.1' in first.locator("pre").inner_text()
    call = page.locator("li[data-kind=tool_call]", has_text="grader.evaluate").first
    call.locator("summary").click()
    assert "(120 numbers)" in call.locator("pre").inner_text()  # the predictions, abbreviated
    page.click("text=expand all")
    assert page.evaluate("[...document.querySelectorAll('ol.transcript details')].every(d => d.open)")
    # filter by tool: only grader.evaluate calls and results, across pages
    page.select_option("select[name=tool]", "grader.evaluate")
    with page.expect_navigation():  # the form's GET: wait for the new page, not just the click
        page.click("#transcript-filter button[type=submit]")
    assert "tool=grader.evaluate" in page.url
    labels = page.locator("ol.transcript .kind").all_inner_texts()
    assert len(labels) == 50 and set(labels) == {"tool call (grader.evaluate)", "tool result (grader.evaluate)"}
    assert f"{4 * N_EXPERIMENTS} of {long_run['total']} entries match" in page.inner_text("#matching")
    assert "tool=grader.evaluate" in page.get_attribute(".pager a[rel=next]", "href")
    page.select_option("select[name=kind]", "tool_result")
    with page.expect_navigation():
        page.click("#transcript-filter button[type=submit]")
    assert page.locator("ol.transcript > li").count() == 2 * N_EXPERIMENTS
    # search: a substring of the entries, with the kind filter
    page.goto(f"{server.url}/research/long-run/offline-9?q=experiment+7+done")
    assert page.locator("ol.transcript > li").count() == 1 and "experiment 7 done" in page.inner_text("ol.transcript")
    # pages keep the filters
    page.goto(f"{server.url}/research/long-run/offline-9?kind=tool_call")
    assert page.locator("ol.transcript > li").count() == 50
    nxt = page.get_attribute(".pager a[rel=next]", "href")
    assert "kind=tool_call" in nxt and "offset=50" in nxt
    with page.expect_navigation():
        page.click(".pager a[rel=next]")
    assert page.locator("ol.transcript > li").count() == 3 * N_EXPERIMENTS - 50
    assert set(page.locator("ol.transcript > li").evaluate_all("ls => ls.map(l => l.dataset.kind)")) == {"tool_call"}


def test_experiments_table_sorts_filters_and_links(server: GraderServer, long_run: dict, page) -> None:
    page.goto(f"{server.url}/experiments")
    rows = page.locator("#experiments tbody tr")
    kinds = rows.evaluate_all("rs => rs.map(r => r.dataset.kind)")
    assert kinds.count("experiment") == N_EXPERIMENTS and kinds.count("submission") >= 2
    headers = page.locator("#experiments thead th").all_inner_texts()
    assert {"alpha", "epochs", "soft_labels"} <= {h.strip(" ▲▼") for h in headers}  # the recipe, side by side
    # sort by a parameter, both ways (server-side: works without JavaScript)
    with page.expect_navigation():  # server-side: wait for the new page
        page.click("#experiments th[data-sort='p.alpha'] a")
    alphas = [float(t) for t in page.locator("#experiments td[data-param=alpha]").all_inner_texts() if t.strip() not in ("–", "")]
    assert alphas == sorted(alphas, reverse=True) and len(alphas) == N_EXPERIMENTS
    with page.expect_navigation():
        page.click("#experiments th[data-sort='p.alpha'] a")
    alphas = [float(t) for t in page.locator("#experiments td[data-param=alpha]").all_inner_texts() if t.strip() not in ("–", "")]
    assert alphas == sorted(alphas)
    with page.expect_navigation():
        page.click("#experiments th[data-sort='pgr'] a")
    pgrs = [float(t) for t in page.locator("#experiments td.pgr").all_inner_texts() if t != "n/a"]
    assert pgrs == sorted(pgrs, reverse=True)
    # the 12th experiment: mean dev PGR of its two seeds (0.61, 0.62)
    page.fill("input[name=q]", "alpha 1.2")
    with page.expect_navigation():
        page.click("#experiment-filter button[type=submit]")
    assert rows.count() == 1 and "0.6" in rows.first.locator("td.pgr").inner_text()  # mean of 0.61, 0.62
    assert "sort=pgr" in page.url  # the filter keeps the sort
    with page.expect_navigation():
        page.click("#experiments tbody tr >> text=recipe")  # its recipe in the transcript
    assert "Transcript of offline-9" in page.inner_text("h1") and page.url.endswith("#e88")
    assert page.locator("#e88 details").evaluate("d => d.open")
    page.goto(f"{server.url}/experiments?kind=submission&researcher=erin")
    assert rows.count() == 1
    rows.first.locator("a", has_text="submission").click()
    assert page.inner_text("h1").startswith("Submission #")
    with researcher_view(page, server.url) as open_view:  # researcher view: submissions only
        open_view.goto(f"{server.url}/experiments")
        assert set(open_view.locator("#experiments tbody tr").evaluate_all("rs => rs.map(r => r.dataset.kind)")) == {"submission"}


def test_forum_claims_are_checked_against_records(server: GraderServer, page) -> None:
    with server.client(server.admin_token()) as admin:
        sub = next(s for s in admin.get("/api/submissions", params={"researcher": "erin"}).json())
    with server.add_researcher("hana") as hana:
        r = hana.post("/api/evaluate", json={"testbed": "toy", "predictions": [0.9] * 60 + [0.1] * 60})
        eval_id, shown = int(r.headers["X-Audit-Id"]), r.json()["pgr"]
        good = hana.post("/api/posts", json={"kind": "result", "title": f"half and half: dev PGR {shown:.2f}",
                                             "body": f"Measured in eval {eval_id}."}).json()["id"]
        bad = hana.post("/api/posts", json={"kind": "result", "title": "a great method: PGR 0.987",
                                            "body": f"As in submission #{sub['id']}, and eval {eval_id}."}).json()["id"]
    page.goto(f"{server.url}/forum/{good}")
    claims = page.locator("#claims li.claim")
    assert claims.count() == 1 and claims.first.get_attribute("data-verified") == "yes"
    assert f"eval {eval_id}" in claims.first.inner_text() and "claims verified" in page.inner_text("main")
    claims.first.locator(f"a:has-text('eval {eval_id}')").click()  # operator: the record itself
    assert page.locator(f"#evaluations tr#e{eval_id}").count() == 1
    page.goto(f"{server.url}/forum/{bad}")
    marks = {li.inner_text().split("\n")[0]: li.get_attribute("data-verified") for li in page.locator("#claims li.claim").all()}
    assert any("PGR 0.987" in k and v == "no" for k, v in marks.items())
    assert any(f"submission {sub['id']}" in k and v == "no" for k, v in marks.items())  # erin's, not hana's
    badge = page.locator("p.muted .badge.unverified")
    assert badge.inner_text() == "2 unverified" and "Verified: the grader returned" in badge.get_attribute("title")
    page.goto(f"{server.url}/forum")  # the list marks the post too
    assert page.locator("li.post", has_text="a great method").locator(".badge.unverified").inner_text() == "2 unverified"
    assert page.locator("li.post", has_text="half and half").locator(".badge").count() == 0


def test_pagination_of_snapshots_runs_and_flags(server: GraderServer, page) -> None:
    from w2slab.researchers.pusher import ResearchPusher

    with server.add_researcher("ivan") as ivan:
        for i in range(101):
            r = ivan.post("/api/snapshots", content=targz([(f"m{i}.py", f"# {i}".encode())]))
            assert r.status_code in (200, 201), r.text
    n_snaps = len(httpx_get(server, "/api/snapshots", limit=1000))
    page.goto(f"{server.url}/snapshots")
    assert page.locator("#snapshots tbody tr").count() == 100
    assert f"showing 1-100 of {n_snaps}" in page.locator(".pager").first.inner_text()
    page.locator(".pager a[rel=next]").first.click()
    assert page.locator("#snapshots tbody tr").count() == n_snaps - 100 and "offset=100" in page.url
    for i in range(21):
        status = {"run_id": f"paging-{i:02d}", "sandboxed": True, "state": "done", "testbed": "toy", "researchers": [], "total": {}}
        assert ResearchPusher(server.url, server.admin_token(), status["run_id"], interval=0, warn=print).push(status, {}, force=True)
    page.goto(f"{server.url}/research")
    assert page.locator("section.run").count() == 20
    n_runs = int(page.locator(".pager").first.inner_text().split(" of ")[1].split()[0])
    page.locator(".pager a[rel=next]").first.click()
    assert page.locator("section.run").count() == n_runs - 20
    page.goto(f"{server.url}/researchers")
    assert "showing" in page.locator(".pager").first.inner_text() or "nothing to show" in page.locator(".pager").first.inner_text()


def httpx_get(server: GraderServer, path: str, **params) -> list:
    with server.client(server.admin_token()) as admin:
        r = admin.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()


def test_report_page_is_the_operators(server: GraderServer, page, tmp_path: Path) -> None:
    """/report serves the newest run's report.html (operator only, under a strict CSP); a run without one says so."""
    from w2slab.researchers.pusher import ResearchPusher

    (tmp_path / "report.html").write_text("<!doctype html><title>r</title><h1>Research report: toy</h1><p>sealed PGR 0.12</p>")
    status = {"run_id": "reported-run", "sandboxed": True, "state": "done", "testbed": "toy", "researchers": [], "total": {},
              "workdir": str(tmp_path), "summary": {"testbed": "toy"}}
    assert ResearchPusher(server.url, server.admin_token(), "reported-run", interval=0, warn=print).push(status, {}, force=True)
    resp = page.goto(f"{server.url}/report?run=reported-run")
    assert page.inner_text("h1") == "Research report: toy" and "default-src 'none'" in resp.headers["content-security-policy"]
    page.goto(f"{server.url}/research")
    page.click("section.run[data-run='reported-run'] a.report-link")
    assert page.inner_text("h1") == "Research report: toy"
    page.goto(f"{server.url}/report?run=long-run")
    assert "has no report" in page.inner_text("#no-report")
    with researcher_view(page, server.url) as open_view:
        open_view.goto(f"{server.url}/report")
        assert "/login" in open_view.url
