"""Shared fixtures: an isolated W2SLAB_HOME and small generated testbeds."""

from __future__ import annotations

import os
import random
from pathlib import Path

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
