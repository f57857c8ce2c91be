"""Shared fixtures: an isolated W2SLAB_HOME and small generated testbeds."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from w2slab.testbeds.format import write_jsonl

POSITIVE = ["good", "great", "excellent", "happy", "love", "wonderful", "nice", "fun"]
NEGATIVE = ["bad", "awful", "terrible", "sad", "hate", "boring", "ugly", "poor"]
FILLER = ["the", "movie", "was", "and", "plot", "actor", "really", "quite", "story", "food", "day"]


def _text(rng: random.Random, positive: bool) -> str:
    words = rng.choices(FILLER, k=6) + rng.choices(POSITIVE if positive else NEGATIVE, k=rng.randint(1, 2))
    words += rng.choices(NEGATIVE if positive else POSITIVE, k=rng.randint(0, 1))  # some confusion
    rng.shuffle(words)
    return " ".join(words)


def toy_rows(kind: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = rng.random() < 0.5
        if kind == "pairwise":
            first, second = _text(rng, pos), _text(rng, not pos)
            rows.append({"prompt": "Which review is more positive?", "first": first, "second": second,
                         "label": "A" if pos else "B", "subset": "toy", "id": i})
        else:
            claim = rng.random() < 0.5
            rows.append({"question": f"What is the sentiment of: {_text(rng, pos)}",
                         "choice": "positive" if claim else "negative", "label": claim == pos, "subset": "toy"})
    return rows


def make_toy_testbed(folder: Path, kind: str = "pairwise", sizes: tuple[int, int, int] = (60, 240, 120)) -> Path:
    for split, n, seed in zip(("train_label", "train_unlabel", "test"), sizes, (1, 2, 3)):
        write_jsonl(folder / f"{split}.jsonl", toy_rows(kind, n, seed))
    return folder


@pytest.fixture(scope="session", autouse=True)
def w2slab_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("w2slab_home")
    os.environ["W2SLAB_HOME"] = str(home)
    return home


@pytest.fixture
def toy_pairwise(tmp_path: Path) -> Path:
    return make_toy_testbed(tmp_path / "toy-pairs", "pairwise")


@pytest.fixture
def toy_correctness(tmp_path: Path) -> Path:
    return make_toy_testbed(tmp_path / "toy-claims", "correctness")


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


@contextlib.contextmanager
def offline_page(base_url: str) -> Iterator[Any]:
    """A Debian-chromium page (Playwright) that may load only ``base_url``: any other request is
    aborted and, at the end, fails the test (the dashboard must work with no internet)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page()
        outside: list[str] = []

        def only_local(route: Any) -> None:
            if route.request.url.startswith(base_url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        pg.route("**/*", only_local)
        pg.set_default_timeout(15_000)
        yield pg
        browser.close()
        assert outside == [], f"the dashboard tried to reach the internet: {outside}"
