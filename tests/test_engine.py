"""Cache keys, PGR statistics, the pipeline end to end and the backend config parser."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from w2slab.engine import cache
from w2slab.engine.pipeline import Experiment, ceiling, weak_artifacts
from w2slab.engine.runner import cached_baselines, run_method_over_seeds
from w2slab.engine.stats import correct_matrix, pgr, pgr_interval, summarize
from w2slab.testbeds import load_testbed
from w2slab.models.base import BackendConfig

WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=glove-50,head=mlp,epochs=10"


def test_cache_key_is_canonical_and_complete(toy_pairwise: Path) -> None:
    exp = Experiment.create(str(toy_pairwise), WEAK, STRONG)
    key = exp.key("weak", 1)
    assert key == Experiment.create(str(toy_pairwise), WEAK, STRONG).key("weak", 1)
    assert cache.cache_key(a=1, b={"x": 1, "y": 2}) == cache.cache_key(b={"y": 2, "x": 1}, a=1)
    # every result-relevant value changes the key; batch size is one of them
    for override in ("batch_size=32", "lr=0.01", "epochs=11", "n_train=31", "model=glove-50"):
        assert Experiment.create(str(toy_pairwise), f"{WEAK},{override}", STRONG).key("weak", 1) != key
    assert exp.key("weak", 2) != key and exp.key("ceiling", 1) != key
    # the strong config does not touch the weak key; the device never counts
    assert Experiment.create(str(toy_pairwise), WEAK, "model=minilm-l6").key("weak", 1) == key
    assert Experiment.create(str(toy_pairwise), f"{WEAK},device=cpu", STRONG).key("weak", 1) == key


def test_cache_hit_after_batch_size_change_recomputes_not_crashes(toy_pairwise: Path) -> None:
    exp = Experiment.create(str(toy_pairwise), WEAK, STRONG)
    first = weak_artifacts(exp, 1)
    assert cache.load("weak", exp.key("weak", 1)) is not None
    again = weak_artifacts(exp, 1)
    np.testing.assert_array_equal(first["train_probs"], again["train_probs"])
    other = Experiment.create(str(toy_pairwise), f"{WEAK},batch_size=8", STRONG)
    assert cache.load("weak", other.key("weak", 1)) is None
    res = weak_artifacts(other, 1)
    assert res["train_probs"].shape == first["train_probs"].shape


def test_weak_and_ceiling_are_reproducible_and_strong_beats_weak(toy_pairwise: Path, tmp_path: Path, monkeypatch) -> None:
    exp = Experiment.create(str(toy_pairwise), WEAK, STRONG)
    w, c = weak_artifacts(exp, 3), ceiling(exp, 3)
    assert c["test_acc"] > w["test_acc"] + 0.05
    monkeypatch.setenv("W2SLAB_HOME", str(tmp_path / "fresh"))  # no cache: retrain from scratch
    w2 = weak_artifacts(exp, 3)
    np.testing.assert_allclose(w["train_probs"], w2["train_probs"], atol=1e-6)


def test_pgr_and_summary() -> None:
    assert pgr(0.6, 0.5, 0.7) == pytest.approx(0.5)
    assert math.isnan(pgr(0.6, 0.7, 0.7))
    s = summarize([0.6, 0.65, 0.55, 0.6, 0.62], [0.5] * 5, [0.7] * 5)
    assert s.pgr == pytest.approx(np.mean([0.5, 0.75, 0.25, 0.5, 0.6]))
    assert s.pgr_ci[0] < s.pgr < s.pgr_ci[1] and s.pgr_se > 0 and s.n_seeds == 5


@pytest.mark.parametrize(
    "spec, message",
    [
        ("probe:colour=red", "unknown backend option 'colour'"),
        ("probe:epochs=many", "backend option 'epochs' expects int"),
        ("gpu:model=x", "unknown backend kind 'gpu'"),
        ("probe:epochs", "expected key=value"),
        ("lm:epochs=2", "the lm backend needs model="),
    ],
)
def test_backend_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackendConfig.parse(spec)


def test_backend_spec_layers_on_base() -> None:
    base = BackendConfig.parse("probe:model=glove-50,epochs=7")
    cfg = BackendConfig.parse("lr=0.5", base=base)
    assert (cfg.model, cfg.epochs, cfg.lr) == ("glove-50", 7, 0.5)
    lm = BackendConfig.parse("lm:model=/tmp/x", base=base)
    assert (lm.kind, lm.epochs, lm.lr) == ("lm", 5, 1e-4)  # lm starts from its own defaults


def test_embeddings_are_cached_per_text_and_shared_cache_is_read_first(tmp_path: Path, monkeypatch) -> None:
    from w2slab.models.encoders import EmbeddingCache

    own = EmbeddingCache("glove-50", tmp_path / "own")
    first = own.encode(["a good day", "a bad day", "a good day"])
    assert first.shape == (3, 50) and np.array_equal(first[0], first[2])
    import sqlite3

    with sqlite3.connect(own.path) as db:
        assert db.execute("SELECT COUNT(*) FROM vec").fetchone()[0] == 2  # once per distinct text
        db.execute("UPDATE vec SET data = ?", (np.ones(50, dtype=np.float32).tobytes(),))
    own.checkpoint()
    monkeypatch.setenv("W2SLAB_SHARED_EMBEDDINGS", str(tmp_path / "own"))
    other = EmbeddingCache("glove-50", tmp_path / "other").encode(["a good day"])
    assert np.array_equal(other[0], np.ones(50))  # came from the shared file, not recomputed


def test_run_summary_is_the_row_x_seed_interval_of_the_test_predictions(toy_pairwise: Path) -> None:
    exp = Experiment.create(str(toy_pairwise), WEAK, STRONG)
    res = run_method_over_seeds(exp, "naive", [1, 2], workers=1, quiet=True)
    labels = load_testbed(exp.testbed).test.labels
    base = cached_baselines(exp, [1, 2])
    assert base is not None and len(base.weak_probs) == 2 and base.weak_probs[0].shape == (len(labels), 2)
    transfer = [np.stack([1 - np.array(r["test_probs_p1"]), r["test_probs_p1"]], 1) for r in res.per_seed]
    expected = pgr_interval(correct_matrix(transfer, labels), correct_matrix(base.weak_probs, labels),
                            correct_matrix(base.ceiling_probs, labels))
    s = res.summary
    assert (s.pgr, s.lo, s.hi, s.n_rows, s.n_seeds) == (expected.pgr, expected.lo, expected.hi, len(labels), 2)
    assert s.lo < s.pgr < s.hi
    assert [r["pgr"] for r in res.per_seed] == list(s.per_seed_pgr)
    out = res.to_json()["summary"]
    assert out["pgr_ci"] == [s.lo, s.hi] and out["pgr_se"] == s.se and out["n_rows"] == len(labels)
    assert out["ci_method"] == "paired bootstrap over test rows and seeds"
    # The disagreement between weak and ceiling predictions (for the minimum detectable effect).
    d = np.mean([(w.argmax(1) != c.argmax(1)).mean() for w, c in zip(base.weak_probs, base.ceiling_probs)])
    assert base.disagreement() == pytest.approx(d) and 0 < d < 1
