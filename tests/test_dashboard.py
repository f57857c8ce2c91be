"""The dashboard in a real browser (Debian chromium via Playwright) against a real grader
server: the leaderboard shows a submission, the PGR chart renders, forum search works;
everything loads from the server itself (no internet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_toy_testbed
from test_grader_support import STRONG, WEAK, GraderServer, targz

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]


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
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page()
        outside: list[str] = []

        def only_local(route) -> None:  # type: ignore[no-untyped-def]
            if route.request.url.startswith(server.url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        pg.route("**/*", only_local)
        pg.set_default_timeout(15_000)
        yield pg
        browser.close()
        assert outside == [], f"the dashboard tried to reach the internet: {outside}"


def test_leaderboard_shows_submissions_and_chart(server: GraderServer, page) -> None:
    page.goto(f"{server.url}/")
    assert page.url.endswith("/leaderboard")
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == 2
    first = rows.nth(0).inner_text()
    assert "erin" in first and "entropy-reg" in first and "[" in first  # the interval is shown
    assert "frank" in rows.nth(1).inner_text()
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
