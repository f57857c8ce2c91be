"""The LLM researchers' tools (issue 14): arguments checked against each tool's JSON schema, long
output kept at both ends, and ``evaluate``'s seeds consistent with what ``run_experiment`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from w2slab.researchers.sandbox import find_bwrap
from w2slab.researchers.tools import ToolContext, Toolbox

GRADER_SEEDS = [4004, 46290]


@pytest.fixture
def box(tmp_path: Path) -> Toolbox:
    return Toolbox(ToolContext(workspace=tmp_path / "ws", testbed="toy", seeds=GRADER_SEEDS, sandbox=find_bwrap() is not None))


def test_arguments_are_checked_against_the_tool_schema(box: Toolbox) -> None:
    r = box.call("run_experiment", {"method_file": 12345})
    assert r.is_error and "run_experiment: argument 'method_file': 12345 is not of type 'string'" in r.content
    assert "AttributeError" not in r.content and '"method_file"' in r.content  # the schema comes with it
    r = box.call("forum_vote", {"post_id": "7", "value": 2})
    assert r.is_error and "argument 'post_id': '7' is not of type 'integer'" in r.content
    assert "argument 'value': 2 is not one of [1, -1]" in r.content
    r = box.call("shell", {"command": "true", "timeout_seconds": "ten"})
    assert r.is_error and "argument 'timeout_seconds': 'ten' is not of type 'number'" in r.content
    r = box.call("forum_post", {"kind": "result", "title": "t", "body": "b", "submission_ids": [1, "two"]})
    assert r.is_error and "argument 'submission_ids.1': 'two' is not of type 'integer'" in r.content
    assert box.ctx.usage.experiments == 0 and box.ctx.usage.grader_queries == 0
    r = box.call("write_file", {"path": "ok.txt", "content": "fine"})
    assert not r.is_error and (box.ctx.workspace / "ok.txt").read_text() == "fine"


def test_long_output_keeps_head_and_tail_and_says_how_much_was_cut(box: Toolbox) -> None:
    r = box.call("shell", {"command": "echo HEAD-MARK; head -c 300000 /dev/zero | tr '\\0' x; echo; echo TAIL-MARK >&2; "
                                      "head -c 300000 /dev/zero | tr '\\0' y >&2; echo; echo 'ValueError: the real end' >&2"})
    assert not r.is_error, r.content
    first = r.content.splitlines()[0]
    assert first.startswith("exit code 0; stdout was 300012 bytes: its start and end are kept, 200012 bytes in the middle were cut")
    assert "stderr was 300035 bytes" in first
    assert "HEAD-MARK" in r.content and r.content.rstrip().endswith("ValueError: the real end")
    assert "characters cut here" in r.content  # and the tool's own cut, in the middle of what it shows
    assert len(r.content) < 13_000 and "ValueError: the real end" in (r.full or "")


def test_evaluate_names_the_seeds_run_experiment_writes(box: Toolbox) -> None:
    desc = box.tools["evaluate"].parameters["properties"]["seed"]["description"]
    assert "run_experiment writes the grader's seeds 4004, 46290" in desc
    preds = {"predictions": {str(s): [0.5] * 4 for s in GRADER_SEEDS}}
    (box.ctx.workspace / "runs").mkdir()
    (box.ctx.workspace / "runs" / "p.json").write_text(json.dumps(preds))
    r = box.call("evaluate", {"predictions_file": "runs/p.json", "seed": 1})
    assert r.is_error and "has no seed 1: it holds seeds 4004, 46290" in r.content
    assert "run_experiment writes the grader's seeds 4004, 46290, evaluate one of those" in r.content
    assert box.ctx.usage.grader_queries == 0  # refused before spending anything
