"""GPUs per researcher: disjoint blocks, clear refusals, and what a real sandboxed experiment of
each researcher sees (its device nodes only, CUDA_VISIBLE_DEVICES renumbered from 0). The
device folder is a folder of stand-in files (``W2SLAB_DEV_DIR``): this machine has no GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from w2slab.researchers.contract import ResearcherConfig
from w2slab.researchers.gpus import assign_gpus, detect_gpus, parse_gpu_list
from w2slab.researchers.launcher import Launcher
from w2slab.researchers.options import ResearchOptions
from w2slab.researchers.sandbox import find_bwrap

CONTROL = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


@pytest.fixture
def devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four GPUs and the control nodes, as plain files in a device folder of their own."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in [f"nvidia{i}" for i in range(4)] + list(CONTROL):
        (dev / name).write_text(f"{name}\n")
    (dev / "nvidia-modeset").write_text("")  # not a GPU: never counted, never passed
    monkeypatch.setenv("W2SLAB_DEV_DIR", str(dev))
    return dev


def test_assignment_is_disjoint_and_refusals_are_clear(devices: Path) -> None:
    assert detect_gpus() == [0, 1, 2, 3]
    assert assign_gpus(2, 2) == [[0, 1], [2, 3]]
    assert assign_gpus(3, 1) == [[0], [1], [2]]
    assert assign_gpus(2, 1, [3, 1]) == [[3], [1]]
    assert assign_gpus(2, 0, [2, 3]) == [[2], [3]]  # a list alone: one GPU each
    assert assign_gpus(2, 0) == [[], []]
    assert parse_gpu_list("0-2,3") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"3 researcher\(s\) x 2 GPU\(s\) = 6 GPUs asked for, but only 4 exist"):
        assign_gpus(3, 2)
    with pytest.raises(ValueError, match=r"GPU 7 does not exist here .*: 0,1,2,3\)"):
        assign_gpus(1, 1, [0, 7])
    with pytest.raises(ValueError, match="names a GPU twice"):
        parse_gpu_list("1,1")
    with pytest.raises(ValueError, match="bad GPU list"):
        parse_gpu_list("a")
    with pytest.raises(ValueError, match="GPUs asked for"):  # the launcher checks before starting anything
        Launcher(ResearchOptions(researchers=5, gpus_per_researcher=1))


@pytest.mark.parametrize("args, message", [
    (["--researchers", "3", "--gpus-per-researcher", "2"], "= 6 GPUs asked for, but only 4 exist here"),
    (["--gpus", "0,9"], "GPU 9 does not exist here"),
    (["--gpus", "zero"], "bad GPU list"),
])
def test_cli_refuses_in_one_line(devices: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "w2slab", "research", "--workdir", str(tmp_path / "w"), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()  # refused before anything was made


@pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap cannot run here")
def test_each_researcher_sandbox_sees_only_its_gpus(devices: Path, tmp_path: Path) -> None:
    blocks = assign_gpus(2, 2)
    probe = ("import os, sys; print(sorted(n for n in os.listdir('/dev') if n.startswith('nvidia')));"
             "print(os.environ['CUDA_VISIBLE_DEVICES']); print(open('/dev/nvidia' + sys.argv[1]).read().strip())")
    seen = []
    for i, gpus in enumerate(blocks):
        cfg = ResearcherConfig(name=f"r{i}", token="t", grader_url="", testbed="toy", kit_dir=tmp_path,
                               workspace=tmp_path / f"r{i}" / "workspace", gpus=gpus)
        spec_env = cfg.sandbox_spec().environment()
        assert spec_env["CUDA_VISIBLE_DEVICES"] == "0,1"
        res = cfg.run([sys.executable, "-c", probe, str(gpus[0])], wall_seconds=60)
        assert res.ok and res.sandboxed, res.stderr
        seen.append(res.stdout.split("\n"))
    assert seen[0][0] == str(sorted(["nvidia0", "nvidia1", *CONTROL]))
    assert seen[1][0] == str(sorted(["nvidia2", "nvidia3", *CONTROL]))
    assert seen[0][1] == seen[1][1] == "0,1"  # renumbered inside: CUDA counts the devices it can open
    assert (seen[0][2], seen[1][2]) == ("nvidia0", "nvidia2")  # the host's very nodes, bound in
    # without GPUs: no device node, and CUDA sees nothing
    cfg = ResearcherConfig(name="cpu", token="t", grader_url="", testbed="toy", kit_dir=tmp_path,
                           workspace=tmp_path / "cpu" / "workspace")
    res = cfg.run(["/bin/sh", "-c", "ls /dev; echo CVD=[$CUDA_VISIBLE_DEVICES]"], wall_seconds=60)
    assert res.ok and "nvidia" not in res.stdout and "CVD=[]" in res.stdout


def test_unsandboxed_runs_name_the_host_gpus(devices: Path, tmp_path: Path) -> None:
    cfg = ResearcherConfig(name="u", token="t", grader_url="", testbed="toy", kit_dir=tmp_path,
                           workspace=tmp_path / "u" / "workspace", gpus=[2, 3], sandbox=False)
    res = cfg.run(["/bin/sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], wall_seconds=60)
    assert res.ok and res.stdout.strip() == "2,3"
    assert cfg.sandbox_spec().memory_bytes is None  # CUDA reserves far more address space than it uses
