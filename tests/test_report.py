"""The end-of-run report and the dashboard pages around it: a real short research run (real
launcher, grader and researcher processes on loopback) writes report.md / report.html; then a
real grader on that run's database serves /report, HTML 404 pages, the favicon and paginated
lists to Debian chromium (Playwright)."""

from __future__ import annotations

import base64
import json
import math
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_toy_testbed, offline_page
from test_grader_support import STRONG, WEAK, GraderServer

from w2slab.researchers.report import dev_ci, effect_ci, write_report
from w2slab.researchers.sandbox import find_bwrap



def ci_text(value: float, ci: list[float], sign: bool = False) -> str:
    f = "{:+.3f}" if sign else "{:.3f}"
    return f"{f.format(value)} [{f.format(ci[0])}, {f.format(ci[1])}]"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short research session: 2 offline researchers, 3 experiments each."""
    base = tmp_path_factory.mktemp("report")
    toy = make_toy_testbed(base / "toy", "pairwise")
    workdir = base / "work"
    cmd = [sys.executable, "-m", "w2slab.researchers.cli", "research", "--testbed", str(toy), "--researchers", "2",
           "--hours", "0.05", "--weak", WEAK, "--strong", STRONG, "--workdir", str(workdir), "--grace", "40",
           "--max-experiments", "3", "--max-grader-queries", "4"]
    cmd += [] if find_bwrap() is not None else ["--unsafe-no-sandbox"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=os.environ.copy(), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return {"toy": toy, "workdir": workdir, "output": output, "status": json.loads((workdir / "status.json").read_text())}


def test_report_written_with_the_headline_and_the_plot(run: dict) -> None:
    workdir, st = run["workdir"], run["status"]
    s = st["summary"]
    md, page = (workdir / "report.md").read_text(), (workdir / "report.html").read_text()
    assert f"report: {workdir / 'report.html'}" in run["output"].replace("\n", "")
    best, naive = s["best"], s["naive"]
    assert best is not None and best["vs"] is not None and naive is not None
    headline = [ci_text(best["pgr"], best["pgr_ci"]), ci_text(naive["pgr"], naive["pgr_ci"]),
                ci_text(best["vs"]["diff"], best["vs"]["ci"], sign=True)]
    for text in headline:
        assert text in md and text in page
    head = md.split("## PGR over time")[0]
    assert f"by {best['researcher']}" in head and f"holdout of {s['sealed_rows']} rows" in head
    for pick in s["sealed_picks"]:  # every researcher's sealed pick, with its interval
        assert ci_text(pick["pgr"], pick["pgr_ci"]) in md
    cost = md.split("## Cost and time per researcher")[1].split("## ")[0]
    for r in st["researchers"]:  # cost and time per researcher
        row = next(line for line in cost.splitlines() if line.startswith(f"| {r['name']} | "))
        assert f"| {r['experiments']} | {r['grader_queries']} |" in row and r["outcome"] in row
    assert "## Top ideas" in md and "## Negative results" in md and "## Audit flags" in md
    # every change a researcher ran itself against its parent is ranked, or counted as not measurable
    changes = 0
    for r in st["researchers"]:
        nb = json.loads((Path(r["workspace"]) / "notebook.json").read_text())
        ran = {e["key"] for e in nb["experiments"] if e.get("ok")}
        changes += sum(1 for key, n in nb["nodes"].items() if n.get("parent") and key in ran)
    ranked = len(re.findall(r"^\| .* \| notebook[^|]*\|$", md, re.MULTILINE))
    unranked = re.search(r"^(\d+) more change\(s\) had no paired dev answer", md, re.MULTILINE)
    assert changes >= 1 and ranked + (int(unranked.group(1)) if unranked else 0) == changes
    # the plot: a PNG next to report.md, the same bytes inline in the HTML
    png = (workdir / "report_pgr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    inline = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert inline and base64.b64decode(inline.group(1)) == png
    assert "report_pgr.png" in md and "http" not in page.split("<body>")[0]  # nothing fetched from the network


def test_report_escapes_untrusted_text(tmp_path: Path) -> None:
    """Method names and directions come from researchers: no markup reaches the page."""
    evil = '<script>alert(1)</script> | [x](javascript:alert(2)) <img src=x onerror=alert(3)>'
    pick = {"researcher": "r1", "submission_id": 1, "method_name": evil, "pgr": 0.25, "pgr_ci": [0.1, 0.4],
            "board_pgr": 0.3, "vs": {"diff": 0.05, "ci": [-0.01, 0.11]}, "audit": "done", "flags": [{"kind": evil}]}
    status = {"run_id": "x", "testbed": "toy", "started": 0, "researchers": [
        {"name": "r1", "direction": evil, "outcome": "done", "experiments": 2, "grader_queries": 3, "workspace": str(tmp_path)}]}
    paths = write_report(tmp_path, {"testbed": "toy", "best": pick, "naive": None, "sealed_picks": [pick], "wall_seconds": 5},
                         status)
    page = paths["html"].read_text()
    body = page.split("<body>")[1]
    assert "<script" not in body and "<img src=x" not in body and 'href="javascript' not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "0.250 [0.100, 0.400]" in body and "+0.050 [-0.010, +0.110]" in body


def test_dev_intervals_cover_the_truth() -> None:
    """The approximate dev intervals cover the true value in simulation: one dev answer (binomial
    row noise), and a paired effect over 1 or 2 seeds on the same rows, with the disagreement
    measured on the predictions or bounded by the error rates, and the seed variance pooled over
    other ideas (as the report does). Without the seed term, one seed undercovers."""
    rng = np.random.default_rng(0)
    n, weak, ceiling = 200, 0.6, 0.8
    base = {"weak": weak, "gap": ceiling - weak, "dev_rows": n}
    acc_a, acc_b, flip = 0.72, 0.68, 0.05
    truth = (acc_a - acc_b + flip * (2 * acc_b - 1)) / (ceiling - weak)  # the flips move b towards 50%

    def trial(k: int) -> tuple[list[float], list[float], float]:
        easy = rng.random(n)  # row difficulty, shared by both methods: a paired comparison
        pa, pb, dis = [], [], []
        for _ in range(k):  # a seed shifts each method's accuracy a little
            a = easy < acc_a + rng.normal(0, 0.02)
            b = (easy < acc_b + rng.normal(0, 0.02)) ^ (rng.random(n) < flip)
            pa.append((a.mean() - weak) / (ceiling - weak))
            pb.append((b.mean() - weak) / (ceiling - weak))
            dis.append(float(np.mean(a != b)))
        return pa, pb, float(np.mean(dis))

    trials = 300
    one = np.mean([lo <= (acc_a - weak) / (ceiling - weak) <= hi
                   for lo, hi in (dev_ci((t - weak) / (ceiling - weak), t, base) for t in rng.binomial(n, acc_a, 3000) / n)])
    assert one >= 0.93  # a Wald interval: 94.9% exactly at n=200, p=0.72
    covered = {"measured, 1 seed": 0, "measured, 2 seeds": 0, "bound, 2 seeds": 0, "no seed term, 1 seed": 0}
    for _ in range(trials):
        pilot = [trial(2) for _ in range(6)]  # other ideas of the run, measured on 2 seeds
        pooled = float(np.mean([np.var(np.subtract(pa, pb), ddof=1) for pa, pb, _ in pilot]))
        pa, pb, dis = trial(1)
        effect, ci = effect_ci(pa, pb, base, dis, pooled)
        assert math.isclose(effect, pa[0] - pb[0])
        covered["measured, 1 seed"] += ci[0] <= truth <= ci[1]
        _, ci = effect_ci(pa, pb, base, dis, None)
        covered["no seed term, 1 seed"] += ci[0] <= truth <= ci[1]
        pa, pb, dis = trial(2)
        for what, d in (("measured, 2 seeds", dis), ("bound, 2 seeds", None)):
            _, ci = effect_ci(pa, pb, base, d, pooled)
            covered[what] += ci[0] <= truth <= ci[1]
    rates = {k: v / trials for k, v in covered.items()}
    assert all(rates[k] >= 0.93 for k in ("measured, 1 seed", "measured, 2 seeds", "bound, 2 seeds")), rates
    assert rates["no seed term, 1 seed"] < 0.9, rates


def test_live_status_in_a_terminal_ends_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """In a terminal (a real pty) the launcher shows its live status board within 10 s of start;
    Ctrl-C ends the run cleanly: researchers stopped, summary and report written, cursor restored."""
    toy = make_toy_testbed(tmp_path / "toy", "pairwise")
    workdir = tmp_path / "work"
    cmd = [sys.executable, "-m", "w2slab.researchers.cli", "research", "--testbed", str(toy), "--researchers", "2",
           "--hours", "0.05", "--weak", WEAK, "--strong", STRONG, "--workdir", str(workdir), "--grace", "20",
           "--max-experiments", "2", "--no-baseline"]
    cmd += [] if find_bwrap() is not None else ["--unsafe-no-sandbox"]
    master, slave = pty.openpty()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "120", "LINES": "40"})
    os.close(slave)
    raw, first_frame, board_at, interrupted = b"", None, None, False
    try:
        while time.monotonic() - start < 300:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # the pty closes when the launcher exits
                    break
                if not chunk:
                    break
                raw += chunk
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode("utf-8", "replace"))
            if first_frame is None and "w2slab research: starting" in text:
                first_frame = time.monotonic() - start
            if board_at is None and re.search(r"research running on toy: elapsed \d+ s, \d+ s left", text):
                board_at = time.monotonic() - start
            if board_at is not None and not interrupted and re.search(r"offline-1 .* [1-9]\d* +\S+ ±", text):
                os.kill(proc.pid, signal.SIGINT)  # Ctrl-C once a researcher has a best dev PGR on the board
                interrupted = True
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        os.close(master)
    screen = raw.decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert first_frame is not None and first_frame < 10, text[-3000:]
    assert interrupted and code == 0, text[-3000:]
    for column in ("researcher", "direction", "state", "best dev", "PGR ±95%", "grader", "queries", "tokens", "in/out"):
        assert column in text
    assert "interrupted: terminating the researchers" in text and "research summary" in text
    assert screen.rfind("\x1b[?25h") > screen.rfind("\x1b[?25l")  # the cursor is shown again
    st = json.loads((workdir / "status.json").read_text())
    assert st["state"] == "interrupted" and all(not r["alive"] for r in st["researchers"])
    assert (workdir / "report.html").is_file()


# ---------------------------------------------------------------- the dashboard in a browser


@pytest.fixture(scope="module")
def server(run: dict):
    """A grader on the run's own database (the run's grader stopped at its end)."""
    srv = GraderServer(run["toy"], run["workdir"] / "grader" / "grader.db").start()
    with srv.add_researcher("pager") as c:  # more posts than one forum page
        for i in range(105):
            r = c.post("/api/posts", json={"kind": "insight", "title": f"paging post {i:03d}", "body": "x"})
            assert r.status_code == 201, r.text
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(server: GraderServer):
    with offline_page(server.url) as pg:
        yield pg


def test_report_page(server: GraderServer, run: dict, page) -> None:
    page.goto(f"{server.url}/report")
    assert "/login" in page.url  # operator only
    page.fill("input[name=token]", server.admin_token())
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/report")
    s = run["status"]["summary"]
    assert page.inner_text("h1") == f"Research report: {s['testbed']}"
    assert ci_text(s["best"]["pgr"], s["best"]["pgr_ci"]) in page.inner_text("body")
    assert page.evaluate("document.querySelector('img').naturalWidth") > 300  # the embedded plot decoded
    page.goto(f"{server.url}/research")  # each finished run links to its report
    page.click(f"section.run[data-run='{run['status']['run_id']}'] a.report-link")
    assert page.inner_text("h1") == f"Research report: {s['testbed']}"
    # no report for an unknown run: an HTML page that says so
    page.goto(f"{server.url}/report?run=nope")
    assert "no report" in page.inner_text("#no-report") and run["status"]["run_id"] in page.inner_text("main")


def test_html_404_favicon_and_api_json(server: GraderServer, page) -> None:
    resp = page.goto(f"{server.url}/no/such/page")
    assert resp.status == 404 and "html" in resp.headers["content-type"]
    assert page.inner_text("h1") == "404 Not found" and page.locator("nav a[href='/leaderboard']").count() == 1
    resp = page.goto(f"{server.url}/submissions/987654")
    assert resp.status == 404 and "no submission 987654" in page.inner_text("main")
    resp = page.goto(f"{server.url}/forum?offset=-1")  # a bad parameter: an HTML 422 page on the dashboard
    assert resp.status == 422 and page.inner_text("h1") == "422 Invalid request" and "offset" in page.inner_text("main")
    auth = {"Authorization": f"Bearer {server.admin_token()}"}
    r = httpx.get(f"{server.url}/api/submissions/987654/audit", headers=auth)  # the API keeps its JSON errors
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json") and "detail" in r.json()
    r = httpx.get(f"{server.url}/api/posts", params={"offset": -1}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"].startswith("query.offset")
    icon = page.request.get(f"{server.url}/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/x-icon" and icon.body()[:4] == b"\x00\x00\x01\x00"
    page.goto(f"{server.url}/leaderboard")
    assert page.get_attribute("link[rel=icon]", "href") == "/favicon.ico"


def test_forum_and_submissions_pagination(server: GraderServer, page) -> None:
    with server.client(server.admin_token()) as admin:
        n_posts = len(admin.get("/api/posts", params={"limit": 500}).json())
        n_subs = len(admin.get("/api/submissions").json())
    assert n_posts > 100
    page.goto(f"{server.url}/forum")
    assert page.locator("ul.posts li.post").count() == 100
    assert f"showing 1-100 of {n_posts}" in page.inner_text(".pager")
    assert page.locator(".pager a[rel=prev]").count() == 0
    first = page.locator("ul.posts li.post a").first.inner_text()
    page.click(".pager a[rel=next]")
    assert "offset=100" in page.url
    assert page.locator("ul.posts li.post").count() == n_posts - 100
    assert f"showing 101-{n_posts} of {n_posts}" in page.inner_text(".pager")
    assert page.locator(".pager a[rel=next]").count() == 0 and first not in page.inner_text("ul.posts")
    page.click(".pager a[rel=prev]")
    assert page.locator("ul.posts li.post a").first.inner_text() == first
    page.goto(f"{server.url}/forum?kind=insight&offset=100")  # the filter is kept across pages
    assert "showing 101-105 of 105" in page.inner_text(".pager") and "kind=insight" in page.get_attribute(".pager a[rel=prev]", "href")
    page.goto(f"{server.url}/forum?offset=5000")  # past the end: says so, and links back to the last page
    assert f"nothing past {n_posts}" in page.inner_text(".pager")
    assert page.get_attribute(".pager a[rel=prev]", "href") == "/forum?offset=100"
    assert n_subs >= 2
    page.goto(f"{server.url}/submissions?offset=1")
    assert page.locator("table tbody tr").count() == n_subs - 1
    assert f"showing 2-{n_subs} of {n_subs}" in page.locator(".pager").first.inner_text()
    assert page.locator(".pager").first.locator("a[rel=prev]").get_attribute("href") == "/submissions"


def test_pick_tables_name_the_researcher_once() -> None:
    from w2slab.researchers.report import method_text

    assert method_text({"researcher": "offline-1", "method_name": "offline-1: rank=32"}) == "rank=32"
    assert method_text({"researcher": "offline-2", "method_name": "offline-1: rank=32"}) == "offline-1: rank=32"
    assert method_text({"researcher": "alice", "method_name": "my method"}) == "my method"
