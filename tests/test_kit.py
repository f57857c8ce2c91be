"""Researcher kits carry no labels, and predicting from a kit equals running the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from w2slab.engine.kit import Kit, export_kit, predict
from w2slab.engine.pipeline import Experiment, run_method

WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=glove-50,head=mlp,epochs=10"


def test_kit_has_no_labels_and_reproduces_the_pipeline(toy_pairwise: Path, tmp_path: Path) -> None:
    exp = Experiment.create(str(toy_pairwise), WEAK, STRONG)
    kit_dir = export_kit(exp, [1, 2], tmp_path / "kit")
    for path in kit_dir.rglob("*.jsonl"):
        assert all("label" not in json.loads(line) and "subset" not in json.loads(line) for line in path.read_text().splitlines())
    assert not (kit_dir / "train_label.jsonl").exists()
    out = predict(kit_dir, "soft", [1, 2])
    reference = run_method(exp, "soft", {}, 2)
    np.testing.assert_allclose(out["predictions"]["2"], reference["test_probs"][:, 1], atol=1e-5)
    with pytest.raises(ValueError, match="no weak labels for seed 9"):
        Kit.open(kit_dir).context(9)
