"""The warm sandbox (a zygote that forks one child per run): real sandboxes, real attacks on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from w2slab.engine.kit import export_kit
from w2slab.engine.pipeline import Experiment
from w2slab.researchers import sandbox as sb
from w2slab.researchers.sandbox import SandboxSpec, WarmSandbox, find_bwrap, python_binds, run_in_sandbox

from conftest import make_toy_testbed

pytestmark = pytest.mark.skipif(find_bwrap() is None, reason="no working bubblewrap here")

PROJECT = Path(sb.__file__).resolve().parents[2]
METHOD = '''
import os, sys, time
import numpy as np
from w2slab.methods import method


@method("probe-run")
def run(ctx):
    ctx.notes["ppid"] = os.getppid()
{body}
    return ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)
'''


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("warm")
    exp = Experiment.create(str(make_toy_testbed(root / "toy")), "model=bow,head=linear,n_train=30,epochs=10",
                            "model=glove-50,head=mlp,epochs=10")
    return export_kit(exp, [1], root / "kit")


def warm_for(kit: Path, ws: Path, **kw) -> WarmSandbox:
    spec = SandboxSpec(workspace=ws, readonly=[*python_binds(PROJECT), kit], wall_seconds=kw.pop("wall_seconds", 60),
                       cpu_seconds=kw.pop("cpu_seconds", None), env={"OMP_NUM_THREADS": "1"})
    return WarmSandbox(spec, kit=kit, **kw)


def predict(warm: WarmSandbox, kit: Path, body: str, wall: float | None = None) -> tuple[sb.SandboxResult, dict]:
    ws = warm.run_spec.workspace
    src = ws / "method.py"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(METHOD.format(body=body))
    out = ws / "out.json"
    out.unlink(missing_ok=True)
    res = warm.run(["predict", "--kit", str(kit), "-m", str(src), "-o", str(out), "--seeds", "1"], wall)
    assert res is not None
    return res, json.loads(out.read_text()) if out.is_file() else {}


def test_warm_runs_share_one_process_and_compute_what_a_cold_run_does(kit: Path, tmp_path: Path) -> None:
    with warm_for(kit, tmp_path / "ws") as warm:
        first, a = predict(warm, kit, "    pass")
        second, b = predict(warm, kit, "    pass")
    assert first.ok and second.ok and first.sandboxed, first.stderr
    assert a["notes"]["1"]["ppid"] == b["notes"]["1"]["ppid"]  # one zygote served both runs
    cold = run_in_sandbox(warm.run_spec, [sys.executable, "-m", "w2slab", "predict", "--kit", str(kit), "-m",
                                          str(tmp_path / "ws" / "method.py"), "-o", str(tmp_path / "ws" / "cold.json"), "--seeds", "1"])
    assert cold.ok, cold.stderr
    assert json.loads((tmp_path / "ws" / "cold.json").read_text())["predictions"] == b["predictions"]


def test_a_run_leaves_nothing_in_memory_for_the_next(kit: Path, tmp_path: Path) -> None:
    with warm_for(kit, tmp_path / "ws") as warm:
        tamper, _ = predict(warm, kit, "    import w2slab.models.probe as p\n    p.train_head = None\n    np.mean = None")
        after, out = predict(warm, kit, "    import w2slab.models.probe as p\n"
                                        "    ctx.notes['clean'] = p.train_head is not None and np.mean is not None")
    assert not tamper.ok  # its own student could not train without train_head
    assert after.ok and out["notes"]["1"]["clean"] is True


def test_limits_hold_per_run_and_a_dead_zygote_is_replaced(kit: Path, tmp_path: Path) -> None:
    with warm_for(kit, tmp_path / "ws", cpu_seconds=2) as warm:
        slow, _ = predict(warm, kit, "    time.sleep(60)", wall=3)
        assert slow.timed_out and "wall-clock limit of 3" in slow.stderr
        busy, _ = predict(warm, kit, "    while True: pass")
        assert busy.cpu_exceeded and "CPU-time limit" in busy.stderr
        ok, _ = predict(warm, kit, "    pass")
        assert ok.ok, ok.stderr
        killer, _ = predict(warm, kit, "    os.kill(os.getppid(), 9); time.sleep(5)")
        assert not killer.ok and "warm sandbox ended" in killer.stderr
        again, _ = predict(warm, kit, "    pass")
    assert again.ok, again.stderr
    assert warm.starts_left == 1  # a second zygote was started


ATTACK = ("    try:\n        open(f'/proc/{os.getppid()}/mem', 'r+b').close()\n        ctx.notes['tamper'] = 'opened'\n"
          "    except OSError as e:\n        ctx.notes['tamper'] = type(e).__name__")


def test_a_run_cannot_write_the_warm_process_memory(kit: Path, tmp_path: Path) -> None:
    """The attack: open the zygote's memory for writing (it could then change what every later run
    computes). It works against a dumpable zygote and fails against the real one."""
    with warm_for(kit, tmp_path / "off", harden=False) as warm:
        _, out = predict(warm, kit, ATTACK)
    assert out["notes"]["1"]["tamper"] == "opened"
    with warm_for(kit, tmp_path / "on") as warm:
        _, out = predict(warm, kit, ATTACK)
    assert out["notes"]["1"]["tamper"] == "PermissionError"


def test_an_lm_student_is_not_loaded_before_the_forks(tmp_path: Path) -> None:
    """The warm process reads a probe student's features, never an lm student (loading it there
    would initialise CUDA before the forks): a kit naming a model that does not exist still serves."""
    exp = Experiment.create(str(make_toy_testbed(tmp_path / "toy")), "model=bow,head=linear,n_train=30,epochs=10",
                            "lm:model=/nonexistent/model")
    kit = export_kit(exp, [1], tmp_path / "kit")
    with warm_for(kit, tmp_path / "ws") as warm:
        res = warm.run(["--help"])
    assert res is not None and res.ok and "predict" in res.stdout, res and res.stderr
