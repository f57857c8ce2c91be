"""Dashboard screenshots for the README, from a real small run.

Runs a short offline research session (3 researchers, a few experiments each, on a generated toy
testbed with small weak/strong models, as the tests do), then serves the run's grader database
and saves PNGs of the leaderboard, the experiments table, a transcript, a forum finding with its
checked claims and the end-of-run report, taken with Playwright and Debian's chromium::

    .venv/bin/python docs/screenshots.py            # about 3-5 minutes on a laptop
    .venv/bin/python docs/screenshots.py --out /tmp/shots --keep

Needs the dev extras (playwright) and /usr/bin/chromium. Each PNG is quantised to 256 colours
to stay small (under 300 KB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's toy testbed and small models

from conftest import CHROMIUM, CHROMIUM_ARGS, make_toy_testbed  # noqa: E402
from test_grader_support import STRONG, WEAK  # noqa: E402

from w2slab.grader.process import GraderProcess  # noqa: E402
from w2slab.researchers.sandbox import find_bwrap  # noqa: E402

MAX_BYTES = 300_000


def research_run(base: Path) -> Path:
    """A short real research session; returns its work folder (grader database, report, transcripts)."""
    toy = make_toy_testbed(base / "toy", "pairwise")
    workdir = base / "work"
    cmd = [sys.executable, "-m", "w2slab.researchers.cli", "research", "--testbed", f"toy={toy}", "--researchers", "3",
           "--hours", "0.06", "--weak", WEAK, "--strong", STRONG, "--workdir", str(workdir), "--grace", "40",
           "--max-experiments", "4", "--max-grader-queries", "6"]
    cmd += [] if find_bwrap() is not None else ["--unsafe-no-sandbox"]
    print("research run:", " ".join(cmd[3:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=os.environ.copy(), check=False)
    if proc.returncode != 0:
        sys.exit(f"the research run failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return workdir


def save(page, path: Path, full_page: bool = False, clip_height: int | None = None) -> None:
    """A PNG of the page (at most ``clip_height`` px tall), quantised to 256 colours."""
    from PIL import Image

    height = page.evaluate("document.documentElement.scrollHeight")
    clip = {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": min(height, clip_height)} if clip_height else None
    page.screenshot(path=str(path), full_page=full_page or clip is not None, clip=clip)
    Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    size = path.stat().st_size
    print(f"{path}: {size // 1024} KB", flush=True)
    if size > MAX_BYTES:
        print(f"warning: {path.name} is over {MAX_BYTES // 1000} KB", flush=True)


def shoot(url: str, token: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
        page.set_default_timeout(60_000)
        page.goto(f"{url}/login?next=/leaderboard")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_selector("#pgr-chart svg.main-svg")
        save(page, out / "dashboard-leaderboard.png", clip_height=1700)
        page.goto(f"{url}/experiments?sort=pgr&order=desc")
        save(page, out / "dashboard-experiments.png", clip_height=1000)
        page.goto(f"{url}/research")
        page.locator("section.run a[href^='/research/']").first.click()
        page.wait_for_selector("ol.transcript")
        page.locator("ol.transcript li[data-kind=message] summary").nth(2).click()  # one entry expanded
        save(page, out / "dashboard-transcript.png", clip_height=1300)
        page.goto(f"{url}/forum?kind=result")
        page.locator("ul.posts li.post a").first.click()
        page.wait_for_selector("h1")
        save(page, out / "dashboard-claims.png", clip_height=1400)
        page.goto(f"{url}/report")
        save(page, out / "dashboard-report.png", clip_height=1600)
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default: docs/)")
    ap.add_argument("--keep", action="store_true", help="keep the run's temporary folder")
    ap.add_argument("--reuse", type=Path, help="the folder of a run kept with --keep: take new screenshots of it")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} not found: apt-get install -y chromium")
    base = args.reuse or Path(tempfile.mkdtemp(prefix="w2slab-shots-"))
    os.environ["W2SLAB_HOME"] = str(base / "home")
    try:
        workdir = base / "work" if args.reuse else research_run(base)
        status = json.loads((workdir / "status.json").read_text())
        grader = GraderProcess(f"{status['testbed']}={base / 'toy'}", base / "serve", WEAK, STRONG,
                               db_url=f"sqlite:///{workdir / 'grader' / 'grader.db'}")
        try:
            grader.wait_ready(600)
            shoot(grader.url, (base / "home" / "grader" / "admin_token").read_text().strip(), args.out)
        finally:
            grader.stop()
    finally:
        if args.keep or args.reuse:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
