"""The LLM researcher loop end to end: the official anthropic and openai SDKs pointed at a
scripted fake LLM server on loopback (tests/fake_llm.py), a real grader subprocess, a real
kit and the real bubblewrap sandbox (unsandboxed only where bwrap cannot run here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import make_toy_testbed
from fake_llm import FakeLLM, Turn
from test_grader_support import STRONG, WEAK, GraderServer

from w2slab.researchers import pricing
from w2slab.researchers.agent import Settings, run_llm_researcher
from w2slab.researchers.contract import Budgets, LLMOptions, ResearcherConfig
from w2slab.researchers.sandbox import find_bwrap
from w2slab.researchers.tools import Toolbox, ToolContext, truncate

BACKENDS = ["anthropic", "openai"]
SANDBOX = find_bwrap() is not None

METHOD = '''\
import numpy as np
from w2slab.methods import MethodContext, method


@method("sharp")
def sharp(ctx: MethodContext, temperature: float = 2.0) -> np.ndarray:
    """Soft labels sharpened (or flattened) by a temperature."""
    p = ctx.weak_probs ** (1.0 / temperature)
    p = p / p.sum(1, keepdims=True)
    ctx.notes["temperature"] = temperature
    return ctx.new_student().fit(ctx.train, p, seed=ctx.seed).predict_proba(ctx.test)
'''


@pytest.fixture(scope="module")
def grader(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("llm_agent")
    toy = make_toy_testbed(root / "toy", "pairwise")
    srv = GraderServer(toy, root / "grader.db", "--eval-per-hour", "1000").start()
    try:
        yield srv, toy
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def kit(grader, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from w2slab.engine.kit import export_kit
    from w2slab.engine.pipeline import Experiment

    srv, toy = grader
    with srv.client(srv.admin_token()) as admin:
        seeds = admin.get("/api/seeds", params={"testbed": "toy"}).json()["seeds"]
    return export_kit(Experiment.create(str(toy), WEAK, STRONG), seeds, tmp_path_factory.mktemp("kit") / "kit")


@pytest.fixture(autouse=True)
def fake_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-fake")


def new_researcher(srv: GraderServer, name: str) -> str:
    with srv.client(srv.admin_token()) as admin:
        r = admin.post("/api/admin/researchers", json={"name": name})
        assert r.status_code == 201, r.text
        return r.json()["token"]


def make_config(grader, kit: Path, tmp_path: Path, fake: FakeLLM, backend: str, name: str, model: str = "fake-model",
                budgets: Budgets | None = None, **llm: Any) -> ResearcherConfig:
    """A researcher config as the launcher writes it, pointed at the fake LLM (fast retries)."""
    srv, _ = grader
    return ResearcherConfig(name=name, token=new_researcher(srv, name), grader_url=srv.url, testbed="toy", kit_dir=kit,
                            workspace=tmp_path / name, direction="Try temperature scaling of the weak labels.",
                            budgets=budgets or Budgets(), backend=backend, model=model, base_url=fake.url(backend),
                            api_key_env="FAKE_LLM_KEY", llm=LLMOptions(**{"retry_base_seconds": 0.05, **llm}),
                            sandbox=SANDBOX, transcript=tmp_path / f"{name}.jsonl", usage_path=tmp_path / f"{name}.usage.json",
                            stop_file=tmp_path / "STOP")


def transcript(cfg: ResearcherConfig) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cfg.transcript.read_text().splitlines()]


def admin_get(srv: GraderServer, path: str, **params: Any) -> Any:
    with srv.client(srv.admin_token()) as admin:
        return admin.get(path, params=params).json()


# ---------------------------------------------------------------------------------- full loop


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_research_loop_lands_in_the_grader(grader, kit: Path, tmp_path: Path, backend: str) -> None:
    srv, _ = grader
    mentor = new_researcher(srv, f"mentor-{backend}")
    with srv.client(mentor) as c:
        hint = c.post("/api/posts", json={"kind": "hypothesis", "title": f"Temperature-scaled weak labels {backend}",
                                          "body": "Flattening the teacher's soft labels may reduce imitation."}).json()
    name = f"agent-{backend}"
    sha: dict[str, str] = {}

    def download(results: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        sha["snap"] = re.search(r"snapshot ([0-9a-f]{64})", results[1]["content"]).group(1)
        return [("notebook_write", {"content": "sharp: T=0.5 submitted"}),
                ("forum_comment", {"post_id": hint["id"], "body": "Tried it, see my result post."}),
                ("download_snapshot", {"sha256": sha["snap"], "dest": "snapshots/mine"})]

    script = [
        Turn(text="Reading the forum first.", calls=[("forum_read", {}), ("leaderboard", {})]),
        Turn(calls=[("forum_search", {"query": "temperature"}),
                    ("write_file", {"path": "ideas/sharp/method.py", "content": METHOD})],
             expect=[f"Temperature-scaled weak labels {backend}", None], expect_errors=[False, False]),
        Turn(calls=[("edit_file", {"path": "ideas/sharp/method.py", "old_string": "temperature: float = 2.0",
                                   "new_string": "temperature: float = 0.5"}),
                    ("run_experiment", {"method_file": "ideas/sharp/method.py", "output": "runs/sharp.json"})],
             expect=[f"#{hint['id']}", "wrote"]),
        Turn(calls=[("evaluate", {"predictions_file": "runs/sharp.json"})],
             expect=["replaced 1", "predictions in runs/sharp.json"], expect_errors=[False, False]),
        Turn(calls=[("forum_post", {"kind": "result", "title": f"Sharpened soft labels ({backend})",
                                    "body": "T=0.5 on the toy testbed.", "metrics": {"temperature": 0.5}}),
                    ("submit", {"method_file": "ideas/sharp/method.py", "predictions_file": "runs/sharp.json",
                                "method_name": f"sharp-{backend}"})],
             expect=["dev-half feedback"]),
        Turn(calls=download, expect=["posted #", "submitted"], expect_errors=[False, False]),
        Turn(calls=[("finish", {"summary": "sharpening submitted"})],
             expect=["notebook appended", "commented on", "downloaded"], expect_errors=[False, False, False]),
    ]
    with FakeLLM(script) as fake:
        cfg = make_config(grader, kit, tmp_path, fake, backend, name)
        out = run_llm_researcher(cfg)
    assert fake.errors == []
    assert out["stop_reason"] == "finished", out
    assert out["final_summary"] == "sharpening submitted" and out["llm_calls"] == len(script)
    assert out["experiments"] == 1 and out["grader_queries"] == 1 and out["tool_errors"] == 0  # submit: not a query
    assert out["auto_submission"] is None  # it submitted by itself
    assert out["tokens"]["input"] > 0 and out["tokens"]["output"] > 0 and out["usd"] == 0  # loopback: free

    # what landed in the grader
    audit = [a for a in admin_get(srv, "/api/admin/audit", limit=1000) if a["researcher"] == name]
    assert sorted(a["kind"] for a in audit) == ["evaluate", "submit"]
    evaluation = next(a for a in audit if a["kind"] == "evaluate")
    assert evaluation["score"] == {k: out["evaluations"][0][k] for k in evaluation["score"]}
    posts = [p for p in admin_get(srv, "/api/posts") if p["author"] == name]
    assert [p["title"] for p in posts] == [f"Sharpened soft labels ({backend})"]
    assert admin_get(srv, f"/api/posts/{hint['id']}")["comments"][0]["author"] == name
    snaps = [s for s in admin_get(srv, "/api/snapshots") if s["sha256"] == sha["snap"]]
    assert snaps and snaps[0]["uploader"] == name and snaps[0]["n_files"] == 1
    row = next(r for r in admin_get(srv, "/api/leaderboard", testbed="toy")["rows"] if r["researcher"] == name)
    assert row["method_name"] == f"sharp-{backend}" and row["snapshot_sha256"] == sha["snap"]
    assert row["n_seeds"] == len(json.loads((kit / "kit.json").read_text())["seeds"])

    # the workspace: edited method, predictions for every kit seed, downloaded snapshot, notebook
    ws = cfg.workspace
    assert "temperature: float = 0.5" in (ws / "ideas/sharp/method.py").read_text()
    preds = json.loads((ws / "runs/sharp.json").read_text())
    assert set(preds["predictions"]) == {str(s) for s in json.loads((kit / "kit.json").read_text())["seeds"]}
    assert preds["notes"][next(iter(preds["notes"]))]["temperature"] == 0.5
    assert (ws / "snapshots/mine/method.py").read_text() == (ws / "ideas/sharp/method.py").read_text()
    assert "sharp: T=0.5 submitted" in (ws / "NOTEBOOK.md").read_text()

    # the transcript: every message, call and result in full, with tokens
    rows = transcript(cfg)
    assert {"message", "tool_call", "tool_result", "event"} <= {r["type"] for r in rows}
    assert all({"ts", "researcher", "type"} <= set(r) and r["researcher"] == name for r in rows)
    messages = [r for r in rows if r["type"] == "message"]
    assert [m["role"] for m in messages[:3]] == ["system", "user", "assistant"]
    assert all({"role", "content", "tokens"} <= set(m) for m in messages)
    calls = [r for r in rows if r["type"] == "tool_call"]
    assert [c["tool"] for c in calls][:4] == ["forum_read", "leaderboard", "forum_search", "write_file"]
    assert calls[3]["args"]["content"] == METHOD  # arguments in full
    results = {r["tool"]: r for r in rows if r["type"] == "tool_result"}
    assert "agree_with_weak_teacher" in results["run_experiment"]["result"]
    assert json.dumps(out["evaluations"][0]["pgr"]) in results["evaluate"]["result"]
    assistant = [m for m in messages if m["role"] == "assistant"]
    assert assistant[0]["content"] == "Reading the forum first." and assistant[0]["tokens"]["input"] > 1000
    assert assistant[0]["tool_calls"][0]["name"] == "forum_read"
    stop = [r for r in rows if r["type"] == "event" and r["event"] == "stop"]
    assert stop[-1]["reason"] == "finished"
    text = cfg.transcript.read_text()
    assert "sk-fake" not in text and cfg.token not in text
    assert int(out) == 0


TEACHER = '''\
import numpy as np
from w2slab.methods import MethodContext, method


@method("copy-teacher")
def copy_teacher(ctx: MethodContext) -> np.ndarray:
    return ctx.weak_test_probs
'''


def test_launcher_config_accounting_and_final_submission(grader, kit: Path, tmp_path: Path) -> None:
    """With the launcher's own ResearcherConfig: its sandbox spec, Usage file and stop rule; the
    experiment budget ends the session and the best evaluated method is submitted for it."""
    from w2slab.researchers.prepare import sandbox_masks

    srv, _ = grader
    seeds = json.loads((kit / "kit.json").read_text())["seeds"]
    script = [
        Turn(calls=[("write_file", {"path": "ideas/teacher/method.py", "content": TEACHER}),
                    ("run_experiment", {"method_file": "ideas/teacher/method.py", "output": "runs/t.json"})]),
        Turn(calls=[("evaluate", {"predictions_file": "runs/t.json", "seed": seeds[-1]})],
             expect=[None, "predictions in runs/t.json"], expect_errors=[False, False]),
        Turn(calls=[("finish", {"summary": "the teacher, copied"})], expect=["dev-half feedback"]),
    ]
    with FakeLLM(script) as fake:
        cfg = ResearcherConfig(
            name="launched", token=new_researcher(srv, "launched"), grader_url=srv.url, testbed="toy", kit_dir=kit,
            workspace=tmp_path / "ws", direction="Copy the teacher.", budgets=Budgets(experiments=1),
            backend="openai", model="fake-model", base_url=fake.url("openai"), api_key_env="FAKE_LLM_KEY",
            sandbox=SANDBOX, transcript=tmp_path / "t.jsonl", usage_path=tmp_path / "usage.json",
            stop_file=tmp_path / "STOP", submit_seeds=seeds, masked=sandbox_masks(None))
        out = run_llm_researcher(cfg)
        wrap = json.dumps(fake.requests[1]["body"]["messages"][-1])
    assert fake.errors == []
    assert "STOP: experiment budget" in wrap
    assert out["stop_reason"] == "finished" and int(out) == 0
    assert out["auto_submission"]["ok"], out["auto_submission"]
    row = next(r for r in admin_get(srv, "/api/leaderboard", testbed="toy")["rows"] if r["researcher"] == "launched")
    assert row["method_name"] == "teacher" and row["n_seeds"] == len(seeds)
    usage = json.loads((tmp_path / "usage.json").read_text())
    assert usage["status"] == "done" and usage["stop_reason"] == "finished"
    assert (usage["experiments"], usage["grader_queries"], usage["submissions"]) == (1, 1, 1)
    assert usage["tokens_in"] == out["tokens"]["input"] and usage["tokens_out"] == out["tokens"]["output"]
    assert usage["best_dev_pgr"] == out["evaluations"][0]["pgr"]
    assert usage["final"]["submission_id"] == row["id"] and usage["final"]["snapshot"] == row["snapshot_sha256"]
    events = [r["event"] for r in transcript(cfg) if r["type"] == "event"]
    assert {"config", "wrap_up", "stop", "final_submission"} <= set(events)


# ---------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("kind", ["tokens", "usd"])
def test_budget_stops_the_loop_at_the_cap(grader, kit: Path, tmp_path: Path, kind: str) -> None:
    usage = None if kind == "tokens" else (1000, 100)  # tokens: reported from the request's real size
    script = [Turn(calls=[("notebook_read", {})], usage=usage) for _ in range(20)]
    with FakeLLM(script) as fake:
        if kind == "tokens":
            cfg = make_config(grader, kit, tmp_path, fake, "anthropic", f"budget-{kind}", budgets=Budgets(tokens=12_000))
        else:  # $1000 per million tokens: 1100 tokens a call cost $1.10
            prices = tmp_path / "prices.json"
            prices.write_text(json.dumps({"fake-pricey": {"input": 1000, "output": 1000}}))
            cfg = make_config(grader, kit, tmp_path, fake, "openai", f"budget-{kind}", model="fake-pricey-1",
                              prices_file=str(prices), budgets=Budgets(usd=5.0))
        out = run_llm_researcher(cfg)
        max_tokens = [r["max_tokens"] for r in fake.requests]
    assert fake.errors == []
    assert out["stop_reason"] == f"budget:{kind}", out
    assert 2 <= out["llm_calls"] < 20
    if kind == "tokens":
        last = [r for r in transcript(cfg) if r.get("role") == "assistant"][-1]["tokens"]
        assert out["tokens"]["total"] <= 12_000 < out["tokens"]["total"] + 2 * (last["input"] + last["output"])
        assert max_tokens[-1] < max_tokens[0] == 8192  # the last call's output was capped to fit the budget
    else:
        assert out["price_source"] == "table" and out["usd"] == pytest.approx(1.1 * out["llm_calls"])
        assert out["usd"] <= 5.0
    assert [r["reason"] for r in transcript(cfg) if r.get("event") == "stop"] == [f"budget:{kind}"]


def test_experiment_and_query_budgets_refuse_and_wrap_up(grader, kit: Path, tmp_path: Path) -> None:
    n_test = json.loads((kit / "kit.json").read_text())["n_test"]
    preds = json.dumps({"predictions": {"1": [0.6] * n_test}})
    script = [
        Turn(calls=[("write_file", {"path": "p.json", "content": preds}),
                    ("run_experiment", {"method_file": "p.json"}), ("run_experiment", {"method_file": "p.py"})]),
        Turn(calls=[("evaluate", {"predictions_file": "p.json"}), ("evaluate", {"predictions_file": "p.json"})],
             expect=["wrote", "not a .py file", "p.py' does not exist"], expect_errors=[False, True, True]),
        Turn(calls=[("write_file", {"path": "m.py", "content": "x = 1\n"}), ("run_experiment", {"method_file": "m.py"})],
             expect=["dev-half feedback", "grader query budget is used up (1 of 1)"], expect_errors=[False, True]),
        Turn(calls=[("finish", {"summary": "out of budget"})],
             expect=[None, "experiment budget is used up (0 of 0)"], expect_errors=[False, True]),
    ]
    with FakeLLM(script) as fake:
        cfg = make_config(grader, kit, tmp_path, fake, "openai", "capped",
                          budgets=Budgets(experiments=0, grader_queries=1))
        out = run_llm_researcher(cfg)
        first = json.dumps(fake.requests[0]["body"]["messages"])
    assert fake.errors == []
    assert "STOP: experiment budget. Wrap up now" in first  # a used-up budget means wrapping up
    assert out["stop_reason"] == "finished" and out["experiments"] == 0 and out["grader_queries"] == 1
    assert out["auto_submission"] is None  # no experiment ran: nothing to submit
    srv, _ = grader
    assert [a["kind"] for a in admin_get(srv, "/api/admin/audit", limit=1000) if a["researcher"] == "capped"] == ["evaluate"]

    # a model that ignores the wrap-up gets wrapup_turns more calls, then it is stopped
    with FakeLLM([Turn(calls=[("notebook_read", {})]) for _ in range(10)]) as fake:
        cfg = make_config(grader, kit, tmp_path, fake, "anthropic", "stubborn", budgets=Budgets(experiments=0))
        cfg.llm.wrapup_turns = 2
        out = run_llm_researcher(cfg)
    assert out["stop_reason"] == "wrapped_up:experiment budget" and out["llm_calls"] == 2


# ---------------------------------------------------------------------------------- retries


@pytest.mark.parametrize("backend", BACKENDS)
def test_retries_survive_429_and_500(grader, kit: Path, tmp_path: Path, backend: str) -> None:
    script = [Turn(calls=[("notebook_write", {"content": "first"})]),
              Turn(calls=[("finish", {"summary": "ok"})], expect=["notebook appended"])]
    with FakeLLM(script) as fake:
        fake.inject(429, 500, retry_after="1")
        cfg = make_config(grader, kit, tmp_path, fake, backend, f"retry-{backend}")
        cfg.llm.prompt_cache = True  # Anthropic: cache_control breakpoints
        out = run_llm_researcher(cfg)
        served, first_ok = fake.served_failures, fake.requests[0]["time"]
        body = fake.requests[-1]["body"]
    assert fake.errors == []
    assert out["stop_reason"] == "finished" and out["retries"] == 2 and out["llm_calls"] == 2
    retries = [r for r in transcript(cfg) if r.get("event") == "retry"]
    assert [r["status"] for r in retries] == [429, 500]
    assert retries[0]["delay_s"] == 1.0 and retries[0]["retry_after"] == 1.0  # honoured retry-after
    assert retries[1]["retry_after"] is None and retries[1]["delay_s"] <= 0.1  # backoff: 0.05 s base * 2
    assert served[1][1] - served[0][1] >= 0.95 and first_ok > served[1][1]
    if backend == "anthropic":
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def test_fatal_api_error_stops_with_a_summary(grader, kit: Path, tmp_path: Path) -> None:
    with FakeLLM([]) as fake:
        fake.inject(500, 500, 500)
        cfg = make_config(grader, kit, tmp_path, fake, "anthropic", "fatal")
        cfg.llm.retry_base_seconds = 0.01
        cfg.llm.max_retries = 2
        out = run_llm_researcher(cfg)
    assert out["stop_reason"] == "api_error" and "gave up after retries" in out["stop_detail"]
    assert out["retries"] == 2 and out["llm_calls"] == 0


# ---------------------------------------------------------------------------------- context


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_summarisation_writes_the_notebook(grader, kit: Path, tmp_path: Path, backend: str) -> None:
    big = "\n".join(f"line {i}: " + "observation " * 8 for i in range(80))  # ~8k characters
    script = [
        Turn(calls=[("notebook_write", {"content": "Hypothesis H1: flatter labels help."})]),
        Turn(calls=[("write_file", {"path": "big.txt", "content": big})]),
        Turn(calls=[("read_file", {"path": "big.txt"})]),
        Turn(calls=[("read_file", {"path": "big.txt", "offset": 2, "limit": 1})], expect=["line 79"]),
        Turn(calls=[("notebook_read", {})], expect=["[lines 2-2 of 80]\nline 1:"]),
        Turn(calls=[("finish", {"summary": "done"})], expect=["SUMMARY: H1 is open"]),
    ]
    with FakeLLM(script, summary_text="SUMMARY: H1 is open; big.txt holds 80 observations.") as fake:
        cfg = make_config(grader, kit, tmp_path, fake, backend, f"compact-{backend}", compact_at_tokens=5000)
        out = run_llm_researcher(cfg)
        requests, summaries = fake.requests, fake.summary_requests
    assert fake.errors == []  # the shortened conversation is still valid on the wire
    assert out["stop_reason"] == "finished" and out["compactions"] >= 1
    notebook = (cfg.workspace / "NOTEBOOK.md").read_text()
    assert "Hypothesis H1" in notebook and "## Context summary 1" in notebook and "SUMMARY: H1 is open" in notebook
    history = [json.dumps(r["body"]["messages"]) for r in summaries]
    assert "Hypothesis H1" in history[0] and any("line 79" in h for h in history)  # old turns went to the summary
    assert all("SUMMARY: H1 is open" in h for h in history[1:])  # later summaries build on earlier ones
    after = next(r for r in requests if "SUMMARY: H1 is open" in json.dumps(r["body"]["messages"][:2]))
    before = requests[requests.index(after) - 1]
    assert "flatter labels help" in json.dumps(before["body"]["messages"])
    assert "flatter labels help" not in json.dumps(after["body"]["messages"])  # replaced by the summary
    assert len(requests[-1]["body"]["messages"]) <= 6  # the context stays small
    rows = transcript(cfg)
    summary_rows = [r for r in rows if r.get("event") == "summary"]
    assert summary_rows and summary_rows[0]["replaced_messages"] >= 3 and summary_rows[0]["method"] == "model"
    assert sum("line 79" in r["result"] for r in rows if r["type"] == "tool_result") >= 1  # kept in full


# ---------------------------------------------------------------------------------- tool errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_tool_errors_come_back_as_text(grader, kit: Path, tmp_path: Path, backend: str) -> None:
    (tmp_path / "secret.txt").write_text("outside")
    calls = [("read_file", {"path": "../secret.txt"}), ("write_file", {"path": "/etc/evil", "content": "x"}),
             ("no_such_tool", {}), ("edit_file", {"path": "nothing.py"}),
             ("evaluate", {"predictions_file": "bad.json"}), ("shell", {"command": "echo out; exit 3"})]
    expect_errors = [True, True, True, True, True, False]
    if backend == "openai":
        calls.append(("notebook_write", '{"content": "unterminated'))
        expect_errors.append(True)
    script = [
        Turn(calls=[("write_file", {"path": "bad.json", "content": json.dumps({"predictions": {"1": [0.5, 0.5]}})})]),
        Turn(calls=calls),
        Turn(text="Let me think.", expect=["outside your workspace", "outside your workspace", "no tool 'no_such_tool'",
                                           "missing arguments ['old_string', 'new_string']",
                                           "grader refused: 422", "exit code 3"], expect_errors=expect_errors),
        Turn(calls=[("finish", {"summary": "errors handled"})], expect=None),
    ]
    with FakeLLM(script) as fake:
        cfg = make_config(grader, kit, tmp_path, fake, backend, f"errors-{backend}")
        out = run_llm_researcher(cfg)
        nudge = json.dumps(fake.requests[3]["body"]["messages"][-1])
    assert fake.errors == []
    assert out["stop_reason"] == "finished" and out["tool_errors"] == len(expect_errors) - 1
    assert "without calling a tool" in nudge  # a text-only reply is nudged once, not the end
    assert not Path("/etc/evil").exists() and (tmp_path / "secret.txt").read_text() == "outside"
    if backend == "openai":
        bad = [r for r in transcript(cfg) if r["type"] == "tool_result" and r["tool"] == "notebook_write"]
        assert "not valid JSON" in bad[0]["result"]


# ---------------------------------------------------------------------------------- units


def test_workspace_paths_truncation_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    (tmp_path / "outside").mkdir()
    box = Toolbox(ToolContext(workspace=ws, testbed="toy"))
    (ws / "link").symlink_to(tmp_path / "outside")
    for bad in ["../x", "/etc/passwd", "link/file", "a/../../x"]:
        r = box.call("write_file", {"path": bad, "content": "x"})
        assert r.is_error and "outside your workspace" in r.content, bad
    assert not (tmp_path / "outside" / "file").exists()
    text = "A" * 10_000 + "B" * 10_000
    cut = truncate(text, 1000)
    assert cut.startswith("A" * 600) and cut.endswith("B" * 350) and "characters cut here" in cut and len(cut) < 1200
    r = box.call("read_file", {"path": "x.txt"})
    assert r.is_error and "does not exist" in r.content
    box.call("write_file", {"path": "x.txt", "content": "z" * 50_000})
    r = box.call("read_file", {"path": "x.txt"})
    assert len(r.content) < 13_000 and len(r.full or "") == 50_000

    monkeypatch.setenv("FAKE_LLM_KEY", "k")
    cfg = ResearcherConfig(name="n", token="t", grader_url="http://127.0.0.1:1", testbed="toy", kit_dir=tmp_path,
                           workspace=ws, transcript=tmp_path / "t.jsonl", backend="openai", base_url="http://localhost:8000",
                           model="fake-model", api_key_env="FAKE_LLM_KEY")
    s = Settings.from_config(cfg)
    assert (s.base_url, s.api_key, s.notebook) == ("http://localhost:8000/v1", "k", ws.absolute() / "NOTEBOOK.md")
    assert s.context_window == 32_000 and not s.prompt_cache and s.compact_at == 16_000
    # the whole config survives config.json: what the worker process reads back
    cfg.llm.max_turns, cfg.budgets = 7, Budgets(usd=2.5, tokens=1000, wall_seconds=60, experiments=3, grader_queries=4)
    back = ResearcherConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.experiment_wall_seconds == 600
    assert pricing.price_for("claude-sonnet-4-5-20250929")[0] == pricing.PRICES["claude-sonnet-4"]
    assert pricing.price_for("mystery", "http://127.0.0.1:8000/v1")[1] == "local"
    assert pricing.price_for("mystery", None)[1] == "unknown"
    monkeypatch.delenv("FAKE_LLM_KEY")
    with pytest.raises(ValueError, match=r"\$FAKE_LLM_KEY"):
        Settings.from_config(ResearcherConfig(name="n", token="t", grader_url="", testbed="toy", kit_dir=tmp_path,
                                              workspace=ws, backend="anthropic", api_key_env="FAKE_LLM_KEY"))
