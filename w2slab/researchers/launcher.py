"""Launch N automated researchers against a grader, in parallel, with budgets and accounting.

``run_research(ResearchOptions(...))`` (what ``w2slab research`` runs):

1. connects to a grader (``grader_url``) or starts ``w2slab serve`` as a subprocess on a free
   loopback port with its SQLite database under ``<workdir>/grader/``;
2. registers the researchers with the admin API and exports one label-free kit for the
   server's submission seeds plus the dev (baseline) seeds, and a read-only copy of the
   embeddings of the kit's texts (so nobody re-encodes);
3. gives each researcher a workspace and a different starting direction and runs each in its
   own process (``python -m w2slab.researchers.launcher --worker CONFIG``), which calls the
   backend's run function with a :class:`ResearcherConfig`;
4. restarts a crashed researcher (it resumes from its notebook) up to ``max_restarts`` times;
   stops everything on the deadline, on the budgets, on ``w2slab research stop`` (a stop file)
   or on Ctrl-C (children terminated, waited for, summarised);
5. writes ``<workdir>/status.json`` (accounting per researcher and in total) every second and
   ends, once the submissions' audits are done, with a summary scored on the sealed holdout:
   the best pick's PGR and its paired interval against the naive baseline, experiments,
   findings, the dashboard address.

Layout of ``<workdir>``::

    status.json  launcher.json  STOP (the stop file)  kit/  shared_embeddings/  grader/
    report.md  report.html  report_pgr.png (the end-of-run report: w2slab.researchers.report)
    <name>/config.json (0600: holds the token)  <name>/transcript.jsonl  <name>/usage.json
    <name>/process.log  <name>/workspace/  (the only folder the researcher's sandbox may write)

Contract for researcher backends (``offline`` here, ``anthropic``/``openai`` in
``w2slab.researchers.agent.run_llm_researcher(config)``): the function gets a
:class:`ResearcherConfig`, returns 0 when it finished (submitted, or had nothing to submit)
and raises or exits non-zero on a crash (the launcher restarts it). It must

- write every message, tool call and tool result to ``config.transcript`` with
  :class:`Transcript` (``tr.message(role, content)``, ``tr.tool_call(tool, args)``,
  ``tr.tool_result(tool, result)``, ``tr.event(what, **data)``);
- keep :class:`Usage` up to date in ``config.usage_path`` (``usage = Usage.load(config)``,
  ``usage.add_tokens(tokens_in, tokens_out, usd)``, ``usage.experiments += 1``,
  ``usage.grader_queries += 1``, ``usage.save()``): the launcher reads it for status.json
  and kills a researcher that overruns ``config.budgets`` (usd, tokens) after a grace period;
- stop by itself when ``config.stop_reason(usage)`` returns a reason (stop file, deadline
  minus ``reserve`` seconds, budgets), then submit its best method;
- run experiments with ``config.run(argv)`` (a bubblewrap sandbox, or no isolation when
  ``config.sandbox`` is false) and ``config.predict_argv(method_file, seeds, out)``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from w2slab.researchers.report import dev_ci, write_run_report

BACKENDS = ("offline", "anthropic", "openai")
DEFAULT_TESTBED = "tweets-pairs"
STOP_FILE = "STOP"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../w2slab
DEFAULT_MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4.1"}
DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


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
      environment variable holding the API key; the key itself is never written anywhere).
    sandbox: run experiments in bubblewrap (False only with --unsafe-no-sandbox).
    transcript: JSONL of every message, tool call and tool result. usage_path: :class:`Usage`.
    stop_file: exists -> wrap up now. shared_embeddings: read-only embedding cache folder.
    masked: paths hidden inside the sandbox (testbed data with labels). index: researcher
      number (0-based); seed: its RNG seed. threads: CPU threads per experiment.
    cpu_seconds, memory_bytes, experiment_wall_seconds: limits of one sandboxed experiment.
    session: id of this launcher session (usage counters and the final submission are per session).
    """

    name: str
    token: str
    grader_url: str
    testbed: str
    kit_dir: Path
    workspace: Path
    direction: str
    budgets: Budgets = field(default_factory=Budgets)
    backend: str = "offline"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
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
    cpu_seconds: float = 900.0
    memory_bytes: int = 8 << 30
    experiment_wall_seconds: float = 600.0
    session: str = ""  # one research session (launcher start); a researcher's notebook may span several

    _PATHS = ("kit_dir", "workspace", "transcript", "usage_path", "stop_file", "shared_embeddings")

    # ---- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in self._PATHS:
            d[k] = None if d[k] is None else str(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResearcherConfig":
        d = dict(d)
        d["budgets"] = Budgets(**d.get("budgets") or {})
        for k in cls._PATHS:
            if d.get(k) is not None:
                d[k] = Path(d[k])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: Path) -> Path:
        """Written 0600: the file holds the researcher's token."""
        _atomic_write(path, json.dumps(self.to_dict(), indent=1) + "\n", mode=0o600)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ResearcherConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ---- helpers for researcher backends
    def stop_reason(self, usage: "Usage | None" = None, reserve: float = 0.0) -> str | None:
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

    def sandbox_spec(self, wall_seconds: float | None = None):  # -> SandboxSpec
        """The sandbox for this researcher's experiments: python + the w2slab package, the kit
        and the shared embeddings read-only, the workspace read-write, labels masked."""
        from w2slab.researchers.sandbox import SandboxSpec, python_binds

        readonly: list[str | Path] = list(python_binds(PACKAGE_DIR)) + [self.kit_dir]
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.shared_embeddings is not None:
            readonly.append(self.shared_embeddings)
            env["W2SLAB_SHARED_EMBEDDINGS"] = str(self.shared_embeddings)
        return SandboxSpec(workspace=self.workspace, readonly=readonly, cpu_seconds=self.cpu_seconds,
                           memory_bytes=self.memory_bytes, wall_seconds=wall_seconds or self.experiment_wall_seconds,
                           env=env, masked=list(self.masked))

    def run(self, command: str | list[str], wall_seconds: float | None = None):  # -> SandboxResult
        """Run a command for this researcher: in its sandbox, or (``sandbox`` false) with the
        same limits and environment but no isolation (the child dies with this process)."""
        from w2slab.researchers.sandbox import run_in_sandbox, run_unsandboxed

        spec = self.sandbox_spec(wall_seconds)
        if self.sandbox:
            return run_in_sandbox(spec, command)
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]
        return run_unsandboxed(spec, [sys.executable, "-S", "-c", _DIE_WITH_PARENT, *argv])

    def predict_argv(self, method_file: str | Path, seeds: list[int], out: str | Path) -> list[str]:
        """``w2slab predict`` on the kit for ``seeds``, writing predictions JSON to ``out``."""
        return [sys.executable, "-m", "w2slab", "predict", "--kit", str(self.kit_dir), "-m", str(method_file),
                "-o", str(out), "--seeds", ",".join(map(str, seeds))]


# run_unsandboxed starts children in a new session: make them die with the researcher
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL); "
                    "os.execvp(sys.argv[1], sys.argv[1:])")


# ============================================================== transcript and accounting


class Transcript:
    """Append-only JSONL of every step of a researcher (one JSON object per line)."""

    def __init__(self, path: str | Path, researcher: str = "") -> None:
        self.path = Path(path)
        self.researcher = researcher
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, type: str, **data: Any) -> None:
        line = json.dumps({"ts": round(time.time(), 3), "researcher": self.researcher, "type": type, **data},
                          default=_json_default)
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")

    def message(self, role: str, content: Any, **extra: Any) -> None:
        self.write("message", role=role, content=content, **extra)

    def tool_call(self, tool: str, args: Any, **extra: Any) -> None:
        self.write("tool_call", tool=tool, args=args, **extra)

    def tool_result(self, tool: str, result: Any, **extra: Any) -> None:
        self.write("tool_result", tool=tool, result=result, **extra)

    def event(self, what: str, **data: Any) -> None:
        self.write("event", event=what, **data)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return repr(o)


@dataclass
class Usage:
    """One researcher's accounting, kept across restarts in ``config.usage_path``."""

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
    path: str = ""

    @classmethod
    def load(cls, config: ResearcherConfig) -> "Usage":
        p = Path(config.usage_path)
        data: dict[str, Any] = {}
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except ValueError:
                data = {}
        known = {f.name for f in fields(cls)}
        u = cls(**{k: v for k, v in data.items() if k in known})
        session = getattr(config, "session", "")
        if u.session != session:  # a new session: fresh counters (the old file is kept)
            if p.is_file():
                p.replace(p.with_name(f"usage.{u.session or 'old'}.json"))
            u = cls(session=session)
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
        _atomic_write(Path(self.path), json.dumps(d, indent=1) + "\n")


def _atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode if mode is not None else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ============================================================== pushing the run to the grader


class ResearchPusher:
    """Mirrors a research run on the grader (admin API): status.json (throttled to one push
    every ``interval`` seconds unless forced) and each researcher's transcript lines, sent
    incrementally from a byte offset per researcher (only whole lines; batches under
    ``max_batch_bytes``). Failures never raise: the first one is reported through ``warn``,
    and pushes pause for ``backoff`` seconds; unsent lines are sent by a later push."""

    def __init__(self, grader_url: str, admin_token: str, run_id: str, interval: float = 3.0,
                 warn: Callable[[str], None] | None = None, timeout: float = 5.0, backoff: float = 15.0,
                 max_batch_bytes: int = 1 << 20) -> None:
        self.url = grader_url.rstrip("/")
        self.token = admin_token
        self.run_id = run_id
        self.interval, self.timeout, self.backoff, self.max_batch_bytes = interval, timeout, backoff, max_batch_bytes
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr))
        self.offsets: dict[str, int] = {}  # researcher -> byte offset in its transcript.jsonl
        self.seqs: dict[str, int] = {}  # researcher -> next sequence number on the grader
        self.last_push = 0.0
        self.paused_until = 0.0
        self.warned = False
        self.failures = 0
        self._client: Any = None

    def begin(self, name: str, transcript: Path, from_start: bool = False) -> None:
        """Track ``name``'s transcript from its current end (lines of earlier sessions are not
        this run's), or from the start."""
        if name not in self.offsets:
            p = Path(transcript)
            self.offsets[name] = 0 if from_start or not p.is_file() else p.stat().st_size
            self.seqs[name] = 0

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=self.timeout,
                                        headers={"Authorization": f"Bearer {self.token}"})
        r = self._client.post(path, content=json.dumps(body, default=_json_default).encode(),
                              headers={"Content-Type": "application/json"})
        if r.status_code >= 400:
            raise RuntimeError(f"{path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def _fail(self, e: BaseException) -> None:
        self.failures += 1
        self.paused_until = time.monotonic() + self.backoff
        if not self.warned:
            self.warned = True
            self.warn(f"warning: could not push the research run to the grader ({type(e).__name__}: {e}); "
                      "the run goes on, pushes are retried (this warning is shown once)")

    def _new_lines(self, name: str, transcript: Path) -> tuple[list[str], int]:
        """Whole lines after the offset, up to about ``max_batch_bytes``; and the new offset."""
        start = self.offsets.get(name, 0)
        try:
            with open(transcript, "rb") as f:
                f.seek(start)
                data = f.read(self.max_batch_bytes)
        except OSError:
            return [], start
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) < self.max_batch_bytes:
                return [], start  # a line still being written
            with open(transcript, "rb") as f:  # one line longer than a batch: send its head
                f.seek(start)
                whole = f.readline()
            stub = json.dumps({"type": "event", "event": "line_truncated", "bytes": len(whole),
                               "head": whole[: self.max_batch_bytes // 2].decode("utf-8", "replace")})
            return [stub], start + len(whole)
        chunk = data[: end + 1]
        lines = [ln.decode("utf-8", "replace") for ln in chunk.split(b"\n")[:-1]]
        return [ln for ln in lines if ln.strip()] or [], start + len(chunk)

    def push_transcripts(self, transcripts: dict[str, Path]) -> int:
        """Send the new lines of each researcher's transcript; returns lines sent."""
        sent = 0
        for name, path in transcripts.items():
            self.begin(name, path, from_start=True)
            for _ in range(100):  # bounded: at most ~100 batches per call
                lines, new_offset = self._new_lines(name, path)
                if new_offset == self.offsets[name]:
                    break
                if lines:
                    answer = self._post("/api/admin/research/transcript", {
                        "run_id": self.run_id, "researcher": name, "start_seq": self.seqs[name], "lines": lines})
                    self.seqs[name] = int(answer.get("next_seq", self.seqs[name] + len(lines)))
                    sent += len(lines)
                self.offsets[name] = new_offset
        return sent

    def push(self, status: dict[str, Any], transcripts: dict[str, Path], force: bool = False) -> bool:
        """Push the status and new transcript lines (at most every ``interval`` s unless
        ``force``); never raises. True when something was pushed successfully."""
        t = time.monotonic()
        if not force and (t - self.last_push < self.interval or t < self.paused_until):
            return False
        self.last_push = t
        try:
            self.push_transcripts(transcripts)
            self._post("/api/admin/research/status", {**status, "run_id": self.run_id})
            return True
        except Exception as e:  # noqa: BLE001 - the grader may be down or busy: the run goes on
            self._fail(e)
            return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# ============================================================== worker entry point


def run_researcher(config: ResearcherConfig) -> int:
    """Dispatch to the backend's run function (in the researcher's own process)."""
    if config.backend == "offline":
        from w2slab.researchers.offline import run_offline_researcher

        return int(run_offline_researcher(config) or 0)
    if config.backend in ("anthropic", "openai"):
        from w2slab.researchers.agent import run_llm_researcher  # written separately

        return int(run_llm_researcher(config) or 0)
    raise ValueError(f"unknown backend '{config.backend}' (known: {', '.join(BACKENDS)})")


def worker_main(config_path: str) -> int:
    config = ResearcherConfig.load(config_path)
    tr = Transcript(config.transcript, config.name)
    tr.event("process_start", pid=os.getpid(), backend=config.backend)
    try:
        code = run_researcher(config)
    except Exception as e:  # noqa: BLE001 - recorded, then the launcher restarts us
        import traceback

        tr.event("crash", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    tr.event("process_exit", code=code)
    return code


# ============================================================== the grader and the kit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GraderProcess:
    """``w2slab serve`` started by the launcher, in its own process group."""

    def __init__(self, testbed_ref: str, folder: Path, weak: str | None, strong: str | None, seeds: list[int],
                 admin_token: str, eval_per_hour: int, eval_total: int, dev_ladder: float | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "grader.log"
        self.db_url = f"sqlite:///{folder / 'grader.db'}"
        cmd = [sys.executable, "-m", "w2slab.grader.cli", "serve", "-t", testbed_ref, "--seeds", ",".join(map(str, seeds)),
               "--host", "127.0.0.1", "--port", str(self.port), "--db", self.db_url, "--baseline-workers", "1",
               "--eval-per-hour", str(eval_per_hour), "--eval-total", str(eval_total)]
        cmd += ["--dev-ladder", str(dev_ladder)] if dev_ladder is not None else []
        cmd += ["--weak", weak] if weak else []
        cmd += ["--strong", strong] if strong else []
        self.cmd = cmd
        env = dict(os.environ, W2SLAB_ADMIN_TOKEN=admin_token)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 1800.0, on_wait: Callable[[float], None] | None = None) -> None:
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the grader exited with status {self.proc.returncode}; its log ({self.log}):\n"
                                   + self.log.read_text()[-3000:])
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if on_wait:
                on_wait(time.monotonic() - start)
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the grader did not become ready in {timeout:.0f} s (log: {self.log})")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def parse_testbed_ref(ref: str) -> tuple[str, str]:
    """``NAME=FOLDER`` / name / folder -> (public name on the grader, data reference)."""
    from w2slab.grader.scoring import public_name

    alias, eq, path = ref.partition("=")
    if eq:
        return alias, path
    return public_name(ref), ref


def export_kit_for(exp: Any, seeds: list[int], dest: Path) -> Path:
    """The kit (reused when one with the same seeds and models is already there)."""
    from w2slab.engine.kit import export_kit

    meta_path = dest / "kit.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if (sorted(meta.get("seeds", [])) == sorted(seeds) and meta.get("strong") == exp.strong.to_dict()
                and meta.get("weak") == exp.weak.to_dict()):
            return dest
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_kit(exp, seeds, tmp)
    tmp.replace(dest)
    return dest


def build_shared_embeddings(exp: Any, dest: Path) -> Path | None:
    """A read-only copy of the operator's embedding cache restricted to the kit's texts
    (train_unlabel and test, the strong encoder): sandboxes read it, nobody re-encodes."""
    import hashlib
    import sqlite3

    from w2slab.models.encoders import EmbeddingCache
    from w2slab.models.probe import row_texts
    from w2slab.testbeds import load_testbed

    if exp.strong.kind != "probe":
        return None
    data = load_testbed(exp.testbed)
    texts: list[str] = []
    for split in (data.train_unlabel, data.test):
        left, right = row_texts(split)
        texts += left + right
    texts = list(dict.fromkeys(texts))
    source = EmbeddingCache(exp.strong.model)
    vectors = source.encode(texts)  # from the cache, encoding what is missing
    source.checkpoint()
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / source.path.name
    tmp = dest / (source.path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as db:
        db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, dim INTEGER, data BLOB)")
        db.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?, ?)",
                       [(hashlib.sha256(t.encode("utf-8")).hexdigest(), int(v.shape[0]), v.astype("float32").tobytes())
                        for t, v in zip(texts, vectors, strict=True)])
    db.close()
    tmp.replace(final)
    return dest


def sandbox_masks(testbed_folder: Path | None) -> list[str]:
    """Label-bearing paths that lie inside what the sandbox binds: hidden under empty tmpfs."""
    from w2slab.researchers.sandbox import label_paths

    masks = [str(p) for p in label_paths()]
    if testbed_folder is not None:
        folder = testbed_folder.resolve()
        from w2slab.researchers.sandbox import python_binds

        for bound in python_binds(PACKAGE_DIR):
            if folder == Path(bound) or Path(bound) in folder.parents:
                masks.append(str(folder))
                break
    return list(dict.fromkeys(masks))


# ============================================================== the launcher


@dataclass
class ResearchOptions:
    """What ``w2slab research`` takes. Budgets: ``budget_usd`` is the total over all
    researchers (each gets an equal share); ``max_experiments`` and ``max_grader_queries``
    are per researcher; ``hours`` is the run's wall-clock once the researchers start."""

    testbed: str = DEFAULT_TESTBED
    researchers: int = 2
    backend: str = "offline"
    hours: float = 0.1
    budget_usd: float | None = None
    max_experiments: int | None = None
    max_grader_queries: int | None = None
    max_tokens: int | None = None
    grader: str | None = None
    admin_token: str | None = None
    directions: Path | None = None
    unsafe_no_sandbox: bool = False
    workdir: Path = Path("runs/research")
    weak: str | None = None
    strong: str | None = None
    dev_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_restarts: int = 2
    grace_seconds: float = 120.0
    eval_per_hour: int = 240
    eval_total: int = 2000
    dev_ladder: float | None = None  # the started grader's Ladder margin (None: its default; 0: off)
    audit_wait_seconds: float = 600.0  # the summary waits this long for submission audits
    baseline_submit: bool = True
    serve_after: bool = False
    threads: int = 1
    quiet: bool = False


class Launcher:
    def __init__(self, opts: ResearchOptions, console: Any = None) -> None:
        from rich.console import Console

        if opts.backend not in BACKENDS:
            raise ValueError(f"unknown backend '{opts.backend}' (known: {', '.join(BACKENDS)})")
        if opts.researchers < 1:
            raise ValueError("--researchers must be at least 1")
        if opts.hours <= 0:
            raise ValueError("--hours must be positive")
        self.opts = opts
        self.console = console or Console(stderr=True, quiet=opts.quiet)
        self.workdir = Path(opts.workdir).absolute()
        self.grader: GraderProcess | None = None
        self.grader_url = ""
        self.admin_token = ""
        self.admin: Any = None
        self.configs: list[ResearcherConfig] = []
        self.procs: dict[str, subprocess.Popen | None] = {}
        self.restarts: dict[str, int] = {}
        self.finished: dict[str, str] = {}  # name -> done | failed | killed
        self.started = time.time()
        self.session = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        self.deadline: float | None = None
        self.state = "starting"
        self.stop_at: float | None = None
        self.baseline: dict[str, Any] = {}
        self.server_usage: dict[str, dict[str, Any]] = {}
        self._server_poll = 0.0
        self.public_testbed = ""
        self.summary: dict[str, Any] | None = None
        self._baseline_thread: threading.Thread | None = None
        self.pusher: ResearchPusher | None = None

    # ---- set-up
    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)

    def setup(self) -> None:
        from w2slab.researchers.client import GraderClient

        o = self.opts
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / STOP_FILE).unlink(missing_ok=True)
        if not o.unsafe_no_sandbox:
            from w2slab.researchers.sandbox import require_sandbox

            require_sandbox()  # fails with an install hint (or use --unsafe-no-sandbox)
        public, data_ref = parse_testbed_ref(o.testbed)
        self.public_testbed = public
        if o.grader:
            self.grader_url = o.grader.rstrip("/")
            self.admin_token = o.admin_token or os.environ.get("W2SLAB_ADMIN_TOKEN", "").strip()
            if not self.admin_token:
                from w2slab.grader.auth import admin_token_file

                f = admin_token_file()
                if not f.is_file():
                    raise ValueError("connecting to a grader needs its admin token: --admin-token, "
                                     f"W2SLAB_ADMIN_TOKEN or {f}")
                self.admin_token = f.read_text().strip()
        else:
            token_file = self.workdir / "grader" / "admin_token"
            if token_file.is_file():
                self.admin_token = token_file.read_text().strip()
            else:
                self.admin_token = "adm_" + secrets.token_urlsafe(24)
                _atomic_write(token_file, self.admin_token + "\n", mode=0o600)
            ref = f"{public}={data_ref}" if Path(data_ref).is_dir() else data_ref
            self.log(f"starting the grader for {public} (baselines are computed on first use; can take minutes)")
            self.grader = GraderProcess(ref, self.workdir / "grader", o.weak, o.strong, o.dev_seeds, self.admin_token,
                                        o.eval_per_hour, o.eval_total, o.dev_ladder)
            self.grader.wait_ready()
            self.grader_url = self.grader.url
        self.admin = GraderClient(self.grader_url, self.admin_token)
        served = {t["name"]: t for t in self.admin.testbeds()}
        if public not in served:
            raise ValueError(f"the grader at {self.grader_url} does not serve '{public}' (it serves: {', '.join(served)})")
        submit_seeds = self.admin.seeds(public)
        self.log(f"grader {self.grader_url}: {public}, submission seeds {submit_seeds}")

        from w2slab.engine.pipeline import Experiment
        from w2slab.engine.runner import prepare_features
        from w2slab.testbeds import get_testbed

        exp = Experiment.create(data_ref, o.weak, o.strong)
        prepare_features(exp, quiet=True)
        seeds = list(dict.fromkeys(list(o.dev_seeds) + list(submit_seeds)))
        kit = export_kit_for(exp, seeds, self.workdir / "kit")
        shared = build_shared_embeddings(exp, self.workdir / "shared_embeddings")
        folder = get_testbed(data_ref).folder
        masked = sandbox_masks(folder)
        self.log(f"kit {kit} (seeds {seeds}); shared embeddings {shared}")

        from w2slab.researchers.directions import assign_directions, load_directions

        directions = assign_directions(o.researchers, load_directions(o.directions))
        model = o.model or DEFAULT_MODELS.get(o.backend)
        key_env = o.api_key_env or DEFAULT_KEY_ENV.get(o.backend)
        per_usd = None if o.budget_usd is None else o.budget_usd / o.researchers
        for i, direction in enumerate(directions):
            name, token = self._register(f"{o.backend}-{i + 1}")
            folder_i = self.workdir / name
            cfg = ResearcherConfig(
                name=name, token=token, grader_url=self.grader_url, testbed=public, kit_dir=kit,
                workspace=folder_i / "workspace", direction=direction.text, direction_name=direction.name,
                budgets=Budgets(usd=per_usd, tokens=o.max_tokens, wall_seconds=None, experiments=o.max_experiments,
                                grader_queries=o.max_grader_queries),
                backend=o.backend, model=model if o.backend != "offline" else None, base_url=o.base_url,
                api_key_env=key_env if o.backend != "offline" else None, sandbox=not o.unsafe_no_sandbox,
                transcript=folder_i / "transcript.jsonl", usage_path=folder_i / "usage.json",
                stop_file=self.workdir / STOP_FILE, dev_seeds=list(o.dev_seeds), submit_seeds=list(submit_seeds),
                shared_embeddings=shared, masked=masked, index=i, seed=1000 + i, threads=o.threads,
                session=self.session,
            )
            cfg.workspace.mkdir(parents=True, exist_ok=True)
            self.configs.append(cfg)
        self.pusher = ResearchPusher(self.grader_url, self.admin_token, self.run_id,
                                     warn=lambda msg: self.log(f"[yellow]{msg}[/]"))
        for cfg in self.configs:
            self.pusher.begin(cfg.name, cfg.transcript)
        if o.backend in ("anthropic", "openai") and key_env and not os.environ.get(key_env):
            self.log(f"[yellow]warning:[/] {key_env} is not set: the {o.backend} researchers cannot call the API")

    def _register(self, base: str) -> tuple[str, str]:
        """Reuse the token of a researcher of this workdir, else register a fresh name."""
        from w2slab.researchers.client import GraderError

        cfg_path = self.workdir / base / "config.json"
        if cfg_path.is_file():
            old = ResearcherConfig.load(cfg_path)
            try:
                from w2slab.researchers.client import GraderClient

                c = GraderClient(self.grader_url, old.token, retries=1)
                me = c.me()
                c.close()
                if me.get("name") == old.name:
                    return old.name, old.token
            except GraderError:
                pass
        name = base
        for _ in range(5):
            try:
                made = self.admin.add_researcher(name)
                return made["name"], made["token"]
            except GraderError as e:
                if e.status != 409:
                    raise
                name = f"{base}-{secrets.token_hex(2)}"
        raise RuntimeError(f"could not register a researcher named like '{base}'")

    # ---- processes
    def _spawn(self, cfg: ResearcherConfig) -> None:
        folder = Path(cfg.usage_path).parent
        path = cfg.save(folder / "config.json")
        env = dict(os.environ, OMP_NUM_THREADS=str(self.opts.threads), PYTHONUNBUFFERED="1")
        with open(folder / "process.log", "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "w2slab.researchers.launcher", "--worker", str(path)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=str(cfg.workspace))
        self.procs[cfg.name] = proc
        Transcript(cfg.transcript, cfg.name).event("launched", pid=proc.pid, restart=self.restarts.get(cfg.name, 0))

    def start(self) -> None:
        self.deadline = time.time() + self.opts.hours * 3600
        for cfg in self.configs:
            cfg.deadline = self.deadline
            self.restarts.setdefault(cfg.name, 0)
            self._spawn(cfg)
        self.state = "running"
        self.log(f"{len(self.configs)} {self.opts.backend} researcher(s) running for up to {self.opts.hours * 60:.1f} min; "
                 f"status: {self.workdir / 'status.json'}; dashboard {self.grader_url}/leaderboard")
        if self.opts.baseline_submit:
            self._baseline_thread = threading.Thread(target=self._submit_naive_baseline, daemon=True)
            self._baseline_thread.start()

    def _usage(self, cfg: ResearcherConfig) -> dict[str, Any]:
        try:
            return json.loads(Path(cfg.usage_path).read_text())
        except (OSError, ValueError):
            return {}

    def poll(self) -> bool:
        """One supervision step; False once every researcher has ended."""
        now = time.time()
        stop_requested = (self.workdir / STOP_FILE).exists()
        if stop_requested and self.stop_at is None:
            self.log("stop requested: researchers wrap up and submit")
            self.state = "stopping"
            self.stop_at = now + self.opts.grace_seconds
        if self.opts.budget_usd is not None:
            spent = sum(float(self._usage(c).get("usd", 0.0)) for c in self.configs)
            if spent >= self.opts.budget_usd and not stop_requested:
                self.log(f"dollar budget reached (${spent:.2f}): stopping")
                (self.workdir / STOP_FILE).touch()
        hard_stop = (self.deadline is not None and now > self.deadline + self.opts.grace_seconds) or \
            (self.stop_at is not None and now > self.stop_at)
        for cfg in self.configs:
            proc = self.procs.get(cfg.name)
            if proc is None or cfg.name in self.finished:
                continue
            usage = self._usage(cfg)
            over = self._over_llm_budget(cfg, usage)
            if proc.poll() is None:
                if hard_stop or over:
                    self.log(f"{cfg.name}: {'over budget' if over else 'past the deadline'}; terminating")
                    self._terminate(proc)
                    self.finished[cfg.name] = "killed"
                    self._mark(cfg, "killed", over or "deadline")
                continue
            code = proc.returncode
            if code == 0:
                self.finished[cfg.name] = "done"
                continue
            late = hard_stop or stop_requested or (self.deadline is not None and now > self.deadline)
            if self.restarts[cfg.name] < self.opts.max_restarts and not late:
                self.restarts[cfg.name] += 1
                self.log(f"{cfg.name} exited with status {code}; restarting ({self.restarts[cfg.name]}/{self.opts.max_restarts}) "
                         "from its notebook")
                self._mark(cfg, "crashed", f"exit status {code}", restarts=self.restarts[cfg.name])
                self._spawn(cfg)
            else:
                self.finished[cfg.name] = "failed"
                self._mark(cfg, "crashed", f"exit status {code}; not restarted")
        self.write_status()
        return len(self.finished) < len(self.configs)

    def _over_llm_budget(self, cfg: ResearcherConfig, usage: dict[str, Any]) -> str | None:
        """A researcher past its dollar/token cap by more than 10% is stopped by force."""
        b = cfg.budgets
        if b.usd is not None and float(usage.get("usd", 0.0)) > 1.1 * b.usd + 0.01:
            return "dollar budget"
        if b.tokens is not None and int(usage.get("tokens_in", 0)) + int(usage.get("tokens_out", 0)) > 1.1 * b.tokens:
            return "token budget"
        return None

    def _mark(self, cfg: ResearcherConfig, status: str, reason: str, restarts: int | None = None) -> None:
        u = Usage.load(cfg)
        u.status = status
        u.stop_reason = reason if status != "crashed" else u.stop_reason
        u.note = reason
        if restarts is not None:
            u.restarts = restarts
        u.save()
        Transcript(cfg.transcript, cfg.name).event(status, reason=reason)

    def _terminate(self, proc: subprocess.Popen, wait: float = 10.0) -> None:
        if proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def terminate_all(self) -> None:
        for cfg in self.configs:
            proc = self.procs.get(cfg.name)
            if proc is not None and proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        for cfg in self.configs:
            proc = self.procs.get(cfg.name)
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(10)
            if cfg.name not in self.finished:
                self.finished[cfg.name] = "killed"
                self._mark(cfg, "killed", "interrupted")

    # ---- the naive reference on the leaderboard
    def _submit_naive_baseline(self) -> None:
        """Submit plain hard-label training for the server's seeds as researcher
        ``naive-baseline``: the reference on the board and the sealed holdout (same rows, same seeds)."""
        from w2slab.researchers.client import GraderClient, GraderError

        try:
            existing = [r for r in self.admin.leaderboard(self.public_testbed)["rows"] if r["researcher"].startswith("naive-baseline")]
            if existing:
                self.baseline = {"pgr": existing[0]["pgr"], "pgr_ci": existing[0]["pgr_ci"], "reused": True}
                return
            cfg0 = self.configs[0]
            folder = self.workdir / "naive-baseline"
            ws = folder / "workspace"
            (ws / "snapshot").mkdir(parents=True, exist_ok=True)
            method_file = ws / "snapshot" / "naive.py"
            method_file.write_text(NAIVE_FILE)
            cfg = ResearcherConfig.from_dict({**cfg0.to_dict(), "name": "naive-baseline", "workspace": str(ws),
                                              "transcript": str(folder / "transcript.jsonl"),
                                              "usage_path": str(folder / "usage.json")})
            res = cfg.run(cfg.predict_argv(method_file, cfg.submit_seeds, ws / "predictions.json"))
            if not res.ok:
                self.baseline = {"error": (res.stderr or res.stdout)[-500:]}
                return
            preds = json.loads((ws / "predictions.json").read_text())["predictions"]
            name, token = self._register("naive-baseline")
            c = GraderClient(self.grader_url, token)
            snap = c.upload_snapshot(ws / "snapshot", note="naive: hard weak labels, strong defaults (reference)")
            sub = c.submit(self.public_testbed, "naive (reference)", snap["sha256"], preds)
            self.baseline = {"pgr": sub["pgr"], "pgr_ci": sub["pgr_ci"], "submission_id": sub["id"], "researcher": name}
            c.close()
        except (GraderError, OSError, ValueError, KeyError) as e:
            self.baseline = {"error": f"{type(e).__name__}: {e}"}

    # ---- status
    def _poll_server(self) -> None:
        if time.time() - self._server_poll < 5 or self.admin is None:
            return
        self._server_poll = time.time()
        try:
            self.server_usage = {r["name"]: r for r in self.admin.researchers()}
        except Exception:  # noqa: BLE001 - the grader may be busy; status shows the last poll
            pass

    def status(self) -> dict[str, Any]:
        self._poll_server()
        rows = []
        for cfg in self.configs:
            u = self._usage(cfg)
            proc = self.procs.get(cfg.name)
            server = self.server_usage.get(cfg.name, {})
            rows.append({
                "name": cfg.name, "direction": cfg.direction_name, "backend": cfg.backend,
                "pid": proc.pid if proc else None, "alive": bool(proc and proc.poll() is None),
                "status": u.get("status", "starting"), "outcome": self.finished.get(cfg.name),
                "restarts": self.restarts.get(cfg.name, 0), "stop_reason": u.get("stop_reason"),
                "wall_seconds": u.get("wall_seconds", 0.0), "tokens_in": u.get("tokens_in", 0),
                "tokens_out": u.get("tokens_out", 0), "usd": round(float(u.get("usd", 0.0)), 4),
                "experiments": u.get("experiments", 0), "grader_queries": u.get("grader_queries", 0),
                "submissions": u.get("submissions", 0), "findings_posted": u.get("findings_posted", 0),
                "best_dev_pgr": u.get("best_dev_pgr"), "final": u.get("final"),
                "server": {k: server.get(k) for k in ("evaluations_total", "submissions", "posts")} if server else None,
                "workspace": str(cfg.workspace), "transcript": str(cfg.transcript),
            })
        total = {k: sum(r[k] or 0 for r in rows) for k in ("tokens_in", "tokens_out", "usd", "wall_seconds", "experiments",
                                                            "grader_queries", "submissions", "findings_posted")}
        total["usd"] = round(total["usd"], 4)
        total["wall_seconds"] = round(total["wall_seconds"], 1)
        return {
            "run_id": self.run_id, "sandboxed": not self.opts.unsafe_no_sandbox,
            "workdir": str(self.workdir), "state": self.state, "pid": os.getpid(), "started": self.started,
            "updated": time.time(), "elapsed_seconds": round(time.time() - self.started, 1), "deadline": self.deadline,
            "grader_url": self.grader_url, "dashboard": f"{self.grader_url}/leaderboard", "testbed": self.public_testbed,
            "backend": self.opts.backend, "grader_started_here": self.grader is not None,
            "budgets": {"hours": self.opts.hours, "budget_usd": self.opts.budget_usd,
                        "max_experiments": self.opts.max_experiments, "max_grader_queries": self.opts.max_grader_queries},
            "researchers": rows, "total": total, "baseline": self.baseline, "summary": self.summary,
        }

    @property
    def run_id(self) -> str:
        """This session on the grader: the workdir's name and the session's start time."""
        return f"{self.workdir.name}-{self.session}"

    def write_status(self) -> dict[str, Any]:
        st = self.status()
        _atomic_write(self.workdir / "status.json", json.dumps(st, indent=1, default=_json_default) + "\n")
        if self.pusher is not None:  # throttled while running; always at the end
            self.pusher.push(st, {c.name: Path(c.transcript) for c in self.configs},
                             force=self.state not in ("starting", "running", "stopping"))
        return st

    def wait_for_audits(self, timeout: float = 600.0) -> list[dict[str, Any]]:
        """Every submission on the testbed once its audit has finished (or ``timeout`` passed),
        with a countdown in the log: the summary crowns no submission that an audit would flag."""
        from w2slab.researchers.client import GraderError

        deadline, said = time.monotonic() + timeout, 0.0
        board: list[dict[str, Any]] = []
        while True:
            try:
                board = self.admin.submissions(self.public_testbed)
            except (GraderError, KeyError):
                return board
            pending = [r["id"] for r in board if r.get("audit") == "auditing"]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                if pending:
                    self.log(f"audits of {len(pending)} submission(s) still running after {timeout:.0f} s: the summary says so")
                return board
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                self.log(f"waiting for {len(pending)} audit(s) to finish (at most {left:.0f} s more)")
            time.sleep(1.0)

    def summarize(self) -> dict[str, Any]:
        """The run's result on the sealed holdout. Every researcher's pick (or best board submission)
        is scored once on the sealed third; the headline is the pick of the researcher with the best
        board score (chosen on the board, so its sealed score is free of the winner's curse), with
        its paired interval against the naive baseline on the same sealed rows and seeds."""
        from w2slab.researchers.client import GraderError

        ours = {c.name for c in self.configs}
        board = self.wait_for_audits(self.opts.audit_wait_seconds)
        sealed: dict[str, Any] = {"rows": []}
        try:
            self.server_usage = {r["name"]: r for r in self.admin.researchers()}
            self.admin.seal(self.public_testbed)
            naive_pick = next((r for r in self.admin.sealed(self.public_testbed)["rows"]
                               if r["method_name"] == "naive (reference)"), None)
            sealed = self.admin.sealed(self.public_testbed, vs=naive_pick["submission_id"] if naive_pick else None)
        except (GraderError, KeyError) as e:
            self.log(f"could not seal the holdout: {e}")
            naive_pick = None
        mine = [r for r in board if r["researcher"] in ours]
        picks = [r for r in sealed["rows"] if r["researcher"] in ours]
        head = max(picks, key=lambda r: (r.get("board_pgr") is not None, r.get("board_pgr") or 0, -r["submission_id"]), default=None)
        subs = {r["id"]: r for r in board}
        keys = ("researcher", "submission_id", "method_name", "pgr", "pgr_ci", "transfer_acc", "board_pgr", "chosen_by", "vs")

        def with_audit(row: dict[str, Any] | None) -> dict[str, Any] | None:
            if row is None:
                return None
            sub = subs.get(row["submission_id"], {})
            return {**{k: row.get(k) for k in keys}, "audit": sub.get("audit"), "flags": sub.get("flags"),
                    "teacher_free": sub.get("teacher_free")}

        st = self.status()
        self.summary = {
            "testbed": self.public_testbed,
            "scoring": "sealed holdout, scored once per researcher; PGR with 95% paired bootstrap intervals over test rows "
                       "and seeds; the headline pick is chosen on the board",
            "sealed_rows": sealed.get("rows_scored"),
            "best": with_audit(head),
            "naive": with_audit(naive_pick),
            "sealed_picks": [with_audit(r) for r in picks],
            "candidates": {"dev_evaluations": sum((self.server_usage.get(n) or {}).get("evaluations_total", 0) for n in ours),
                           "board_submissions": len(mine)},
            "experiments": st["total"]["experiments"], "grader_queries": st["total"]["grader_queries"],
            "findings_posted": sum((self.server_usage.get(n) or {}).get("posts", 0) for n in ours) or st["total"]["findings_posted"],
            "submissions": len(mine), "tokens_in": st["total"]["tokens_in"], "tokens_out": st["total"]["tokens_out"],
            "usd": st["total"]["usd"], "wall_seconds": round(time.time() - self.started, 1),
            "dashboard": f"{self.grader_url}/leaderboard",
            "outcomes": dict(self.finished),
        }
        self.write_status()
        return self.summary

    def print_summary(self) -> None:
        from rich.table import Table

        s = self.summary or {}
        table = Table(title=f"research summary: {s.get('testbed')} (sealed holdout, {s.get('sealed_rows')} rows)")
        table.add_column("what")
        table.add_column("value")
        best, naive = s.get("best"), s.get("naive")

        def fmt(row: dict[str, Any] | None) -> str:
            if not row or row.get("pgr") is None:
                return "n/a"
            lo, hi = row.get("pgr_ci") or [None, None]
            ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
            return f"PGR {row['pgr']:.3f}{ci}"

        def audit(row: dict[str, Any] | None) -> str:
            if not row or not row.get("audit"):
                return ""
            flags = ", ".join(f.get("kind", str(f)) if isinstance(f, dict) else str(f) for f in row.get("flags") or [])
            return f" (audit: {row['audit']}{'; ' + flags if flags else ''})"

        table.add_row("best pick (chosen on the board, scored once on the sealed holdout)",
                      f"{fmt(best)} by {best['researcher']}: {best['method_name']}{audit(best)}" if best else "none")
        table.add_row("naive baseline (same seeds and rows)", fmt(naive) + audit(naive))
        vs = (best or {}).get("vs")
        if vs and vs.get("diff") is not None:
            lo, hi = vs["ci"]
            table.add_row("best vs naive (paired, same rows and seeds)", f"{vs['diff']:+.3f} PGR [{lo:+.3f}, {hi:+.3f}]")
        for row in s.get("sealed_picks") or []:
            if not best or row["researcher"] != best["researcher"]:
                table.add_row(f"  {row['researcher']}'s pick (sealed)", f"{fmt(row)}: {row['method_name']}{audit(row)}")
        cand = s.get("candidates") or {}
        table.add_row("candidates compared", f"{cand.get('dev_evaluations')} on dev, {cand.get('board_submissions')} on the board")
        table.add_row("experiments / grader queries", f"{s.get('experiments')} / {s.get('grader_queries')}")
        table.add_row("findings posted", str(s.get("findings_posted")))
        if s.get("tokens_in") or s.get("usd"):
            table.add_row("tokens in / out, dollars", f"{s['tokens_in']} / {s['tokens_out']}, ${s['usd']:.2f}")
        table.add_row("wall-clock", f"{s.get('wall_seconds', 0):.0f} s")
        if not self.opts.serve_after and self.grader is not None:
            table.add_row("dashboard", f"w2slab serve -t {self.opts.testbed} --db {self.grader.db_url}  (the grader of this run is stopped)")
        else:
            table.add_row("dashboard", str(s.get("dashboard")))
        table.add_row("outcomes", ", ".join(f"{k}: {v}" for k, v in (s.get("outcomes") or {}).items()))
        self.console.print(table)

    # ---- the whole run
    def _install_signals(self) -> dict[int, Any]:
        """Ctrl-C and SIGTERM (``research stop --now``) interrupt the run cleanly, even when
        the launcher was started in the background with SIGINT ignored."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        return {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}

    def run(self) -> dict[str, Any]:
        interrupted = False
        summary: dict[str, Any] = {}
        previous = self._install_signals()
        live = LiveStatus(self)  # the terminal's status board from the start (a no-op off a terminal)
        try:
            try:
                with live:
                    self.setup()
                    _atomic_write(self.workdir / "launcher.json", json.dumps(
                        {"pid": os.getpid(), "started": self.started, "grader_url": self.grader_url}) + "\n")
                    self.start()
                    while self.poll():
                        live.update()
                        time.sleep(0.5)
                    self.state = "finished"
                if self._baseline_thread is not None:
                    self._baseline_thread.join(300)
            except KeyboardInterrupt:
                interrupted = True
                self.state = "interrupted"
                self.log("interrupted: terminating the researchers")
                self.terminate_all()
            except BaseException:
                self.state = "failed"
                self.terminate_all()
                if self.configs:
                    self.write_status()
                raise
            if self.admin is not None:
                summary = self.summarize()
                self.print_summary()
                write_run_report(self)
        finally:
            if self.pusher is not None:
                self.pusher.close()
            keep = self.opts.serve_after and not interrupted and self.state == "finished"
            if self.grader is not None and not keep:
                self.grader.stop()
                if summary:
                    self.log(f"the grader is stopped; to browse its dashboard again: "
                             f"w2slab serve -t {self.opts.testbed} --db {self.grader.db_url}")
        try:
            if self.grader is not None and self.opts.serve_after and not interrupted and self.state == "finished":
                self.log(f"dashboard: {self.grader_url}/leaderboard (Ctrl-C to stop the grader)")
                try:
                    self.grader.proc.wait()
                except KeyboardInterrupt:
                    self.grader.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return summary


class LiveStatus:
    """The terminal's live status board during a run (rich Live, redrawn every second): per
    researcher its direction, state, experiments, best dev PGR, grader queries, tokens and
    dollars, with the elapsed and remaining time. Off (log lines only) when the console is not
    a terminal or is quiet. ``update()`` (main thread, at most once a second) reads
    ``Launcher.status()``; the redraw thread only renders the last status it read."""

    def __init__(self, launcher: "Launcher", interval: float = 1.0) -> None:
        self.launcher = launcher
        self.interval = interval
        self.enabled = bool(launcher.console.is_terminal and not launcher.opts.quiet and not launcher.console.quiet)
        self.st: dict[str, Any] | None = None
        self.base: dict[str, Any] | None = None  # weak/ceiling and dev rows: the dev PGR intervals
        self.last = 0.0
        self.live: Any = None

    def __enter__(self) -> "LiveStatus":
        if self.enabled:
            from rich.live import Live  # rich is imported lazily: worker processes import this module

            self.live = Live(get_renderable=self.render, console=self.launcher.console, refresh_per_second=1 / self.interval,
                             transient=False, redirect_stdout=False, redirect_stderr=False)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Draw the last status once more and release the terminal (idempotent)."""
        if self.live is not None:
            live, self.live = self.live, None
            try:
                if self.launcher.configs:
                    self.st = self.launcher.status()
                live.refresh()
            finally:
                live.stop()

    def update(self, force: bool = False) -> None:
        if self.live is None or (not force and time.monotonic() - self.last < self.interval):
            return
        self.last = time.monotonic()
        la = self.launcher
        if not la.configs:
            return
        if self.base is None and la.admin is not None:
            self.base = {}
            try:
                lb, beds = la.admin.leaderboard(la.public_testbed), la.admin.testbeds()
                n = next((t.get("dev_rows") for t in beds if t.get("name") == la.public_testbed), None)
                self.base = {"weak": lb["weak_acc"], "gap": lb["ceiling_acc"] - lb["weak_acc"], "dev_rows": n}
            except Exception:  # noqa: BLE001 - without them the board shows dev PGRs without intervals
                pass
        self.st = la.status()

    def render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        la, st = self.launcher, self.st
        now = time.time()
        clock = f"elapsed {now - la.started:.0f} s"
        if la.deadline is not None and la.state in ("running", "stopping"):
            clock += f", {max(0.0, la.deadline - now):.0f} s left"
        if st is None:
            doing = " (setting up: grader, kit, embeddings)" if la.state == "starting" else ""
            return Text(f"w2slab research: {la.state}{doing}; {clock}")
        table = Table(title=f"research {st.get('state')} on {st.get('testbed')}: {clock}", title_justify="left",
                      caption=f"dashboard {st.get('dashboard')}; Ctrl-C stops the run", caption_justify="left",
                      box=None, pad_edge=False, padding=(0, 1))
        rows = st.get("researchers", [])
        cols = [("researcher", max([len(r["name"]) for r in rows] + [10])), ("direction", 0), ("state", 9),
                ("exper-\niments", 6), ("best dev\nPGR ±95%", 10), ("grader\nqueries", 7), ("tokens\nin/out", 8), ("$", 5)]
        room = max(6, min(24, la.console.width - sum(w + 2 for _, w in cols)))  # the direction gives way
        for i, (col, width) in enumerate(cols):
            table.add_column(col, justify="left" if i < 3 else "right", no_wrap=True, min_width=width or None,
                             header_style="bold")

        def cut(text: str) -> str:
            return text if len(text) <= room else text[: room - 1] + "…"

        for r in rows:
            best = r.get("best_dev_pgr")
            ci = dev_ci(best, None, self.base or {}) if best is not None else None  # symmetric: shown as ±
            shown = "-" if best is None else f"{best:.2f}" + (f" ±{(ci[1] - ci[0]) / 2:.2f}" if ci else " (no CI)")
            table.add_row(r["name"], cut(r.get("direction") or ""), r.get("outcome") or r.get("status") or "",
                          str(r.get("experiments", 0)), shown, str(r.get("grader_queries", 0)),
                          f"{_short(r.get('tokens_in', 0))}/{_short(r.get('tokens_out', 0))}", f"{float(r.get('usd') or 0):.2f}")
        t = st.get("total") or {}
        table.add_row("total", "", "", str(t.get("experiments", 0)), "", str(t.get("grader_queries", 0)),
                      f"{_short(t.get('tokens_in', 0))}/{_short(t.get('tokens_out', 0))}", f"{float(t.get('usd') or 0):.2f}",
                      style="bold")
        return table


def _short(n: Any) -> str:
    """1234 -> 1.2k, 2345678 -> 2.3M (token counts in the live board)."""
    n = int(n or 0)
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


NAIVE_FILE = '''"""Naive weak-to-strong reference: the strong student trained on the weak teacher's hard labels."""

import numpy as np

from w2slab.methods import MethodContext, method


@method("naive-reference")
def run(ctx: MethodContext) -> np.ndarray:
    return ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)
'''


def run_research(opts: ResearchOptions, console: Any = None) -> dict[str, Any]:
    """Run a research session (see the module docstring); returns the summary."""
    return Launcher(opts, console).run()


def run_demo(testbed: str | None = None, researchers: int = 2, minutes: float = 4.0, workdir: str | Path | None = None,
             unsafe_no_sandbox: bool = False, serve_after: bool = False, quiet: bool = False) -> dict[str, Any]:
    """``w2slab demo``: offline researchers on the default built-in testbed, a few minutes on CPU.

    Uses ``tweets-pairs`` (else the first built-in testbed) unless ``testbed`` is given; starts a
    grader, runs ``researchers`` offline researchers for ``minutes`` and prints the summary.
    Falls back to no sandbox (with a warning) when bubblewrap cannot run here.
    """
    from rich.console import Console

    from w2slab.testbeds import REGISTRY

    console = Console(stderr=True, quiet=quiet)
    if testbed is None:
        builtin = sorted(n for n, s in REGISTRY.items() if "builtin" in s.tags)
        if not builtin:
            raise RuntimeError("no built-in testbed is installed (build them with `python -m w2slab.testbeds.build`)")
        testbed = DEFAULT_TESTBED if DEFAULT_TESTBED in builtin else builtin[0]
    if not unsafe_no_sandbox:
        from w2slab.researchers.sandbox import find_bwrap

        if find_bwrap() is None:
            console.print("[yellow]warning:[/] bubblewrap cannot run here: the demo runs experiments WITHOUT a sandbox")
            unsafe_no_sandbox = True
    workdir = Path(workdir) if workdir else Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    opts = ResearchOptions(testbed=testbed, researchers=researchers, backend="offline", hours=minutes / 60,
                           workdir=workdir, unsafe_no_sandbox=unsafe_no_sandbox, serve_after=serve_after, quiet=quiet)
    console.print(f"[bold]w2slab demo[/]: {researchers} offline researchers on {testbed} for {minutes:g} min "
                  f"(workdir {opts.workdir})", highlight=False)
    return run_research(opts, console)


def read_status(workdir: str | Path) -> dict[str, Any]:
    path = Path(workdir) / "status.json"
    if not path.is_file():
        raise FileNotFoundError(f"no research run in {workdir} (no status.json)")
    return json.loads(path.read_text())


def request_stop(workdir: str | Path, now: bool = False) -> str:
    """Ask a running session to wrap up (stop file); ``now``: also interrupt the launcher."""
    workdir = Path(workdir)
    if not (workdir / "status.json").is_file() and not (workdir / "launcher.json").is_file():
        raise FileNotFoundError(f"no research run in {workdir}")
    (workdir / STOP_FILE).touch()
    msg = f"stop file written: {workdir / STOP_FILE}; researchers wrap up and submit"
    if now:
        try:
            pid = int(json.loads((workdir / "launcher.json").read_text())["pid"])
            os.kill(pid, signal.SIGTERM)
            msg += f"; interrupted launcher {pid}"
        except (OSError, ValueError, KeyError) as e:
            msg += f"; could not interrupt the launcher ({e})"
    return msg


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2]))
    print("usage: python -m w2slab.researchers.launcher --worker CONFIG.json", file=sys.stderr)
    sys.exit(2)
