"""The tools an LLM researcher calls: sandboxed shell and experiments, workspace files, the
grader (dev feedback, submissions, leaderboard, code store), the forum and a notebook.

Each :class:`Tool` carries a JSON schema that both adapters use (Anthropic ``input_schema``,
OpenAI ``function.parameters``). :meth:`Toolbox.call` never raises: a bad argument, a
refused path, a failed command or a grader refusal comes back to the model as text
(``ToolResult.is_error``). Long results are cut to head + tail with a note in between.

Isolation: ``shell`` and ``run_experiment`` run in the bubblewrap sandbox
(:mod:`w2slab.researchers.sandbox`) with the workspace read-write, the project, the
interpreter/venv and the kit read-only, and the built-in testbeds' data (and the packages
they were built from) masked. File tools only touch paths inside the workspace. The grader
is reached from here, outside the sandbox, with the researcher's token (which never enters it).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator

from w2slab.researchers.client import GraderClient, GraderError
from w2slab.researchers.contract import EXPERIMENT_WALL_SECONDS, ResearcherConfig, Usage
from w2slab.researchers.sandbox import SandboxSpec, label_paths, python_binds, run_in_sandbox, run_unsandboxed

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESULT_CHARS = 12_000  # what one tool result may hand back to the model
NOTEBOOK = "NOTEBOOK.md"
POST_KINDS = ("result", "hypothesis", "insight", "negative_result", "question")
SANDBOX_CUT = re.compile(r"\[\.\.\. output cut: (\d+) of (\d+) bytes dropped here")  # the sandbox's note (head + tail kept)


class ToolFailure(Exception):
    """A refusal or failure reported to the model as the tool's (error) result."""


class BudgetExhausted(ToolFailure):
    """An experiment or grader-query budget is used up."""


@dataclass
class ToolResult:
    content: str  # what the model is shown (truncated)
    is_error: bool = False
    full: str | None = None  # the untruncated text, when it was cut


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments (an object)
    fn: Callable[..., str]

    def anthropic(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.parameters}

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def truncate(text: str, limit: int = RESULT_CHARS) -> str:
    """``text`` itself, or its head and tail with a note saying how much was cut."""
    if len(text) <= limit:
        return text
    head, tail = int(limit * 0.6), int(limit * 0.35)
    cut = len(text) - head - tail
    return (f"{text[:head]}\n[... {cut} of {len(text)} characters cut here; read files in parts "
            f"(read_file offset/limit) or filter output (grep, head, tail) to see them ...]\n{text[-tail:]}")


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or []}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}


@dataclass
class ToolContext:
    """Everything the tools need; :meth:`for_researcher` builds it from a researcher's config.
    ``usage`` (the researcher's :class:`~w2slab.researchers.contract.Usage`; an unsaved one when
    none is given) holds the experiment / grader-query / submission counters, across restarts when
    persisted. ``config``: when given, its ``sandbox_spec`` and (with ``sandbox`` false) ``run``
    replace the built-in sandbox settings; label paths are masked either way."""

    workspace: Path
    testbed: str
    kit_dir: Path | None = None
    client: GraderClient | None = None
    sandbox: bool = True
    notebook: Path | None = None
    seeds: list[int] | None = None  # what run_experiment runs (default: the kit's seeds)
    shell_timeout: float = 600.0
    experiment_wall_seconds: float = EXPERIMENT_WALL_SECONDS
    memory_bytes: int | None = None
    gpus: list[int] = field(default_factory=list)
    masked: list[str | Path] = field(default_factory=list)
    max_experiments: int | None = None
    max_queries: int | None = None
    deadline: float | None = None  # time.monotonic() after which nothing may run
    result_chars: int = RESULT_CHARS
    usage: Any = None
    config: ResearcherConfig | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # this session's, with file and method
    experiments: list[dict[str, Any]] = field(default_factory=list)  # this session's successful runs
    submissions: list[dict[str, Any]] = field(default_factory=list)
    posts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).absolute()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.kit_dir = Path(self.kit_dir).absolute() if self.kit_dir else None
        self.notebook = Path(self.notebook) if self.notebook else self.workspace / NOTEBOOK
        if self.usage is None:
            self.usage = Usage(first_start=time.time())  # no path: kept in memory only

    @classmethod
    def for_researcher(cls, config: ResearcherConfig, client: GraderClient | None, usage: Usage | None = None) -> ToolContext:
        """The tools of the researcher ``config`` describes (its workspace, kit, sandbox, budgets)."""
        return cls(workspace=config.workspace, testbed=config.testbed, kit_dir=config.kit_dir, client=client,
                   sandbox=config.sandbox, seeds=list(config.submit_seeds) or None, shell_timeout=config.llm.shell_timeout,
                   experiment_wall_seconds=config.experiment_wall_seconds, memory_bytes=config.memory_bytes,
                   gpus=list(config.gpus), masked=list(config.masked), max_experiments=config.budgets.experiments,
                   max_queries=config.budgets.grader_queries, usage=usage, config=config)

    @property
    def experiments_used(self) -> int:
        return int(self.usage.experiments)

    def kit_seeds(self) -> list[int]:
        if self.seeds:
            return [int(s) for s in self.seeds]
        assert self.kit_dir is not None
        return [int(s) for s in json.loads((self.kit_dir / "kit.json").read_text())["seeds"]]


class Toolbox:
    """The researcher's tools bound to one :class:`ToolContext`."""

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.tools: dict[str, Tool] = {t.name: t for t in self._definitions()}
        self.validators = {name: Draft202012Validator(t.parameters) for name, t in self.tools.items()}

    # ------------------------------------------------------------------ plumbing

    def schemas(self, backend: str) -> list[dict[str, Any]]:
        return [t.anthropic() if backend == "anthropic" else t.openai() for t in self.tools.values()]

    def call(self, name: str, args: Any) -> ToolResult:
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(f"ERROR: there is no tool '{name}' (tools: {', '.join(self.tools)})", True)
        if not isinstance(args, dict):
            return ToolResult(f"ERROR: {name}: arguments must be a JSON object, got {str(args)[:200]}", True)
        missing = [k for k in tool.parameters.get("required", []) if k not in args]
        unknown = [k for k in args if k not in tool.parameters.get("properties", {})]
        if missing or unknown:
            return ToolResult(f"ERROR: {name}: missing arguments {missing}, unknown arguments {unknown}; "
                              f"schema: {json.dumps(tool.parameters)}", True)
        invalid = sorted(self.validators[name].iter_errors(args), key=lambda e: [str(p) for p in e.absolute_path])
        if invalid:
            what = "; ".join(f"argument '{'.'.join(map(str, e.absolute_path)) or '(all)'}': {e.message[:300]}" for e in invalid[:5])
            return ToolResult(f"ERROR: {name}: {what}; schema: {json.dumps(tool.parameters)}", True)
        try:
            out = tool.fn(**args)
        except ToolFailure as e:
            return ToolResult(truncate(f"ERROR: {e}", self.ctx.result_chars), True)
        except GraderError as e:
            wait = f" (retry after {e.retry_after:.0f} s)" if e.retry_after else ""
            return ToolResult(f"ERROR: the grader refused: {e.status} {e.message}{wait}", True)
        except Exception as e:  # noqa: BLE001 - a tool bug must not end the research
            return ToolResult(truncate(f"ERROR: {name} failed: {type(e).__name__}: {e}", self.ctx.result_chars), True)
        if not isinstance(out, str):
            out = json.dumps(out, default=str)
        shown = truncate(out, self.ctx.result_chars)
        return ToolResult(shown, False, out if shown != out else None)

    def path(self, rel: str, must_exist: bool = False) -> Path:
        """``rel`` resolved inside the workspace (symlinks followed); anything else is refused."""
        if not isinstance(rel, str) or not rel.strip():
            raise ToolFailure("a path is required")
        root = self.ctx.workspace.resolve()
        p = Path(rel)
        full = (p if p.is_absolute() else root / p).resolve()
        if full != root and root not in full.parents:
            raise ToolFailure(f"'{rel}' is outside your workspace ({root}); only paths inside it are allowed")
        if must_exist and not full.exists():
            raise ToolFailure(f"'{rel}' does not exist in your workspace")
        return full

    def rel(self, p: Path) -> str:
        return str(p.relative_to(self.ctx.workspace.resolve()))

    def _client(self) -> GraderClient:
        if self.ctx.client is None:
            raise ToolFailure("no grader is configured for this researcher")
        return self.ctx.client

    def _remaining(self, limit: float) -> float:
        if self.ctx.deadline is None:
            return limit
        left = self.ctx.deadline - time.monotonic()
        if left <= 1:
            raise BudgetExhausted("the wall-clock budget is used up: nothing more can run")
        return min(limit, left)

    def spec(self, wall: float) -> SandboxSpec:
        if self.ctx.config is not None:
            spec = self.ctx.config.sandbox_spec(wall)
        else:
            ro: list[str | Path] = list(python_binds(PROJECT_ROOT))
            if self.ctx.kit_dir:
                ro.append(self.ctx.kit_dir)
            spec = SandboxSpec(workspace=self.ctx.workspace, readonly=ro, wall_seconds=wall,
                               memory_bytes=self.ctx.memory_bytes, gpus=list(self.ctx.gpus))
        masks = [str(Path(m)) for m in [*spec.masked, *self.ctx.masked, *label_paths()]]
        spec.masked = list(dict.fromkeys(masks))
        return spec

    def run(self, command: str | list[str], wall: float):  # type: ignore[no-untyped-def]
        wall = self._remaining(wall)
        if not self.ctx.sandbox and self.ctx.config is not None:
            return self.ctx.config.run(command, wall)
        return (run_in_sandbox if self.ctx.sandbox else run_unsandboxed)(self.spec(wall), command)

    def _spend(self, kind: str) -> str:
        u = self.ctx.usage
        used, cap = ((u.experiments, self.ctx.max_experiments) if kind == "experiment"
                     else (u.grader_queries, self.ctx.max_queries))
        if cap is not None and used >= cap:
            what = "experiment" if kind == "experiment" else "grader query"
            raise BudgetExhausted(f"your {what} budget is used up ({used} of {cap}); "
                                  "no more can be run: write up what you found instead")
        if kind == "experiment":
            u.experiments += 1
        else:
            u.grader_queries += 1
        u.save()
        n = u.experiments if kind == "experiment" else u.grader_queries
        return f"{'experiment' if kind == 'experiment' else 'grader query'} {n}" + (f" of {cap}" if cap is not None else "")

    # ------------------------------------------------------------------ definitions

    def _definitions(self) -> list[Tool]:
        return [
            Tool("shell", "Run a shell command (/bin/sh -c) in your sandbox: cwd is your workspace (read-write); "
                 "python, the w2slab package and your kit are read-only; no network, no labels. "
                 "Returns exit code, stdout and stderr.",
                 _obj({"command": STRING, "timeout_seconds": {"type": "number", "description": "default 600"}}, ["command"]),
                 self.shell),
            Tool("read_file", "Read a text file in your workspace (optionally a range of lines).",
                 _obj({"path": STRING, "offset": {**INTEGER, "description": "first line, 1-based"},
                       "limit": {**INTEGER, "description": "number of lines"}}, ["path"]), self.read_file),
            Tool("write_file", "Create or overwrite a file in your workspace with the given content.",
                 _obj({"path": STRING, "content": STRING}, ["path", "content"]), self.write_file),
            Tool("edit_file", "Replace old_string by new_string in a workspace file. old_string must occur "
                 "exactly once unless replace_all is true.",
                 _obj({"path": STRING, "old_string": STRING, "new_string": STRING, "replace_all": {"type": "boolean"}},
                      ["path", "old_string", "new_string"]), self.edit_file),
            Tool("run_experiment", "Run a method file from your workspace on the kit, for the grader's seeds, in the "
                 "sandbox (`w2slab predict`). The predictions JSON stays in your workspace; you get a summary "
                 "(per seed: mean P(class 1), positive rate, agreement with the weak teacher). No labels: "
                 "score it with `evaluate`.",
                 _obj({"method_file": {**STRING, "description": "e.g. ideas/my_idea.py or ideas/my_idea.py:name"},
                       "params": {"type": "object", "description": "method keyword parameters"},
                       "output": {**STRING, "description": "predictions path (default runs/<name>-<n>.json)"}},
                      ["method_file"]), self.run_experiment),
            Tool("evaluate", "Score one seed's predictions on the grader's DEV half: returns PGR and transfer "
                 "accuracy (2 decimals), new only when better than your best on that seed by the Ladder's "
                 "margin (else improved=false and that best's numbers). Costs one grader query of a small budget.",
                 _obj({"predictions_file": STRING, "seed": {**INTEGER, "description": self._seed_note()}},
                      ["predictions_file"]), self.evaluate),
            Tool("submit", "Submit a method for the leaderboard: uploads the method file's folder as a code "
                 "snapshot and submits its predictions for all the grader's seeds (scored once, on the final "
                 "half; not counted as a grader query). Submit your best method before your budget ends.",
                 _obj({"method_file": STRING, "predictions_file": STRING, "method_name": STRING, "note": STRING},
                      ["method_file", "predictions_file", "method_name"]), self.submit),
            Tool("leaderboard", "The leaderboard of your testbed (best final-half PGR first).", _obj({}),
                 self.leaderboard),
            Tool("forum_read", "Read the forum: without post_id the latest posts (optionally of one kind); with "
                 "post_id one post in full with its comments.",
                 _obj({"post_id": INTEGER, "kind": {"type": "string", "enum": list(POST_KINDS)}, "limit": INTEGER}),
                 self.forum_read),
            Tool("forum_search", "Full-text search of the forum.", _obj({"query": STRING, "limit": INTEGER}, ["query"]),
                 self.forum_search),
            Tool("forum_post", "Post to the forum (markdown body). Link submissions / snapshots you refer to.",
                 _obj({"kind": {"type": "string", "enum": list(POST_KINDS)}, "title": STRING, "body": STRING,
                       "metrics": {"type": "object"}, "submission_ids": {"type": "array", "items": INTEGER},
                       "snapshot_shas": {"type": "array", "items": STRING}}, ["kind", "title", "body"]),
                 self.forum_post),
            Tool("forum_comment", "Comment on a forum post.", _obj({"post_id": INTEGER, "body": STRING}, ["post_id", "body"]),
                 self.forum_comment),
            Tool("forum_vote", "Vote on someone else's post (+1 or -1).",
                 _obj({"post_id": INTEGER, "value": {"type": "integer", "enum": [1, -1]}}, ["post_id", "value"]),
                 self.forum_vote),
            Tool("download_snapshot", "Download a code snapshot (by sha256, e.g. from the leaderboard) into your "
                 "workspace (default snapshots/<sha[:12]>).", _obj({"sha256": STRING, "dest": STRING}, ["sha256"]),
                 self.download_snapshot),
            Tool("notebook_read", "Read your notebook: persistent memory across sessions and context summaries.",
                 _obj({}), self.notebook_read),
            Tool("notebook_write", "Append to (default) or replace your notebook.",
                 _obj({"content": STRING, "mode": {"type": "string", "enum": ["append", "replace"]}}, ["content"]),
                 self.notebook_write),
            Tool("finish", "End your research session with a final summary of what you did and found.",
                 _obj({"summary": STRING}, ["summary"]), self.finish),
        ]

    # ------------------------------------------------------------------ sandboxed execution

    def shell(self, command: str, timeout_seconds: float | None = None) -> str:
        wall = min(float(timeout_seconds or self.ctx.shell_timeout), max(self.ctx.shell_timeout, self.ctx.experiment_wall_seconds))
        r = self.run(command, wall)
        cuts = [f"{name} was {m[2]} bytes: its start and end are kept, {m[1]} bytes in the middle were cut"
                for name, text in (("stdout", r.stdout), ("stderr", r.stderr)) if (m := SANDBOX_CUT.search(text or ""))]
        parts = [f"exit code {r.returncode}" + (" (timed out)" if r.timed_out else "") + (f"; {'; '.join(cuts)}" if cuts else "")]
        if r.stdout:
            parts.append(f"--- stdout ---\n{r.stdout}")
        if r.stderr:
            parts.append(f"--- stderr ---\n{r.stderr}")
        return "\n".join(parts)

    def run_experiment(self, method_file: str, params: dict[str, Any] | None = None, output: str | None = None) -> str:
        if self.ctx.kit_dir is None or not (self.ctx.kit_dir / "kit.json").is_file():
            raise ToolFailure("no researcher kit is configured")
        file_part, sep, name = method_file.partition(".py:")
        method_path = self.path(f"{file_part}.py" if sep else method_file, must_exist=True)
        if method_path.suffix != ".py":
            raise ToolFailure(f"'{method_file}' is not a .py file")
        seeds = self.ctx.kit_seeds()
        n = self.ctx.experiments_used + 1
        out = self.path(output or f"runs/{method_path.stem}-{n}.json")
        if out.suffix != ".json":
            raise ToolFailure("output must end in .json")
        argv = [sys.executable, "-m", "w2slab", "predict", "--kit", str(self.ctx.kit_dir),
                "-m", str(method_path) + (f":{name}" if sep else ""), "--seeds", ",".join(map(str, seeds)),
                "-o", str(out)]
        for key, value in (params or {}).items():
            argv += ["-p", f"{key}={value}"]
        label = self._spend("experiment")
        out.unlink(missing_ok=True)
        started = time.monotonic()
        r = self.run(argv, self.ctx.experiment_wall_seconds)
        took = time.monotonic() - started
        if not r.ok or not out.is_file():
            tail = truncate(r.stderr.strip() or r.stdout.strip(), 6000)
            raise ToolFailure(f"{label} failed (exit code {r.returncode}{', timed out' if r.timed_out else ''}, "
                              f"{took:.0f} s):\n{tail}")
        self.ctx.experiments.append({"method_file": method_file, "predictions_file": self.rel(out), "params": params or {}})
        return f"{label} done in {took:.0f} s; predictions in {self.rel(out)}\n" + self._summarise_predictions(out)

    def _summarise_predictions(self, out: Path) -> str:
        data = json.loads(out.read_text())
        lines = ["seed    n   mean_p1  positive_rate  agree_with_weak_teacher  notes"]
        for seed, preds in data["predictions"].items():
            p = np.asarray(preds, dtype=float)
            agree = "?"
            weak_file = self.ctx.kit_dir / "weak" / f"seed_{seed}.npz" if self.ctx.kit_dir else None
            if weak_file and weak_file.is_file():
                with np.load(weak_file) as w:
                    teacher = w["test_probs"][:, 1]
                if len(teacher) == len(p):
                    agree = f"{float(((p > 0.5) == (teacher > 0.5)).mean()):.3f}"
            notes = json.dumps(data.get("notes", {}).get(seed) or {})[:200]
            lines.append(f"{seed:<6} {len(p):>4}  {p.mean():.3f}    {(p > 0.5).mean():.3f}          {agree:<24} {notes}")
        return "\n".join(lines) + f"\nparams: {json.dumps(data.get('params', {}))}"

    # ------------------------------------------------------------------ files

    def read_file(self, path: str, offset: int | None = None, limit: int | None = None) -> str:
        p = self.path(path, must_exist=True)
        if p.is_dir():
            entries = sorted(f"{c.name}/" if c.is_dir() else c.name for c in p.iterdir())
            return f"'{path}' is a folder: " + ", ".join(entries[:500])
        text = p.read_text(errors="replace")
        if offset or limit:
            lines = text.splitlines(keepends=True)
            start = max(1, int(offset or 1))
            stop = start - 1 + int(limit) if limit else len(lines)
            return f"[lines {start}-{min(stop, len(lines))} of {len(lines)}]\n" + "".join(lines[start - 1:stop])
        return text

    def write_file(self, path: str, content: str) -> str:
        p = self.path(path)
        if p.is_dir():
            raise ToolFailure(f"'{path}' is a folder")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        return f"wrote {len(content)} characters to {self.rel(p)}"

    def edit_file(self, path: str, old_string: str, new_string: str, replace_all: bool = False) -> str:
        p = self.path(path, must_exist=True)
        text = p.read_text()
        count = text.count(old_string) if old_string else 0
        if count == 0:
            raise ToolFailure(f"old_string was not found in {path} (nothing changed)")
        if count > 1 and not replace_all:
            raise ToolFailure(f"old_string occurs {count} times in {path}: give more context or set replace_all")
        p.write_text(text.replace(old_string, new_string) if replace_all else text.replace(old_string, new_string, 1))
        return f"replaced {count if replace_all else 1} occurrence(s) in {self.rel(p)}"

    # ------------------------------------------------------------------ grader

    def _load_predictions(self, predictions_file: str) -> dict[str, list[float]]:
        p = self.path(predictions_file, must_exist=True)
        try:
            data = json.loads(p.read_text())
        except ValueError as e:
            raise ToolFailure(f"{predictions_file}: not JSON ({e})") from None
        preds = data.get("predictions") if isinstance(data, dict) else None
        if isinstance(data, list):
            return {"": data}
        if not isinstance(preds, dict) or not preds:
            raise ToolFailure(f"{predictions_file}: expected {{\"predictions\": {{seed: [...]}}}} (from run_experiment)")
        return {str(k): v for k, v in preds.items()}

    def _experiment_seeds(self) -> list[int] | None:
        try:
            return self.ctx.kit_seeds()
        except (AssertionError, OSError, ValueError, KeyError):
            return None

    def _seed_note(self) -> str:
        seeds = self._experiment_seeds()
        if not seeds:
            return "a seed in the predictions file; default: the file's first seed"
        return (f"a seed in the predictions file: run_experiment writes the grader's seeds {', '.join(map(str, seeds))} "
                "(not the kit's own seeds); default: the file's first seed")

    def evaluate(self, predictions_file: str, seed: int | None = None) -> str:
        preds = self._load_predictions(predictions_file)
        key = str(seed) if seed is not None else next(iter(preds))
        if key not in preds:
            ran = self._experiment_seeds()
            hint = f"; run_experiment writes the grader's seeds {', '.join(map(str, ran))}, evaluate one of those" if ran else ""
            raise ToolFailure(f"{predictions_file} has no seed {seed}: it holds seeds {', '.join(preds)}{hint} "
                              "(no grader query was spent)")
        client = self._client()
        label = self._spend("query")
        res = client.evaluate(self.ctx.testbed, preds[key], int(key) if key.lstrip("-").isdigit() else None)
        rel = self.rel(self.path(predictions_file))
        method = next((e["method_file"] for e in reversed(self.ctx.experiments) if e["predictions_file"] == rel), None)
        self.ctx.evaluations.append({"predictions_file": rel, "method_file": method, "seed": key, **res})
        u = self.ctx.usage
        pgr = res.get("pgr") if isinstance(res, dict) else None
        if isinstance(pgr, (int, float)) and (u.best_dev_pgr is None or pgr > u.best_dev_pgr):
            u.best_dev_pgr = float(pgr)
            u.save()
        return f"dev-half feedback for seed {key or '-'} ({label}): {json.dumps(res)}"

    def submit(self, method_file: str, predictions_file: str, method_name: str, note: str = "") -> str:
        method_path = self.path(method_file.partition(".py:")[0] + (".py" if ".py:" in method_file else ""),
                                must_exist=True)
        preds = self._load_predictions(predictions_file)
        client = self._client()
        seeds = [str(s) for s in client.seeds(self.ctx.testbed)]
        missing = [s for s in seeds if s not in preds]
        if missing:
            raise ToolFailure(f"{predictions_file} lacks the grader's seeds {missing}: run_experiment covers them all")
        folder = method_path.parent
        with tempfile.TemporaryDirectory() as tmp:
            if folder == self.ctx.workspace.resolve():  # never ship the whole workspace: just the method
                shutil.copy2(method_path, Path(tmp) / method_path.name)
                folder = Path(tmp)
            snap = client.upload_snapshot(folder, note=note or method_name)
        sub = client.submit(self.ctx.testbed, method_name, snap["sha256"], {s: preds[s] for s in seeds})
        self.ctx.submissions.append(sub)
        u = self.ctx.usage
        u.submissions += 1
        u.final = {"submission_id": sub.get("id"), "pgr": sub.get("pgr"), "pgr_ci": sub.get("pgr_ci"),
                   "method_name": method_name, "snapshot": snap["sha256"]}
        u.save()
        return (f"submitted: snapshot {snap['sha256']} ({snap.get('n_files', '?')} files from "
                f"{self.rel(method_path.parent) if method_path.parent != self.ctx.workspace.resolve() else method_path.name}); "
                f"result: {json.dumps(sub)}")

    def leaderboard(self) -> str:
        board = self._client().leaderboard(self.ctx.testbed)
        rows = board.get("rows", []) if isinstance(board, dict) else board
        head = {k: v for k, v in board.items() if k != "rows"} if isinstance(board, dict) else {}
        lines = [json.dumps(head)] if head else []
        lines.append("rank  pgr    ci              transfer  researcher  method  submission  snapshot")
        for r in rows[:50]:
            lines.append(f"{r.get('rank', '?'):<5} {r.get('pgr')}  {r.get('pgr_ci')}  {r.get('transfer_acc')}  "
                         f"{r.get('researcher')}  {r.get('method_name')}  #{r.get('id')}  {r.get('snapshot_sha256')}")
        return "\n".join(lines) if rows else "\n".join(lines[:-1] + ["the leaderboard is empty"])

    def download_snapshot(self, sha256: str, dest: str | None = None) -> str:
        target = self.path(dest or f"snapshots/{sha256[:12]}")
        self._client().download_snapshot(sha256, target)
        files = sorted(self.rel(p) for p in target.rglob("*") if p.is_file())
        return f"downloaded {sha256} into {self.rel(target)}: " + ", ".join(files[:200])

    # ------------------------------------------------------------------ forum

    @staticmethod
    def _post_line(p: dict[str, Any]) -> str:
        metrics = f" metrics={json.dumps(p['metrics'])}" if p.get("metrics") else ""
        return (f"#{p.get('id')} [{p.get('kind')}] {p.get('title')} — by {p.get('author')}, score {p.get('score')}, "
                f"{p.get('n_comments', 0)} comments{metrics}")

    def forum_read(self, post_id: int | None = None, kind: str | None = None, limit: int | None = None) -> str:
        client = self._client()
        if post_id is not None:
            p = client.get_post(int(post_id))
            out = [self._post_line(p), "", p.get("body") or ""]
            if p.get("submission_ids") or p.get("snapshot_shas"):
                out.append(f"\nlinks: submissions {p.get('submission_ids')}, snapshots {p.get('snapshot_shas')}")
            for c in p.get("comments", []):
                out.append(f"\n-- comment by {c.get('author')}:\n{c.get('body')}")
            return "\n".join(out)
        posts = client.posts(kind=kind, limit=int(limit or 30))
        return "\n".join(self._post_line(p) for p in posts) if posts else "the forum has no posts yet"

    def forum_search(self, query: str, limit: int | None = None) -> str:
        hits = self._client().search(query, limit=int(limit or 20))
        return "\n".join(self._post_line(p) for p in hits) if hits else f"no posts match '{query}'"

    def forum_post(self, kind: str, title: str, body: str, metrics: dict[str, Any] | None = None,
                   submission_ids: list[int] | None = None, snapshot_shas: list[str] | None = None) -> str:
        links: dict[str, Any] = {}
        if submission_ids:
            links["submission_ids"] = [int(i) for i in submission_ids]
        if snapshot_shas:
            links["snapshot_shas"] = list(snapshot_shas)
        post = self._client().post(kind, title, body, metrics, **links)
        self.ctx.posts.append(int(post["id"]))
        self.ctx.usage.findings_posted += 1
        self.ctx.usage.save()
        return f"posted #{post['id']}: {title}"

    def forum_comment(self, post_id: int, body: str) -> str:
        c = self._client().comment(int(post_id), body)
        return f"commented on #{post_id} (comment {c.get('id')})"

    def forum_vote(self, post_id: int, value: int) -> str:
        r = self._client().vote(int(post_id), int(value))
        return f"voted {int(value):+d} on #{post_id}: its score is now {r.get('score')}"

    # ------------------------------------------------------------------ notebook

    def notebook_read(self) -> str:
        nb = self.ctx.notebook
        return nb.read_text() if nb and nb.is_file() and nb.stat().st_size else "(your notebook is empty)"

    def notebook_write(self, content: str, mode: str = "append") -> str:
        nb = self.ctx.notebook
        assert nb is not None
        nb.parent.mkdir(parents=True, exist_ok=True)
        if mode == "replace":
            nb.write_text(content)
        else:
            with nb.open("a") as f:
                f.write(("\n" if nb.stat().st_size else "") + content.rstrip("\n") + "\n")
        return f"notebook {'replaced' if mode == 'replace' else 'appended'} ({nb.stat().st_size} bytes now)"

    def finish(self, summary: str) -> str:
        return "session finished"

