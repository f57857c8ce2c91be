"""The researcher contract: what the launcher gives a researcher and what it gets back.

One module, imported by the launcher (supervisor), the worker entry point, the backends
(:mod:`~w2slab.researchers.offline`, :mod:`~w2slab.researchers.agent`) and the tools:

- :class:`ResearcherConfig` (with :class:`Budgets` and :class:`LLMOptions`): everything one
  researcher needs, as JSON in ``<workdir>/<name>/config.json`` (0600: it holds the token);
- :class:`Transcript`: the append-only JSONL of every message, tool call, tool result and event;
- :class:`Usage`: the researcher's accounting in ``<name>/usage.json`` (kept across restarts and
  resumes of the same session);
- :class:`ResearcherBackend`: a backend is a callable ``run(config) -> exit code`` (0: finished,
  submitted or had nothing to submit; non-zero or an exception: crashed, the launcher restarts it);
- :class:`WorkerHandle`: how the supervisor sees one running researcher (a local process,
  :class:`w2slab.researchers.worker.LocalWorker`, or a Ray actor on another node).

A backend must write every step to ``Transcript(config.transcript, config.name)``, keep
``Usage.load(config)`` up to date (``add_tokens``, ``experiments``, ``grader_queries``, ``save()``;
the launcher reads it for status.json and kills a researcher past its dollar or token cap),
stop by itself when ``config.stop_reason(usage)`` gives a reason, then submit its best method,
and run experiments with ``config.run(argv)`` (its sandbox) and ``config.predict_argv(...)``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, SupportsInt

from w2slab.researchers.sandbox import SandboxResult, SandboxSpec, WarmSandbox, python_binds, run_in_sandbox, run_unsandboxed

BACKENDS = ("offline", "anthropic", "openai")
STOP_FILE = "STOP"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../w2slab
EXPERIMENT_WALL_SECONDS = 600.0  # one sandboxed experiment or shell command, at most


# ============================================================== the researcher's configuration


@dataclass
class Budgets:
    """Per-researcher caps; ``None`` means no cap.

    ``usd`` and ``tokens`` bound LLM spend (tokens in + out); ``wall_seconds`` the researcher's
    own wall-clock from its first start; ``experiments`` its dev experiments (runs of a method on
    the kit); ``grader_queries`` its ``/api/evaluate`` calls (dev feedback). The final
    submission (one ``/api/submit``) is not counted against ``grader_queries``.
    """

    usd: float | None = None
    tokens: int | None = None
    wall_seconds: float | None = None
    experiments: int | None = None
    grader_queries: int | None = None


@dataclass
class LLMOptions:
    """Knobs of the LLM researcher (:mod:`w2slab.researchers.agent`); the defaults suit real APIs.

    max_output_tokens: per call. context_window: tokens (0: from the price table / backend).
    compact_at_tokens: summarise the context past this (None: ``$W2SLAB_COMPACT_AT`` or half the
    window, at most 80k). prices_file: price table (None: ``$W2SLAB_PRICES`` or the built-in one).
    prompt_cache: Anthropic cache breakpoints (None: on for the official API only).
    reserve_seconds: wall-clock kept back to wrap up; wrapup_turns: calls allowed after a soft stop.
    """

    max_output_tokens: int = 8192
    context_window: int = 0
    compact_at_tokens: int | None = None
    prices_file: str | None = None
    prompt_cache: bool | None = None
    max_turns: int = 500
    max_retries: int = 6
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 60.0
    request_timeout: float = 600.0
    shell_timeout: float = 600.0
    nudges: int = 1
    wrapup_turns: int = 4
    reserve_seconds: float = 120.0
    auto_submit: bool = True
    keep_recent: int = 2


@dataclass
class ResearcherConfig:
    """Everything one researcher process needs (JSON in ``<workdir>/<name>/config.json``).

    name, token, grader_url: its identity on the grader (``GraderClient(grader_url, token)``).
    testbed: the grader's public testbed name (what ``/api/evaluate`` and ``/api/submit`` take).
    kit_dir: the label-free kit (``w2slab predict --kit``); its seeds are ``dev_seeds`` and
      ``submit_seeds`` (the server's seeds, required by ``/api/submit``).
    workspace: the researcher's read-write folder (its notebook lives there; survives restarts).
    direction, direction_name: its starting research direction (a paragraph).
    budgets: :class:`Budgets`. deadline: epoch seconds by which it must have submitted.
    backend: offline | anthropic | openai; model, base_url, api_key_env (the NAME of the
      environment variable holding the API key; the key itself is never written anywhere);
      llm: :class:`LLMOptions`.
    sandbox: run experiments in bubblewrap (False only with --unsafe-no-sandbox).
    transcript: JSONL of every message, tool call and tool result. usage_path: :class:`Usage`.
    stop_file: exists -> wrap up now. shared_embeddings: read-only embedding cache folder.
    masked: paths hidden inside the sandbox (testbed data with labels). index: researcher
      number (0-based); seed: its RNG seed. threads: CPU threads per experiment.
    gpus: host GPU indices (``/dev/nvidiaN``) its experiments may use; inside the sandbox they
      are the only GPU device nodes and ``CUDA_VISIBLE_DEVICES`` is ``0..len(gpus)-1``.
    cpu_seconds, memory_bytes, experiment_wall_seconds: limits of one sandboxed experiment.
    warm: run ``w2slab`` commands (experiments) in a warm sandbox that forks a child per run
      (:class:`~w2slab.researchers.sandbox.WarmSandbox`) instead of starting one per run.
    session: id of this research session (usage counters and the final submission are per
      session; ``--resume`` keeps it, a fresh run in the same workdir starts a new one).
    """

    name: str
    token: str
    grader_url: str
    testbed: str
    kit_dir: Path
    workspace: Path
    direction: str = ""
    budgets: Budgets = field(default_factory=Budgets)
    backend: str = "offline"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    llm: LLMOptions = field(default_factory=LLMOptions)
    sandbox: bool = True
    transcript: Path = Path("transcript.jsonl")
    usage_path: Path = Path("usage.json")
    stop_file: Path = Path(STOP_FILE)
    direction_name: str = ""
    deadline: float | None = None
    dev_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    submit_seeds: list[int] = field(default_factory=list)
    shared_embeddings: Path | None = None
    masked: list[str] = field(default_factory=list)
    index: int = 0
    seed: int = 0
    threads: int = 1
    gpus: list[int] = field(default_factory=list)
    cpu_seconds: float = 900.0
    memory_bytes: int = 8 << 30
    experiment_wall_seconds: float = EXPERIMENT_WALL_SECONDS
    session: str = ""
    warm: bool = True

    _PATHS = ("kit_dir", "workspace", "transcript", "usage_path", "stop_file", "shared_embeddings")

    def __post_init__(self) -> None:
        for k in self._PATHS:
            v = getattr(self, k)
            if v is not None and not isinstance(v, Path):
                setattr(self, k, Path(v))

    # ---- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in self._PATHS:
            d[k] = None if d[k] is None else str(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResearcherConfig:
        d = dict(d)
        d["budgets"] = Budgets(**d.get("budgets") or {})
        llm_known = {f.name for f in fields(LLMOptions)}
        d["llm"] = LLMOptions(**{k: v for k, v in (d.get("llm") or {}).items() if k in llm_known})
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: Path) -> Path:
        """Written 0600: the file holds the researcher's token."""
        atomic_write(path, json.dumps(self.to_dict(), indent=1) + "\n", mode=0o600)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ResearcherConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def folder(self) -> Path:
        """``<workdir>/<name>``: config.json, transcript.jsonl, usage.json, process.log, workspace/."""
        return Path(self.usage_path).parent

    # ---- helpers for researcher backends
    def stop_reason(self, usage: Usage | None = None, reserve: float = 0.0) -> str | None:
        """Why this researcher must wrap up now, or None. ``reserve``: seconds it still needs
        after stopping (e.g. for the final run and submission) before the deadline."""
        if self.stop_file.exists():
            return "stop requested"
        if self.deadline is not None and time.time() + reserve >= self.deadline:
            return "time budget"
        if usage is None:
            return None
        b = self.budgets
        if b.wall_seconds is not None and usage.wall_seconds() + reserve >= b.wall_seconds:
            return "wall-clock budget"
        if b.experiments is not None and usage.experiments >= b.experiments:
            return "experiment budget"
        if b.grader_queries is not None and usage.grader_queries >= b.grader_queries:
            return "grader query budget"
        if b.usd is not None and usage.usd >= b.usd:
            return "dollar budget"
        if b.tokens is not None and usage.tokens_in + usage.tokens_out >= b.tokens:
            return "token budget"
        return None

    def sandbox_spec(self, wall_seconds: float | None = None) -> SandboxSpec:
        """The sandbox for this researcher's experiments: python + the w2slab package, the kit
        and the shared embeddings read-only, the workspace read-write, labels masked, its GPUs."""
        readonly: list[str | Path] = list(python_binds(PACKAGE_DIR)) + [self.kit_dir]
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.shared_embeddings is not None:
            readonly.append(self.shared_embeddings)
            env["W2SLAB_SHARED_EMBEDDINGS"] = str(self.shared_embeddings)
        # with GPUs no address-space limit: CUDA reserves far more virtual memory than it uses
        return SandboxSpec(workspace=self.workspace, readonly=readonly, cpu_seconds=self.cpu_seconds,
                           memory_bytes=None if self.gpus else self.memory_bytes, wall_seconds=wall_seconds or self.experiment_wall_seconds,
                           env=env, masked=list(self.masked), gpus=list(self.gpus))

    def run(self, command: str | list[str], wall_seconds: float | None = None) -> SandboxResult:
        """Run a command for this researcher: in its sandbox, or (``sandbox`` false) with the
        same limits and environment but no isolation (the child dies with this process)."""
        spec = self.sandbox_spec(wall_seconds)
        if self.sandbox:
            return run_in_sandbox(spec, command)
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]
        return run_unsandboxed(spec, [sys.executable, "-S", "-c", _DIE_WITH_PARENT, *argv])

    def warm_sandbox(self) -> WarmSandbox:
        """A warm sandbox for this researcher's ``w2slab`` runs (started at its first run), with
        the kit's rows and features read once."""
        return WarmSandbox(self.sandbox_spec(), sandboxed=self.sandbox, kit=self.kit_dir,
                           wrap=[sys.executable, "-S", "-c", _DIE_WITH_PARENT])

    def predict_args(self, method_file: str | Path, seeds: list[int], out: str | Path) -> list[str]:
        """``w2slab`` arguments of a ``predict`` on the kit for ``seeds``, writing predictions JSON to ``out``."""
        return ["predict", "--kit", str(self.kit_dir), "-m", str(method_file), "-o", str(out), "--seeds", ",".join(map(str, seeds))]

    def predict_argv(self, method_file: str | Path, seeds: list[int], out: str | Path) -> list[str]:
        """The command line of :meth:`predict_args` in a fresh Python."""
        return [sys.executable, "-m", "w2slab", *self.predict_args(method_file, seeds, out)]


# run_unsandboxed starts children in a new session: make them die with the researcher
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL); "
                    "os.execvp(sys.argv[1], sys.argv[1:])")


# ============================================================== transcript and accounting


class Transcript:
    """Append-only JSONL of every step of a researcher: ``{"ts", "researcher", "type", ...}`` with
    type ``message`` (role, content, ...), ``tool_call`` (tool, args, ...), ``tool_result`` (tool,
    result, ...) or ``event`` (event, ...). Each line goes out in one ``O_APPEND`` write, so lines of
    the launcher and the researcher never interleave and a killed process (even kill -9) leaves
    only whole lines behind."""

    def __init__(self, path: str | Path, researcher: str = "") -> None:
        self.path = Path(path)
        self.researcher = researcher
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, type: str, **data: Any) -> None:
        line = json.dumps({"ts": round(time.time(), 3), "researcher": self.researcher, "type": type, **data},
                          default=json_default)
        view = memoryview((line + "\n").encode("utf-8"))
        with self._lock:  # one O_APPEND write per line: the launcher and the researcher both append here
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def message(self, role: str, content: Any, tokens: Any = None, **extra: Any) -> None:
        self.write("message", role=role, content=content, tokens=tokens, **extra)

    def tool_call(self, tool: str, args: Any, **extra: Any) -> None:
        self.write("tool_call", tool=tool, args=args, **extra)

    def tool_result(self, tool: str, result: Any, **extra: Any) -> None:
        self.write("tool_result", tool=tool, result=result, **extra)

    def event(self, what: str, **data: Any) -> None:
        self.write("event", event=what, **data)

    def close(self) -> None:
        """Nothing to release (every write closes the file); kept for ``with``-style callers."""


def json_default(o: Any) -> Any:
    """JSON for paths and numpy values (numpy only when it is already loaded); repr otherwise."""
    if isinstance(o, Path):
        return str(o)
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    return repr(o)


@dataclass
class Usage:
    """One researcher's accounting, kept across restarts and resumes in ``config.usage_path``."""

    name: str = ""
    backend: str = "offline"
    status: str = "starting"  # starting | running | finishing | done | crashed | killed
    pid: int | None = None
    first_start: float = 0.0
    last_update: float = 0.0
    restarts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float = 0.0
    experiments: int = 0
    grader_queries: int = 0
    submissions: int = 0
    findings_posted: int = 0
    best_dev_pgr: float | None = None
    final: dict[str, Any] | None = None  # the submission: {id, pgr, pgr_ci, method_name, snapshot}
    stop_reason: str | None = None
    note: str = ""
    offsets: dict[str, int] | None = None  # the grader's counters when this session began
    session: str = ""
    resumes: int = 0
    path: str = ""

    @classmethod
    def load(cls, config: ResearcherConfig) -> Usage:
        """The researcher's usage of ``config.session`` (a different session starts from zero;
        the older file is kept as ``usage.<session>.json``)."""
        p = Path(config.usage_path)
        data: dict[str, Any] = {}
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except ValueError:
                data = {}
        known = {f.name for f in fields(cls)}
        u = cls(**{k: v for k, v in data.items() if k in known})
        if u.session != config.session:  # a new session: fresh counters (the old file is kept)
            if p.is_file():
                p.replace(p.with_name(f"usage.{u.session or 'old'}.json"))
            u = cls(session=config.session)
        u.name, u.backend, u.path = config.name, config.backend, str(p)
        if not u.first_start:
            u.first_start = time.time()
        return u

    def wall_seconds(self) -> float:
        return (self.last_update or time.time()) - self.first_start if self.first_start else 0.0

    def add_tokens(self, tokens_in: int, tokens_out: int, usd: float = 0.0) -> None:
        self.tokens_in += int(tokens_in)
        self.tokens_out += int(tokens_out)
        self.usd += float(usd)
        self.save()

    def save(self) -> None:
        self.last_update = time.time()
        if not self.path:  # an in-memory Usage (tools used outside the launcher)
            return
        d = asdict(self)
        d["wall_seconds"] = round(self.wall_seconds(), 1)
        atomic_write(Path(self.path), json.dumps(d, indent=1) + "\n")


def read_usage(path: str | Path) -> dict[str, Any]:
    """usage.json as a dict ({} when missing or being replaced)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode if mode is not None else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ============================================================== backends and workers


class ResearcherBackend(Protocol):
    """A researcher backend (``offline.run_offline_researcher``, ``agent.run_llm_researcher`` for
    anthropic and openai): runs one researcher in its own process and returns its exit code, or
    something ``int()`` makes one of (0 done; non-zero, or raising, means crashed: restart)."""

    def __call__(self, config: ResearcherConfig) -> SupportsInt: ...


class WorkerHandle(Protocol):
    """One running researcher as the supervisor sees it. Started by its constructor.

    ``poll()``: the exit code, or None while it runs. ``sync()``: bring ``transcript.jsonl``,
    ``usage.json``, ``process.log`` and the workspace (notebook) back into the local researcher
    folder (a no-op for local workers; the supervisor calls it on every poll and once after the
    end). ``terminate(wait)``: stop it (TERM, ``wait`` seconds, then KILL); idempotent.
    ``pid``: a local process id for status.json, or None."""

    name: str
    pid: int | None

    def poll(self) -> int | None: ...

    def sync(self) -> None: ...

    def terminate(self, wait: float = 10.0) -> None: ...
