"""Testbed loading and validation: every bad file gets one clear error naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from w2slab.testbeds import get_testbed
from w2slab.testbeds import testbed_fingerprint as fingerprint
from w2slab.testbeds.format import TestbedError, load_folder, read_jsonl, write_researcher_copy


def _write(path: Path, lines: list[str] | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode())
    return path


GOOD_PAIR = json.dumps({"prompt": "p", "first": "a", "second": "b", "label": "A", "extra": 1})
GOOD_CLAIM = json.dumps({"question": "q", "choice": "c", "label": True})


def test_reads_both_kinds_and_keeps_extra_fields(tmp_path: Path) -> None:
    pairs = read_jsonl(_write(tmp_path / "p.jsonl", [GOOD_PAIR, GOOD_PAIR.replace('"A"', '"B"')]))
    assert pairs.kind == "pairwise" and pairs.labels.tolist() == [0, 1] and pairs.rows[0]["extra"] == 1
    claims = read_jsonl(_write(tmp_path / "c.jsonl", [GOOD_CLAIM, GOOD_CLAIM.replace("true", "false")]))
    assert claims.kind == "correctness" and claims.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "lines, message",
    [
        ([GOOD_PAIR, '{"prompt": "p", "first": "a", "label": "A"}'], ":2: missing field 'second'"),
        ([GOOD_PAIR, '{"prompt": "p", "first": "a", "second": "b"}'], ":2: missing field 'label'"),
        ([GOOD_PAIR, '{"first": "a", "second": "b", "label": "A"}'], ":2: missing field 'prompt'"),
        ([GOOD_PAIR.replace('"A"', '"C"')], ':1: label must be "A" or "B", got "C"'),
        ([GOOD_CLAIM.replace("true", '"true"')], ':1: label must be false or true, got "true"'),
        ([GOOD_CLAIM.replace("true", "1")], ":1: label must be false or true, got 1"),
        ([GOOD_PAIR, "{broken"], ":2: broken JSON"),
        ([GOOD_PAIR, "[1, 2]"], ":2: each line must be a JSON object"),
        ([GOOD_PAIR, GOOD_CLAIM], ":2: correctness row in a pairwise file"),
        ([GOOD_PAIR.replace('"first": "a"', '"first": 3')], ":1: field 'first' must be a string"),
        (["", "  "], "empty split"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(TestbedError) as info:
        read_jsonl(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_non_utf8_reports_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bin.jsonl", (GOOD_PAIR + "\n").encode() + b'{"prompt": "\xff"}\n')
    with pytest.raises(TestbedError, match=r"bin.jsonl:2: not valid UTF-8"):
        read_jsonl(path)


def test_missing_split_file_is_named(toy_pairwise: Path) -> None:
    (toy_pairwise / "test.jsonl").unlink()
    with pytest.raises(TestbedError, match=r"test.jsonl: file not found"):
        load_folder(toy_pairwise)


def test_researcher_copy_hides_labels_subset_difficulty(toy_pairwise: Path, tmp_path: Path) -> None:
    data = load_folder(toy_pairwise)
    dest = write_researcher_copy(data, tmp_path / "visible")
    for split in ("train_label", "train_unlabel", "test"):
        rows = [json.loads(x) for x in (dest / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == len(data.split(split))
        assert all("label" not in r and "subset" not in r and "difficulty" not in r for r in rows)
        assert rows[0]["first"] == data.split(split).rows[0]["first"] and "id" in rows[0]
    with pytest.raises(TestbedError, match="missing field 'label'"):
        load_folder(dest)


def test_unknown_testbed_is_a_clear_error() -> None:
    with pytest.raises(TestbedError, match="unknown testbed 'nope'"):
        get_testbed("nope")


def test_fingerprint_follows_the_data(toy_pairwise: Path) -> None:
    before = fingerprint(str(toy_pairwise))
    path = toy_pairwise / "test.jsonl"
    path.write_text(path.read_text().replace('"A"', '"B"', 1))
    assert fingerprint(str(toy_pairwise)) != before
