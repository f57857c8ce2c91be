"""The submission attacks of the red team with the submission defences switched off: they must
succeed there (so the hardened red team's "at chance" can fail), against a real grader subprocess.
Audits are off: these attacks are about the scores and refusals, not the code."""

from __future__ import annotations

import pytest

from w2slab.integrity.redteam import RedTeam


def test_submission_attacks_read_labels_and_split_without_the_defences(tmp_path_factory: pytest.TempPathFactory) -> None:
    with RedTeam(tmp_path_factory.mktemp("rt-off"), seed=15, board_ladder=False, dup_rows="board", audits=False) as rt:
        regression, oracle = rt.attack_submission_regression(), rt.attack_refusal_oracle()
    # exact board scores: every probe that hit a board row read its label
    assert regression.guessed >= 6 and regression.correct == regression.guessed and regression.p_value < 0.01
    # near-duplicates compared on the scored rows only: 409 vs 201 tells board rows apart
    assert oracle.correct == oracle.guessed == 16 and oracle.p_value < 0.01
