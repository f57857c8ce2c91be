"""Automated offline researchers end to end: a real launcher subprocess that starts a real
grader on loopback (real SQLite), real bubblewrap sandboxes for the experiments, a researcher
killed mid-run and restarted from its notebook, budget caps, status.json accounting."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlmodel import Session, select
from conftest import make_toy_testbed
from research_support import launched, read_json, wait_for
from test_grader_support import STRONG, WEAK, GraderServer

from w2slab.engine.kit import export_kit, predict
from w2slab.engine.pipeline import Experiment
from w2slab.grader.db import Submission, make_engine
from w2slab.models.base import PROBE_TRAINING, BackendConfig, soft_xent
from w2slab.models.probe import ProbeBackend, batch_plan, train_head, train_head_torch
from w2slab.researchers.directions import BUILTIN, assign_directions, load_directions
from w2slab.researchers.client import GraderClient
from w2slab.researchers.contract import Budgets, ResearcherConfig
from w2slab.researchers.offline import FINALISTS, OfflineResearcher, _lcb, _mean, _values
from w2slab.researchers.recipes import Mutator, Recipe, direction_bias, recipe_from_text, starter_recipes
from w2slab.researchers.sandbox import find_bwrap

MAX_EXPERIMENTS = 4
MAX_QUERIES = 5
sandboxed = find_bwrap() is not None


def launcher_cmd(toy: Path, workdir: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "w2slab.researchers.cli", "research", "--testbed", str(toy), "--researchers", "2",
           "--hours", "0.05", "--weak", WEAK, "--strong", STRONG, "--workdir", str(workdir), "--grace", "40", *extra]
    return cmd + ([] if sandboxed else ["--unsafe-no-sandbox"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    """One research session on a toy testbed; researcher 1 is SIGKILLed after its first experiment."""
    base = tmp_path_factory.mktemp("research")
    toy = make_toy_testbed(base / "toy-pairs", "pairwise")
    workdir = base / "work"
    killed = {}
    with launched(launcher_cmd(toy, workdir, "--max-experiments", str(MAX_EXPERIMENTS),
                               "--max-grader-queries", str(MAX_QUERIES)), base / "launcher.log", workdir) as proc:
        nb_path = workdir / "offline-1" / "workspace" / "notebook.json"
        wait_for(lambda: len(read_json(nb_path).get("experiments", [])) >= 1, 240, "a first experiment", proc)
        usage = read_json(workdir / "offline-1" / "usage.json")
        killed = {"pid": usage["pid"], "experiments_before": len(read_json(nb_path)["experiments"])}
        os.kill(usage["pid"], signal.SIGKILL)
        proc.wait(150)
    output = (base / "launcher.log").read_text()
    assert proc.returncode == 0, output
    return {"workdir": workdir, "toy": toy, "killed": killed, "output": output}


def grader_db(run) -> object:
    from w2slab.grader.db import make_engine

    return make_engine(f"sqlite:///{run['workdir'] / 'grader' / 'grader.db'}")


def test_research_session_lands_in_the_grader(run) -> None:
    from w2slab.grader import forum
    from w2slab.grader.queries import audit_log, snapshots, submissions

    engine = grader_db(run)
    status = json.loads((run["workdir"] / "status.json").read_text())
    names = [r["name"] for r in status["researchers"]]
    assert names == ["offline-1", "offline-2"] and status["state"] == "finished"
    audit = audit_log(engine, limit=10_000)
    board = submissions(engine, "toy-pairs")  # both boards (W2S and teacher-free)
    posts = forum.list_posts(engine, limit=500)
    snaps = {s["sha256"]: s for s in snapshots(engine)}
    for r in status["researchers"]:
        name = r["name"]
        evals = [a for a in audit if a["researcher"] == name and a["kind"] == "evaluate"]
        # accounting: self-reported, server-side and the audit log agree
        assert r["grader_queries"] == len(evals) == r["server"]["evaluations_total"] > 0
        assert 1 <= r["submissions"] == r["server"]["submissions"] == len(r["final"]["candidates"]) <= FINALISTS
        assert r["findings_posted"] == r["server"]["posts"] == len([p for p in posts if p["author"] == name])
        # budget caps: stopped at the cap, never beyond it
        assert len(evals) <= MAX_QUERIES and r["experiments"] <= MAX_EXPERIMENTS
        assert len(evals) == MAX_QUERIES or r["experiments"] == MAX_EXPERIMENTS
        assert r["stop_reason"] in ("grader query budget", "experiment budget")
        # findings with effect sizes and the recipe in the body
        mine = [p for p in posts if p["author"] == name and (p["metrics"] or {}).get("effect") is not None]
        assert mine and all(p["kind"] in ("result", "negative_result") for p in mine)
        full = forum.get_post(engine, mine[0]["id"])
        recipe = recipe_from_text(full["body"])
        assert recipe is not None and recipe.key == full["metrics"]["recipe_key"]
        assert (full["metrics"]["effect"] > 0) == (full["kind"] == "result")
        # the submission, its snapshot, and that the snapshot holds the very file that was evaluated
        final = r["final"]
        row = next(b for b in board if b["id"] == final["submission_id"])
        assert row["researcher"] == name and row["snapshot_sha256"] == final["snapshot"] in snaps
        ws = Path(r["workspace"])
        evaluated = ws / "recipes" / f"recipe_{final['recipe']}.py"
        store = Path(os.environ["W2SLAB_HOME"]) / "grader" / "snapshots" / final["snapshot"][:2] / f"{final['snapshot']}.tar.gz"
        with tarfile.open(fileobj=io.BytesIO(store.read_bytes()), mode="r:gz") as tar:
            packed = tar.extractfile(evaluated.name).read()
        assert packed == evaluated.read_bytes()
        # transcripts: every message, tool call and tool result
        lines = [json.loads(x) for x in Path(r["transcript"]).read_text().splitlines()]
        types = {x["type"] for x in lines}
        assert {"message", "tool_call", "tool_result", "event"} <= types
        assert len([x for x in lines if x["type"] == "tool_call" and x["tool"] == "grader.evaluate"]) == len(evals)
        assert any(x["type"] == "tool_call" and x["tool"] == "sandbox.run" and x["args"]["sandboxed"] == sandboxed for x in lines)
        # through the grader's Ladder (on by default): an answer "not improved" is scored a margin below the best
        answers = [x["result"] for x in lines if x["type"] == "tool_result" and x["tool"] == "grader.evaluate"
                   and isinstance(x.get("result"), dict) and "improved" in x["result"]]
        assert len(answers) == len(evals) and answers[0]["improved"] is True
        best = max(a["pgr"] for a in answers if a["improved"])
        nb = json.loads((ws / "notebook.json").read_text())
        for e in nb["experiments"]:
            for seed in e.get("censored", []):
                assert e["pgr"][str(seed)] <= best - answers[0]["ladder_pgr"] + 1e-9
        # the dev figure it reports for its submission is the honest estimate the pick used, censoring named
        node = nb["nodes"][final["recipe"]]
        assert final["dev_pgr"] == round(_mean(node, nb["sigma"]), 4) and final["dev_lcb"] == round(_lcb(node, nb["sigma"]), 4)
        assert final["dev_censored"] == sorted(node.get("censored", [])) and final["dev_seeds"] == list(node["results"])
        for p in posts:
            m = p["metrics"] or {}
            if p["author"] == name and m.get("recipe_key") in nb["nodes"] and not m.get("final"):
                assert m["censored"] == sorted(set(m["censored"])) and set(m["censored"]) <= {str(x) for x in m["seeds"]}
    assert any(b["method_name"] == "naive (reference)" for b in board)
    # totals and the summary
    total = status["total"]
    for k in ("experiments", "grader_queries", "findings_posted", "submissions"):
        assert total[k] == sum(r[k] for r in status["researchers"])
    summary = status["summary"]
    assert summary["best"]["researcher"] in names and summary["naive"]["pgr"] is not None
    assert summary["dashboard"].startswith("http://127.0.0.1:") and "research summary" in run["output"]
    # mirrored on the grader (dashboard /research): the final status.json and every transcript line
    from w2slab.grader import research

    (mirror,) = [r for r in research.list_runs(engine) if r["run_id"] == status["run_id"]]
    assert mirror["sandboxed"] is sandboxed is status["sandboxed"] and mirror["state"] == "finished"
    assert mirror["status"]["total"] == total and mirror["status"]["summary"] == summary
    for r in status["researchers"]:
        lines = Path(r["transcript"]).read_text().splitlines()
        assert mirror["transcript_lines"][r["name"]] == len(lines)
        stored = research.transcript(engine, status["run_id"], r["name"], 0, len(lines))["lines"]
        assert [json.loads(x) for x in lines] == [e["entry"] for e in stored]
    assert "could not push" not in run["output"]


def test_directions_and_workspaces_differ(run) -> None:
    status = json.loads((run["workdir"] / "status.json").read_text())
    a, b = status["researchers"]
    assert a["direction"] != b["direction"]
    assert [a["direction"], b["direction"]] == [d.name for d in BUILTIN[:2]]
    assert a["workspace"] != b["workspace"]
    for r in (a, b):
        nb = json.loads((Path(r["workspace"]) / "notebook.json").read_text())
        assert nb["name"] == r["name"] and nb["direction"] in {d.text for d in BUILTIN}
    na = json.loads((Path(a["workspace"]) / "notebook.json").read_text())
    nbb = json.loads((Path(b["workspace"]) / "notebook.json").read_text())
    assert na["direction"] != nbb["direction"]


def test_killed_researcher_restarts_from_its_notebook(run) -> None:
    status = json.loads((run["workdir"] / "status.json").read_text())
    r = {x["name"]: x for x in status["researchers"]}
    assert r["offline-1"]["restarts"] == 1 and r["offline-2"]["restarts"] == 0
    assert r["offline-1"]["outcome"] == "done" and r["offline-1"]["pid"] != run["killed"]["pid"]
    nb = json.loads((Path(r["offline-1"]["workspace"]) / "notebook.json").read_text())
    assert nb["restarts"] == 1 and len(nb["experiments"]) > run["killed"]["experiments_before"]
    assert r["offline-1"]["experiments"] >= len(nb["experiments"])  # an experiment cut short still counts
    events = [json.loads(x) for x in Path(r["offline-1"]["transcript"]).read_text().splitlines() if '"event"' in x]
    assert [e["event"] for e in events].count("launched") == 2
    assert any(e["event"] == "resumed" and e["experiments"] >= 1 for e in events)
    assert "restarting (1/2) from its notebook" in run["output"]


def test_status_and_stop_commands(run, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from w2slab.researchers.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["research", "status", "--workdir", str(run["workdir"])], terminal_width=250)
    assert out.exit_code == 0, out.output
    assert "offline-1" in out.output and "offline-2" in out.output and "total" in out.output
    out = runner.invoke(app, ["research", "status", "--workdir", str(run["workdir"]), "--json"])
    assert json.loads(out.output)["state"] == "finished"
    assert runner.invoke(app, ["research", "stop", "--workdir", str(tmp_path / "nothing")]).exit_code == 2
    out = runner.invoke(app, ["research", "stop", "--workdir", str(run["workdir"])])
    assert out.exit_code == 0 and (run["workdir"] / "STOP").exists()
    (run["workdir"] / "STOP").unlink()


# ---------------------------------------------------------------- fast units on real components


def test_directions_load_and_assign(tmp_path: Path) -> None:
    assert len(BUILTIN) >= 8 and len({d.name for d in BUILTIN}) == len(BUILTIN)
    got = assign_directions(3)
    assert len({d.name for d in got}) == 3 and assign_directions(len(BUILTIN) + 1)[-1] == BUILTIN[0]
    text = tmp_path / "d.txt"
    text.write_text("# ensembles\nAverage students.\nMore text.\n\n\nSecond idea here.\n")
    d = load_directions(text)
    assert [x.name for x in d] == ["ensembles", "direction-2"] and d[0].text == "Average students. More text."
    js = tmp_path / "d.json"
    js.write_text(json.dumps(["one", {"name": "Two Things", "text": "two"}]))
    assert [(x.name, x.text) for x in load_directions(js)] == [("direction-1", "one"), ("two-things", "two")]
    js.write_text("[1]")
    with pytest.raises(ValueError):
        load_directions(js)


def test_direction_bias_and_mutations() -> None:
    import random

    text = next(d.text for d in BUILTIN if d.name == "ensembles")
    w = direction_bias(text, "ensembles")
    assert w["ensemble"] > w["loss"]
    starters = starter_recipes(text, Recipe(), "ensembles")
    assert starters and starters[0][1].ensemble == 3
    # a user's direction is read by keywords
    custom = starter_recipes("Try a difference-in-means probe of the representation.", Recipe())
    assert custom[0][1].relabel == "probe"
    assert {d.name for d in BUILTIN} <= {n for n in __import__("w2slab.researchers.recipes", fromlist=["x"]).DIRECTION_PLANS}
    m, rng, tried = Mutator(w), random.Random(0), {Recipe().key}
    for _ in range(20):
        got = m.mutate(Recipe(), rng, tried)
        assert got is not None and got[1].key not in tried
        tried.add(got[1].key)
    with pytest.raises(ValueError):
        Recipe(label="nonsense")


@pytest.mark.parametrize("kind", ["pairwise", "correctness"])
def test_rendered_recipes_run_every_block(kind: str, tmp_path: Path) -> None:
    from w2slab.engine.kit import export_kit

    toy = make_toy_testbed(tmp_path / f"toy-{kind}", kind, sizes=(40, 120, 60))
    kit = export_kit(Experiment.create(str(toy), WEAK, STRONG), [1], tmp_path / "kit")
    recipes = [
        Recipe(),
        Recipe(label="sharp", temperature=0.5, relabel="knn", relabel_k=200, symmetric=True, filter="disagree",
               loss="aux", weighting="confidence", rounds=1, ensemble=2, epochs=5, head="linear"),
        Recipe(label="soft", relabel="probe", relabel_mix=0.5, filter="confident", keep_frac=0.5, epochs=5, lr=3e-3),
    ]
    for r in recipes:
        path = tmp_path / f"recipe_{r.key}.py"
        path.write_text(r.render())
        assert recipe_from_text(path.read_text()) == r
        out = predict(kit, str(path), [1])
        p = np.asarray(out["predictions"]["1"])
        assert p.shape == (60,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
        assert out["params"]["ensemble"] == r.ensemble


@pytest.mark.slow
def test_stop_file_makes_researchers_submit(tmp_path: Path) -> None:
    """`w2slab research stop` mid-run: the researchers wrap up, submit and exit cleanly."""
    toy = make_toy_testbed(tmp_path / "toy-pairs", "pairwise")
    workdir = tmp_path / "work"
    with launched(launcher_cmd(toy, workdir, "--researchers", "1", "--no-baseline", "--hours", "0.5"),
                  workdir.parent / "launcher.log", workdir) as proc:
        nb = workdir / "offline-1" / "workspace" / "notebook.json"
        wait_for(lambda: len(read_json(nb).get("experiments", [])) >= 2, 200, "two experiments", proc)
        subprocess.run([sys.executable, "-m", "w2slab.researchers.cli", "research", "stop", "--workdir", str(workdir)],
                       check=True, capture_output=True, timeout=60)
        proc.wait(120)
    status = json.loads((workdir / "status.json").read_text())
    (r,) = status["researchers"]
    assert r["stop_reason"] == "stop requested" and r["final"]["submission_id"] and r["outcome"] == "done"
    # a second session in the same workdir: same researcher (token reused), notebook continued,
    # counters per session, a new submission
    done = subprocess.run(launcher_cmd(toy, workdir, "--researchers", "1", "--no-baseline", "--max-experiments", "2"),
                          capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (r2,) = json.loads((workdir / "status.json").read_text())["researchers"]
    assert r2["name"] == "offline-1" and r2["experiments"] == 2 and r2["stop_reason"] == "experiment budget"
    assert r2["grader_queries"] <= 4
    nb = json.loads((Path(r2["workspace"]) / "notebook.json").read_text())
    assert nb["restarts"] == 1 and (workdir / "offline-1").glob("usage.*.json")
    first_ids = {c["submission_id"] for c in r["final"]["candidates"]}
    if "resubmission_refused" in r2["final"]:  # near-duplicates of the first session's: those stand
        assert r2["final"]["submission_id"] in first_ids and "refused" in nb["final"] and len(nb["finals"]) == len(first_ids)
    else:
        new = {c["submission_id"] for c in r2["final"]["candidates"]}
        assert new and not new & first_ids and len(nb["finals"]) == len(first_ids) + len(new)


# ---------------------------------------------------------------- the final pick (selection under the Ladder)


@pytest.fixture(scope="module")
def researcher_factory(tmp_path_factory: pytest.TempPathFactory):
    """Real OfflineResearchers on a real toy kit; the grader URL is never contacted by these tests."""
    base = tmp_path_factory.mktemp("pick")
    toy = make_toy_testbed(base / "toy-pairs", "pairwise", sizes=(40, 120, 60))
    kit = export_kit(Experiment.create(str(toy), WEAK, STRONG), [1, 2, 3, 4, 5], base / "kit")
    count = iter(range(1000))

    def make(**budgets) -> OfflineResearcher:
        ws = base / f"r{next(count)}"
        cfg = ResearcherConfig(name="offline-t", token="t", grader_url="http://127.0.0.1:9", testbed="toy-pairs",
                               kit_dir=Path(kit), workspace=ws / "workspace", direction="ensembles",
                               direction_name="ensembles", budgets=Budgets(**budgets), transcript=ws / "t.jsonl",
                               usage_path=ws / "usage.json", stop_file=ws / "STOP", dev_seeds=[1, 2, 3, 4, 5])
        return OfflineResearcher(cfg)

    return make


def _node(r, recipe: Recipe, results: dict[str, float], censored: dict[str, float] | None = None) -> dict:
    node = r.nb.node(recipe, origin="test")
    node["results"].update({s: v for s, v in results.items()})
    for s, bound in (censored or {}).items():
        node.setdefault("censored", []).append(s)
        node.setdefault("bounds", {})[s] = bound
    return node


def test_censored_seed_counts_against_a_recipe(researcher_factory) -> None:
    """The issue-12 case: one real 0.21 and one Ladder-censored seed must not outrank four seeds at
    0.197 (before the fix the censored seed was left out of the mean but kept in n)."""
    r = researcher_factory()
    margin = 0.05
    # seed 2's record is 0.20 (another recipe): "not improved" => the truth is below 0.25; recorded 0.15
    lucky = _node(r, Recipe(ensemble=3), {"1": 0.21, "2": 0.20 - margin}, censored={"2": 0.20 + margin})
    steady = _node(r, Recipe(label="soft"), {s: 0.197 for s in "1234"})
    assert r.best()["key"] == steady["key"]
    vals = _values(lucky)
    assert vals["1"] == 0.21 and vals["2"] <= 0.20 - margin  # imputed below the Ladder's bound
    assert _mean(lucky) < 0.2 and _lcb(lucky) < _lcb(steady)
    # a poor recipe's censored seed is not lifted to the record holder's level (Tobit expectation)
    poor = _node(r, Recipe(rounds=1), {"1": -0.30, "2": 0.20 - margin}, censored={"2": 0.20 + margin})
    assert _values(poor)["2"] < -0.30 + 0.01
    # what the researcher reports is the same honest estimate, with the censoring marked
    assert f"{_mean(lucky):.3f}" in r.dev_text(lucky) and "1 censored" in r.dev_text(lucky)
    r.nb.save()
    md = r.nb.md_path.read_text()
    assert "censored" in md and f"{_mean(steady):.3f}" in md


def test_only_censored_answers_and_real_ones_rank_by_lower_bound(researcher_factory) -> None:
    r = researcher_factory()
    a = _node(r, Recipe(ensemble=2), {"1": 0.29})
    b = _node(r, Recipe(ensemble=3), {"1": 0.33, "2": 0.22, "3": 0.30, "4": 0.27})  # mean 0.28, sd ~0.05
    c = _node(r, Recipe(label="soft"), {"1": 0.10}, censored={"1": 0.40})  # nothing real: its recorded value
    assert _lcb(c, r.sigma()) == pytest.approx(0.10 - r.sigma())
    assert r.best()["key"] == b["key"] and _lcb(a, r.sigma()) < _lcb(b, r.sigma())  # more seeds, more trust


def test_endgame_rechecks_top_candidates_on_more_seeds(researcher_factory) -> None:
    r = researcher_factory(experiments=10)
    _node(r, Recipe(), {"1": 0.0, "2": 0.02})
    for _, recipe in r.starters:  # the opening moves are done
        _node(r, recipe, {"1": 0.1, "2": 0.12})
    lucky = _node(r, Recipe(label="sharp"), {"1": 0.45, "2": 0.40})
    steady = _node(r, Recipe(label="soft"), {s: 0.35 for s in "1234"})
    r.usage.experiments = 5
    action = r.choose()
    assert action is not None and not action.why.startswith("re-check")  # budget left: the search goes on
    r.usage.experiments = 7  # three experiments left: spend them re-checking the top candidates
    action = r.choose()
    assert action.kind == "confirm" and action.recipe.key == lucky["key"] and action.seeds == [3, 4]
    lucky["results"].update({"3": 0.20, "4": 0.22})  # it was a lucky pair
    action = r.choose()
    assert action.kind == "confirm" and action.recipe.key == steady["key"] and action.seeds == [5]
    assert r.best()["key"] == steady["key"]


# ---------------------------------------------------------------- faster student training, same measurement


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_hand_written_adamw_is_bit_for_bit_torch(head: str) -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(300, 16, generator=g), torch.rand(300, generator=g) + 0.5
    y = torch.softmax(torch.randn(300, 2, generator=g), -1)
    cfg = BackendConfig(head=head, hidden=32)
    heads = []
    for train in (train_head, None):
        torch.manual_seed(5)
        h = ProbeBackend(cfg)._make_head(16)
        gen = torch.Generator().manual_seed(5)
        if train is None:
            train_head_torch(h, x, y, w, soft_xent, gen, 4, 64, 3e-3, 0.1, 0.1, fused=True)
        else:
            train(h, x, y, w, soft_xent, gen, 4, 64, 3e-3, 0.1, 0.1)
        heads.append(h)
    for a, b in zip(heads[0].parameters(), heads[1].parameters()):
        assert torch.equal(a, b)


def test_batch_plan_grows_batches_only_on_large_sets_and_keys_the_cache() -> None:
    cfg = BackendConfig()
    assert cfg.max_steps_per_epoch == 8
    assert batch_plan(500, cfg) == (64, cfg.lr)  # the 500-row weak teachers: unchanged
    batch, lr = batch_plan(3000, cfg)
    assert batch == 375 and -(-3000 // batch) == 8 and lr == pytest.approx(cfg.lr * (375 / 64) ** 0.5)
    old = BackendConfig.parse("probe:max_steps_per_epoch=none")
    assert batch_plan(3000, old) == (64, cfg.lr)
    # results differ, so cache keys differ; an unset value keeps the keys from before the field existed
    assert "max_steps_per_epoch" not in old.cache_dict() and cfg.cache_dict()["max_steps_per_epoch"] == 8
    lm = BackendConfig.parse("lm:model=x")
    assert lm.max_steps_per_epoch is None and "max_steps_per_epoch" not in lm.cache_dict()
    # the probe's optimiser arithmetic is keyed (fused AdamW moved results by float rounding)
    assert cfg.cache_dict()["training"] == PROBE_TRAINING and "training" not in lm.cache_dict()
    assert "max_steps_per_epoch" not in BackendConfig(kind="lm", model="x").cache_dict()  # the lm backend ignores it


# ---------------------------------------------------------------- quality-diversity archive


def test_archive_keeps_one_elite_per_family_and_spreads_the_search(researcher_factory) -> None:
    assert Recipe().family == "naive" and Recipe(label="soft", ensemble=3, epochs=10).family == "label=soft+ensemble"
    assert Recipe(ensemble=2, lr=3e-3).family == Recipe(ensemble=3).family != Recipe(label="soft").family
    r = researcher_factory()
    _node(r, Recipe(), {s: 0.0 for s in "1234"})
    for _, recipe in r.starters:
        _node(r, recipe, {s: 0.1 for s in "1234"})
    # one crowded family of good variants (ensembles) and one lone, slightly weaker family (soft labels)
    spread = {"1": 0.05, "2": -0.05, "3": 0.03, "4": -0.03}  # seed-to-seed noise (sigma ~0.05)
    crowd = [_node(r, Recipe(ensemble=e, epochs=ep), {s: 0.30 + 0.002 * i + d for s, d in spread.items()})
             for i, (e, ep) in enumerate([(2, 10), (2, 20), (3, 10), (3, 20), (3, 5), (2, 5)])]
    lone = _node(r, Recipe(label="soft"), {s: 0.29 + d for s, d in spread.items()})
    elites = r.archive()
    assert elites["ensemble"]["key"] == crowd[-1]["key"] and elites["label=soft"]["key"] == lone["key"]
    assert r.nb.data["archive"]["ensemble"] == crowd[-1]["key"]
    # what the search builds on (screening moves, which start an unmeasured block from naive, aside)
    parents = [a.parent for a in (r.choose() for _ in range(200)) if a is not None and a.kind == "try" and a.origin != "screen"]
    assert len(parents) >= 120
    # the lone family gets a real share of the search (crowded families do not get one ticket per variant)
    assert sum(p == lone["key"] for p in parents) >= 0.15 * len(parents)
    assert not any(p in {n["key"] for n in crowd[:-1]} for p in parents)
    r.nb.save()
    assert "## Archive" in r.nb.md_path.read_text()


@dataclass
class GradedRun:
    """A real grader on a toy testbed, a researcher registered on it and the kit its runs use."""
    server: GraderServer
    seeds: list[int]
    token: str
    kit: Path
    ws: Path

    def researcher(self) -> OfflineResearcher:
        cfg = ResearcherConfig(name="offline-t", token=self.token, grader_url=self.server.url, testbed="toy",
                               kit_dir=self.kit, workspace=self.ws / "workspace", direction="ensembles",
                               direction_name="ensembles", transcript=self.ws / "t.jsonl", usage_path=self.ws / "usage.json",
                               stop_file=self.ws / "STOP", dev_seeds=[1, 2], submit_seeds=self.seeds, sandbox=sandboxed)
        return OfflineResearcher(cfg)


@contextlib.contextmanager
def graded(tmp_path: Path) -> Iterator[GradedRun]:
    toy = make_toy_testbed(tmp_path / "toy-pairs", "pairwise", sizes=(40, 120, 60))
    server = GraderServer(toy, tmp_path / "grader.db").start()
    try:
        with server.client(server.admin_token()) as admin:
            seeds = admin.get("/api/seeds", params={"testbed": "toy"}).json()["seeds"]
            token = admin.post("/api/admin/researchers", json={"name": "offline-t"}).json()["token"]
        kit = export_kit(Experiment.create(str(toy), WEAK, STRONG), [1, 2, *seeds], tmp_path / "kit")
        yield GradedRun(server, seeds, token, kit, tmp_path / "r")
    finally:
        server.stop()


@pytest.mark.slow
def test_refused_pick_falls_back_to_the_next_recipe(tmp_path: Path) -> None:
    """A researcher whose best recipe lands within the near-duplicate radius of another
    researcher's submission submits its next-best recipe instead of ending with no result."""
    with graded(tmp_path) as g:
        naive_file = tmp_path / "naive.py"
        naive_file.write_text(Recipe().render())
        near = {str(s): list(p) for s, p in predict(g.kit, str(naive_file), g.seeds)["predictions"].items()}
        near[str(g.seeds[0])][0] = 1.0 - near[str(g.seeds[0])][0]  # naive's predictions with one row flipped
        other = GraderClient(g.server.url, g.server.add_researcher("other").headers["Authorization"].split()[1])
        snap = tmp_path / "other-snapshot"
        snap.mkdir()
        shutil.copyfile(naive_file, snap / "naive.py")
        other.submit("toy", "other: naive, one row flipped", other.upload_snapshot(snap)["sha256"], near)
        other.close()

        r = g.researcher()
        _node(r, Recipe(), {"1": 0.5, "2": 0.5})  # the best: naive, a near-duplicate of "other"'s submission
        second = _node(r, Recipe(label="soft", ensemble=3), {"1": 0.3, "2": 0.3})
        r.finish("test")
        refused = [e for e in map(json.loads, (g.ws / "t.jsonl").read_text().splitlines())
                   if e.get("tool") == "grader.submit" and "near-duplicate" in json.dumps(e.get("result", {}))]
        assert len(refused) == 1
        assert r.usage.submissions == 1 and r.usage.final["recipe"] == second["key"]
        with g.server.client(g.server.admin_token()) as admin:
            mine = admin.get("/api/submissions", params={"researcher": "offline-t"}).json()
        assert [s["id"] for s in mine] == [r.usage.final["submission_id"]]


@pytest.mark.slow
def test_finalists_of_distinct_families_go_to_the_board_which_picks_the_sealed_one(tmp_path: Path) -> None:
    """The researcher submits its best recipe of each of the top families (not two variants of
    one family); the grader seals the one with the best real board accuracy; a second `finish`
    (a restart after the submissions) submits nothing again."""
    with graded(tmp_path) as g:
        r = g.researcher()
        best = _node(r, Recipe(label="soft"), {"1": 0.5, "2": 0.5})
        _node(r, Recipe(label="soft", lr=1e-3), {"1": 0.45, "2": 0.45})  # same family as the best: skipped
        second = _node(r, Recipe(ensemble=2, head="linear"), {"1": 0.4, "2": 0.4})
        third = _node(r, Recipe(filter="confident"), {"1": 0.3, "2": 0.3})
        _node(r, Recipe(loss="aux"), {"1": 0.2, "2": 0.2})  # a fourth family: beyond the finalists
        assert [n["key"] for n in r.candidates()] == [best["key"], second["key"], third["key"]]
        r.finish("test")
        expected = [best["key"], second["key"], third["key"]]
        assert [c["recipe"] for c in r.usage.final["candidates"]] == expected and r.usage.final["recipe"] == best["key"]
        assert r.usage.submissions == 3
        r.finish("test again")  # as after a restart: every finalist is already on the board
        assert r.usage.submissions == 3
        with g.server.client(g.server.admin_token()) as admin:
            mine = admin.get("/api/submissions", params={"researcher": "offline-t"}).json()
            assert sorted(s["id"] for s in mine) == sorted(c["submission_id"] for c in r.usage.final["candidates"])
            sealed = admin.post("/api/admin/seal", json={"testbed": "toy"}).json()
        with Session(make_engine(f"sqlite:///{tmp_path / 'grader.db'}")) as s:
            accs = {sub.id: sub.transfer_acc for sub in s.exec(select(Submission)).all()}
        (row,) = [x for x in sealed["rows"] if x["researcher"] == "offline-t"]
        ids = [c["submission_id"] for c in r.usage.final["candidates"]]
        assert row["chosen_by"] == "board" and row["submission_id"] in ids
        assert accs[row["submission_id"]] == max(accs[i] for i in ids)
        # near the deadline a finalist whose run would not end in time is skipped, not started
        late = GradedRun(g.server, g.seeds, g.token, g.kit, tmp_path / "late").researcher()
        late.cfg.deadline = time.time()  # the 60 s of grace left
        late.nb.data["timing"].update(overhead=1.0, per_unit=2.0)
        first = _node(late, Recipe(label="soft"), {"1": 0.5, "2": 0.5})
        heavy = _node(late, Recipe(ensemble=3, rounds=2), {"1": 0.4, "2": 0.4})
        light = _node(late, Recipe(filter="confident"), {"1": 0.3, "2": 0.3})
        assert late.estimate(Recipe(ensemble=3, rounds=2), len(g.seeds)) > 60 > 3 * late.estimate(Recipe(filter="confident"), len(g.seeds))
        late.finish("test")
        assert [c["recipe"] for c in late.usage.final["candidates"]] == [first["key"], light["key"]]
        assert f"no time left for the finalist {heavy['describe']}" in (tmp_path / "late" / "t.jsonl").read_text()
