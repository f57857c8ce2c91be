"""Fast in-process checks of the grader's pure parts: predictions, splits, seeds, archives, search syntax."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from test_grader_support import odd_member, targz

from w2slab.grader.codestore import ArchiveError, CodeStore, check_archive
from w2slab.grader.forum import fts_query
from w2slab.grader.scoring import PredictionError, parse_predictions, server_seeds, split_rows


def test_parse_predictions_accepts_probabilities_labels_and_booleans() -> None:
    assert parse_predictions([0, 1, 0.25, "A", "B", True, False], 7).tolist() == [0, 1, 0.25, 0, 1, 1, 0]
    for bad, message in [([0.5, None], "predictions[1]: expected a number"), ([0.5, -0.1], "outside [0, 1]"),
                         ([0.5, float("nan")], "NaN and infinity"), ([0.5, "true"], 'label must be "A" or "B"'),
                         ({"a": 1}, "must be a list"), ([0.5], "expected 2 test rows")]:
        with pytest.raises(PredictionError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_predictions(bad, 2)


def test_split_is_reproducible_disjoint_and_in_thirds() -> None:
    fp = "ab" * 32
    dev, board, sealed = split_rows(101, fp)
    again = split_rows(101, fp)
    assert all(np.array_equal(x, y) for x, y in zip((dev, board, sealed), again))
    assert (len(dev), len(board), len(sealed)) == (33, 33, 35)
    assert not set(dev) & set(board) and not set(board) & set(sealed) and not set(dev) & set(sealed)
    assert sorted(np.concatenate([dev, board, sealed]).tolist()) == list(range(101))
    assert not np.array_equal(dev, split_rows(101, "cd" * 32)[0])


def test_server_seeds_fixed_per_secret_and_testbed() -> None:
    a = server_seeds(b"s1", "fp1", 5)
    assert a == server_seeds(b"s1", "fp1", 5) and len(set(a)) == 5
    assert a != server_seeds(b"s2", "fp1", 5) and a != server_seeds(b"s1", "fp2", 5)


def test_archive_limits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ok = targz([("a/b.py", b"x" * 10), ("a/c.txt", b"y")])
    info = check_archive(ok, 10_000, 1_000, 10)
    assert info.n_files == 2 and info.unpacked_size == 11 and len(info.sha256) == 64
    with pytest.raises(ArchiveError, match="more than 3 members"):
        check_archive(targz([(f"f{i}", b"") for i in range(5)]), 10_000, 1_000, 3)
    with pytest.raises(ArchiveError, match="special file"):
        check_archive(targz([], odd_member("fifo", tarfile.FIFOTYPE)), 10_000, 1_000, 10)
    # a pax header that claims a huge size cannot make the checker read past the cap
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info_ = tarfile.TarInfo("big")
        info_.pax_headers = {"comment": "z" * 200_000}
        tar.addfile(info_, io.BytesIO(b""))
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        check_archive(buf.getvalue(), 10_000_000, 1_000, 10)
    store = CodeStore(tmp_path)
    path = store.put(info.sha256, ok)
    assert path.read_bytes() == ok and store.put(info.sha256, ok) == path
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_fts_query_quotes_user_text() -> None:
    assert fts_query('weak" OR * NEAR(') == '"weak" "OR" "NEAR"*'
    assert fts_query("confidence") == '"confidence"*'
