"""The CLI as a user runs it: a real subprocess, one-line errors, a results table and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from w2slab.cli import parse_seeds

WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=glove-50,head=mlp,epochs=10"


def w2slab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "w2slab", *args], capture_output=True, text=True, env=os.environ.copy(), timeout=600
    )


def test_parse_seeds() -> None:
    assert parse_seeds("1,2,3") == [1, 2, 3]
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("a,b", "", "1,1", "3-x"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "-m", "nope", "-t", "{tb}"], "unknown method 'nope'"),
        (["run", "-m", "naive", "-t", "/no/such/testbed"], "unknown testbed '/no/such/testbed'"),
        (["run", "-m", "naive", "-t", "{tb}", "--seeds", "1,x"], "bad seed list '1,x'"),
        (["run", "-m", "naive", "-t", "{tb}", "-p", "alpha=1"], "unknown parameter 'alpha'"),
        (["run", "-m", "naive", "-t", "{tb}", "--strong", "colour=red"], "unknown backend option 'colour'"),
        (["baselines", "-t", "{tb}", "--executor", "slurm", "--weak", WEAK], "unknown executor 'slurm'"),
    ],
)
def test_user_mistakes_get_one_line_errors(toy_pairwise: Path, args: list[str], message: str) -> None:
    res = w2slab(*[a.replace("{tb}", str(toy_pairwise)) for a in args])
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_bad_testbed_file_error_names_line(toy_pairwise: Path) -> None:
    with (toy_pairwise / "test.jsonl").open("a") as f:
        f.write('{"prompt": "p", "first": "a", "second": "b", "label": "Z"}\n')
    res = w2slab("baselines", "-t", str(toy_pairwise), "--weak", WEAK, "--strong", STRONG)
    assert res.returncode == 2 and "test.jsonl:121: label must be" in res.stderr and "Traceback" not in res.stderr


def test_run_prints_table_and_writes_json(toy_pairwise: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    res = w2slab("run", "-m", "soft", "-t", str(toy_pairwise), "--seeds", "1-3", "--weak", WEAK, "--strong", STRONG,
                 "-o", str(out), "-q", "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "PGR" in res.stdout and "95% CI (rows x seeds)" in res.stdout
    data = json.loads(out.read_text())
    assert data["method"] == "soft" and data["seeds"] == [1, 2, 3] and data["summary"]["n_seeds"] == 3
    summary = data["summary"]
    lo, hi = summary["pgr_ci"]
    assert lo < summary["pgr"] < hi and summary["pgr_se"] > 0 and summary["n_rows"] == 120
    assert summary["ci_method"] == "paired bootstrap over test rows and seeds"
    assert f"[{lo:.3f}, {hi:.3f}]" in res.stdout
    row = data["per_seed"][0]
    assert 0 <= row["transfer_acc"] <= 1 and len(row["test_probs_p1"]) == 120
    assert data["config"]["weak"]["n_train"] == 30
    # the same run again reproduces every number (seeded, cached baselines)
    out2 = tmp_path / "again.json"
    w2slab("run", "-m", "soft", "-t", str(toy_pairwise), "--seeds", "1-3", "--weak", WEAK, "--strong", STRONG, "-o", str(out2), "-q")
    assert json.loads(out2.read_text())["summary"] == data["summary"]


def test_help_explains_options() -> None:
    res = w2slab("run", "--help")
    assert res.returncode == 0 and "--seeds" in res.stdout and "--executor" in res.stdout and "--param" in res.stdout


def test_one_seed_run_still_prints_an_interval_from_rows(toy_pairwise: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.json"
    res = w2slab("run", "-m", "naive", "-t", str(toy_pairwise), "--seeds", "2", "--weak", WEAK, "--strong", STRONG,
                 "-o", str(out), "-q")
    assert res.returncode == 0, res.stderr
    summary = json.loads(out.read_text())["summary"]
    lo, hi = summary["pgr_ci"]
    assert summary["n_seeds"] == 1 and lo < summary["pgr"] < hi and hi - lo > 0.05  # 120 rows: wide
    assert "95% CI (rows, 1 seed)" in res.stdout and f"[{lo:.3f}, {hi:.3f}]" in res.stdout and "n/a" not in res.stdout


def test_testbeds_shows_mde_of_the_sealed_holdout_in_80_columns(tmp_path: Path, monkeypatch) -> None:
    from w2slab.engine import cache
    from w2slab.engine.pipeline import Experiment
    from w2slab.engine.stats import min_detectable_effect
    from w2slab.testbeds import REGISTRY, load_testbed

    # Cached baselines for one built-in testbed, in a home of its own: known accuracies and disagreement.
    monkeypatch.setenv("W2SLAB_HOME", str(tmp_path / "home"))
    exp = Experiment.create("tweets-pairs")
    labels = load_testbed("tweets-pairs").test.labels
    n = len(labels)
    rng = np.random.default_rng(0)
    onehot = lambda right: np.eye(2)[np.where(right, labels, 1 - labels)]  # noqa: E731
    disagree = []
    for seed in range(1, 6):
        w, c = rng.random(n) < 0.6, rng.random(n) < 0.8
        cache.store("weak", exp.key("weak", seed), {"train_probs": np.zeros((3, 2)), "test_probs": onehot(w)})
        cache.store("ceiling", exp.key("ceiling", seed), {"test_probs": onehot(c)})
        disagree.append((w != c).mean())
    res = subprocess.run([sys.executable, "-m", "w2slab", "testbeds"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80"}, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in REGISTRY:
        assert any(line.startswith(name + " ") for line in lines), name  # names are never cut
    row = next(line for line in lines if line.startswith("tweets-pairs "))
    cells = row.split()
    weak, ceil, gap, mde = (float(x) for x in cells[-4:])
    n_sealed = n - 2 * (n // 3)
    expected = min_detectable_effect(n_sealed, float(np.mean(disagree)), ceil - weak)
    assert abs(gap - (ceil - weak)) <= 0.0015 and 0.15 < gap < 0.25
    assert mde == pytest.approx(expected, abs=0.006)
    assert "MDE" in res.stdout and "sealed" in res.stdout
