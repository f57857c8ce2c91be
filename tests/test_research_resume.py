"""``w2slab research --resume``: a real run (launcher subprocess, real grader on loopback, offline
researchers in real sandboxes) is killed with SIGKILL after its first experiments and resumed:
same grader database, researchers, tokens, notebooks and session; transcripts and accounting
continue from where they were; the run ends with submissions and one naive baseline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_toy_testbed
from research_support import alive, launched, read_json, wait_for
from test_grader_support import STRONG, WEAK

from w2slab.researchers.runfolder import stop_leftovers
from w2slab.researchers.sandbox import find_bwrap

sandboxed = find_bwrap() is not None


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "w2slab.researchers.cli", "research", *args]


def evaluations(workdir: Path) -> dict[str, int]:
    from w2slab.grader.queries import audit_log
    from w2slab.grader.db import make_engine

    engine = make_engine(f"sqlite:///{workdir / 'grader' / 'grader.db'}")
    counts: dict[str, int] = {}
    for a in audit_log(engine, limit=10_000):
        if a["kind"] == "evaluate":
            counts[a["researcher"]] = counts.get(a["researcher"], 0) + 1
    engine.dispose()
    return counts


@pytest.fixture
def workdir(tmp_path: Path):
    """The run's folder; whatever a failed test leaves running there (a grader, researchers) is stopped."""
    yield tmp_path / "work"
    stop_leftovers(tmp_path / "work")


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path: Path, workdir: Path) -> None:
    toy = make_toy_testbed(tmp_path / "toy-pairs", "pairwise")
    dev = tmp_path / "dev"  # two stand-in GPUs: the resumed researchers keep theirs
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl"):
        (dev / name).write_text("")
    env = dict(os.environ, W2SLAB_DEV_DIR=str(dev))
    extra = [] if sandboxed else ["--unsafe-no-sandbox"]
    names = ["offline-1", "offline-2"]

    # refusals: not a run folder (missing, or no run in it)
    for bad in (tmp_path / "missing", tmp_path):
        out = subprocess.run(cli("--resume", str(bad)), capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "not a research run folder" in out.stderr or "does not exist" in out.stderr

    with launched(cli("--testbed", str(toy), "--researchers", "2", "--hours", "0.5", "--weak", WEAK,
                      "--strong", STRONG, "--workdir", str(workdir), "--grace", "40", "--max-experiments", "5",
                      "--max-grader-queries", "7", "--gpus-per-researcher", "1", *extra),
                  tmp_path / "first.log", workdir, env) as first:
        wait_for(lambda: all(read_json(workdir / n / "usage.json").get("grader_queries", 0) >= 1 for n in names),
                 480, "a first evaluation by each researcher", first)
        os.kill(first.pid, signal.SIGKILL)  # the launcher alone: no clean-up of any kind
        first.wait(10)

    info = read_json(workdir / "launcher.json")
    grader_pid, workers = info["grader_pid"], info["workers"]
    end = time.monotonic() + 30  # the researchers die with their launcher
    while any(alive(p) for p in workers.values()) and time.monotonic() < end:
        time.sleep(0.2)
    assert not any(alive(p) for p in workers.values()), "researchers outlived their killed launcher"
    before = {n: {"lines": (workdir / n / "transcript.jsonl").read_text().splitlines(),
                  "usage": read_json(workdir / n / "usage.json"),
                  "config": read_json(workdir / n / "config.json")} for n in names}
    evals_before = evaluations(workdir)
    session = read_json(workdir / "session.json")["session"]
    assert [before[n]["config"]["gpus"] for n in names] == [[0], [1]]
    for n in names:
        assert before[n]["usage"]["session"] == session and evals_before[n] >= 1
        json.loads(before[n]["lines"][-1])  # whole lines only, even after kill -9

    with launched(cli("--resume", str(workdir), "--hours", "0.5"), tmp_path / "resumed.log", workdir, env) as resumed:
        wait_for(lambda: read_json(workdir / "launcher.json").get("pid") == resumed.pid
                 and read_json(workdir / "status.json").get("resumed") is True, 240, "the resumed launcher", resumed)
        # a second launcher on the same run is refused while this one runs
        out = subprocess.run(cli("--resume", str(workdir)), capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 2 and "is still running" in out.stderr and "Traceback" not in out.stderr, out.stderr
        resumed.wait(420)
    output = (tmp_path / "resumed.log").read_text()
    assert resumed.returncode == 0, output[-4000:]
    assert not alive(grader_pid)  # the killed run's grader was stopped, then restarted on the same database
    assert "stopped processes left by the killed launcher" in output

    status = read_json(workdir / "status.json")
    assert status["state"] == "finished" and status["session"] == session and status["resumed"] is True
    rows = {r["name"]: r for r in status["researchers"]}
    assert sorted(rows) == names
    evals_after = evaluations(workdir)
    for n in names:
        r, old = rows[n], before[n]
        lines = (workdir / n / "transcript.jsonl").read_text().splitlines()
        assert lines[:len(old["lines"])] == old["lines"] and len(lines) > len(old["lines"])  # appended, nothing lost
        new = [json.loads(x) for x in lines[len(old["lines"]):]]
        resumed_events = [e for e in new if e.get("event") == "resumed"]
        assert resumed_events and resumed_events[0]["session"] == session
        assert resumed_events[0]["usage"]["grader_queries"] == old["usage"]["grader_queries"]
        # the same researcher and token; budgets count what was spent before the kill
        config = read_json(workdir / n / "config.json")
        assert config["token"] == old["config"]["token"] and config["gpus"] == old["config"]["gpus"]
        assert config["grader_url"] != old["config"]["grader_url"]  # a new grader process (same database)
        for k in ("experiments", "grader_queries"):
            assert r[k] >= old["usage"][k]
        assert r["experiments"] <= 5 and r["grader_queries"] <= 7
        assert r["stop_reason"] in ("experiment budget", "grader query budget")
        # the grader kept the evaluations from before the kill; the accounting agrees with it
        assert evals_after[n] >= evals_before[n] and r["grader_queries"] == evals_after[n] == r["server"]["evaluations_total"]
        assert r["final"]["submission_id"] and r["outcome"] == "done"
    board = status["summary"]
    assert board["best"]["researcher"] in names and board["naive"]["pgr"] is not None
    from w2slab.grader.queries import submissions
    from w2slab.grader.db import make_engine

    subs = submissions(make_engine(f"sqlite:///{workdir / 'grader' / 'grader.db'}"), "toy-pairs")
    assert len({s["id"] for s in subs if s["method_name"] == "naive (reference)"}) == 1  # not submitted twice
