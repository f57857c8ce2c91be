"""Rough edges of the command line (issue 14), each as a user meets it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from w2slab.cli import parse_seeds

WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=glove-50,head=mlp,epochs=10"


def w2slab(*args: str, columns: int = 100) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "w2slab", *args], capture_output=True, text=True, env=env, timeout=600)


def test_a_reversed_seed_range_is_named() -> None:
    with pytest.raises(ValueError, match=r"seed range '5-1' is reversed: did you mean '1-5'\?"):
        parse_seeds("5-1")
    with pytest.raises(ValueError, match="reversed"):
        parse_seeds("1,9-7")
    assert parse_seeds("3-3") == [3] and parse_seeds("1-3") == [1, 2, 3]


RAISES = '''
from w2slab.methods import method


def helper(x):
    return x["missing"]


@method("raiser")
def raiser(ctx):
    if ctx.seed == 2:
        helper({})
    return ctx.weak_test_probs
'''

SEVENS = '''
import numpy as np
from w2slab.methods import method


@method("sevens")
def sevens(ctx):
    return np.full((len(ctx.test), 2), 7.0)
'''


def test_a_method_that_raises_names_file_line_seed_and_type(toy_pairwise: Path, tmp_path: Path) -> None:
    f = tmp_path / "ideas" / "raiser.py"
    f.parent.mkdir()
    f.write_text(RAISES)
    res = w2slab("run", "-m", str(f), "-t", str(toy_pairwise), "--seeds", "1,2", "--weak", WEAK, "--strong", STRONG,
                 "--workers", "1", "-q", "-o", str(tmp_path / "out.json"))
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "raised KeyError: 'missing'" in line and f"{f}:6 (in helper)" in line and "seed 2" in line, line


def test_unnormalised_probabilities_are_refused(toy_pairwise: Path, tmp_path: Path) -> None:
    f = tmp_path / "sevens.py"
    f.write_text(SEVENS)
    res = w2slab("run", "-m", str(f), "-t", str(toy_pairwise), "--seeds", "1", "--weak", WEAK, "--strong", STRONG,
                 "--workers", "1", "-q", "-o", str(tmp_path / "out.json"))
    assert res.returncode == 2 and not (tmp_path / "out.json").exists()
    assert "row 0 is (7, 7), summing to 14, not 1" in res.stderr and "seed 1" in res.stderr, res.stderr


@pytest.mark.parametrize("command", [["baselines", "-t", "x"], ["run", "-m", "naive", "-t", "x"], ["serve", "-t", "x"]])
def test_zero_workers_are_refused(command: list[str]) -> None:
    res = w2slab(*command, "--workers", "0")
    assert res.returncode == 2 and "--workers" in res.stderr and "1" in res.stderr


def test_flags_show_no_bool_metavar_and_demo_names_its_real_folder() -> None:
    for command in (["run"], ["baselines"], ["serve"], ["demo"], ["flags"]):
        out = w2slab(*command, "--help", columns=160).stdout
        assert "--help" in out and "<bool>" not in out, (command, out)
    out = w2slab("demo", "--help", columns=200).stdout
    assert "runs/demo/<date-time>" in out and "demo-research" not in out
    src = Path(__file__).resolve().parents[1] / "w2slab" / "researchers" / "demo.py"
    assert 'Path("runs") / "demo" / time.strftime' in src.read_text()  # the default the help names


def test_flags_json_is_one_document(tmp_path: Path) -> None:
    from w2slab.grader.auth import create_researcher
    from w2slab.grader.db import make_engine, migrate

    db = tmp_path / "g.db"
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    create_researcher(engine, "somebody")
    res = w2slab("flags", "--json", "--db", f"sqlite:///{db}")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []


# ---------------------------------------------------------------- custom testbeds


def test_validator_messages_name_the_field_line_and_column(tmp_path: Path) -> None:
    from w2slab.testbeds.format import TestbedError, read_jsonl

    claim = '{"question": "Is it good?", "choice": "yes", "label": true}'
    cases = [
        ([claim, '{"question": "q", "label": false}'], ":2: missing field 'choice' (correctness rows have question, choice, label)"),
        (['{"question": "q", "label": false}'], ":1: missing field 'choice'"),
        (['{"text": "q", "label": false}'], ":1: row has neither pairwise fields"),
        ([claim, '{"question": "a\tb", "choice": "c", "label": true}'], ":2: broken JSON (Invalid control character at column 16)"),
    ]
    for lines, message in cases:
        path = tmp_path / "x.jsonl"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(TestbedError) as info:
            read_jsonl(path)
        assert message in str(info.value) and "at at" not in str(info.value), str(info.value)
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((claim + "\n" + claim + "\n").encode() + '{"question": "caf\xe9", "choice": "c", "label": true}\n'.encode("latin-1"))
    with pytest.raises(TestbedError) as info:
        read_jsonl(path)
    assert f"{path}:3: not valid UTF-8 (byte 0xe9 at byte 18 of the line)" in str(info.value)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (claim + "\n" + claim + "\n").encode())
    split = read_jsonl(path)
    assert len(split) == 2 and split.rows[0]["question"] == "Is it good?"


def test_custom_folders_get_a_weak_model_for_their_kind_or_their_meta(toy_correctness: Path, toy_pairwise: Path) -> None:
    from w2slab.engine.pipeline import Experiment
    from w2slab.testbeds import CORRECTNESS_WEAK, DEFAULT_WEAK, get_testbed

    assert get_testbed(str(toy_correctness)).weak == CORRECTNESS_WEAK
    assert get_testbed(str(toy_pairwise)).weak == DEFAULT_WEAK
    (toy_pairwise / "meta.json").write_text(json.dumps({"weak": "probe:model=glove-50,head=linear,epochs=7",
                                                        "strong": "probe:model=glove-50,head=mlp,epochs=9"}))
    spec = get_testbed(str(toy_pairwise))
    assert (spec.weak, spec.strong) == ("probe:model=glove-50,head=linear,epochs=7", "probe:model=glove-50,head=mlp,epochs=9")
    exp = Experiment.create(str(toy_pairwise))
    assert (exp.weak.model, exp.weak.head, exp.weak.epochs, exp.strong.epochs) == ("glove-50", "linear", 7, 9)


def test_baselines_name_their_models_and_warn_when_the_weak_model_is_at_chance(toy_correctness: Path) -> None:
    common = ["baselines", "-t", str(toy_correctness), "--seeds", "1,2", "--strong", STRONG, "--workers", "1", "-q"]
    res = w2slab(*common, columns=200)  # the folder's default weak model for correctness rows: relates claim and text
    assert res.returncode == 0, res.stderr
    assert "weak model: probe:model=glove-50,head=mlp,epochs=40; test accuracy" in res.stdout
    assert "strong model: probe:model=glove-50,head=mlp,epochs=10; test accuracy" in res.stdout
    assert "at chance" not in res.stderr, res.stdout + res.stderr
    res = w2slab(*common, "--weak", WEAK, columns=200)  # a bag of words cannot relate a claim to its text
    assert res.returncode == 0, res.stderr
    assert "weak model: probe:model=bow,head=linear,epochs=10,n_train=30" in res.stdout
    assert "warning: the weak model is at chance here (its interval includes 0.5)" in res.stderr
