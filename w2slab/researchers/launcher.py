"""Supervise N automated researchers against a grader, in parallel, with budgets and accounting.

``run_research(ResearchOptions(...))`` (what ``w2slab research`` runs):

1. connects to a grader (``grader``) or starts ``w2slab serve`` on a free port of ``grader_host``
   (loopback by default) with its SQLite database under ``<workdir>/grader/``;
2. registers the researchers, exports one label-free kit for the server's submission seeds plus
   the dev seeds and a read-only copy of the kit texts' embeddings (:mod:`.prepare`), and assigns
   each researcher its GPUs (:mod:`.gpus`) and a different starting direction;
3. runs each researcher as a worker (:class:`~.contract.WorkerHandle`): a local process
   (:class:`~.worker.LocalWorker`) or, with ``ray_address``, a Ray actor on a cluster node;
4. restarts a crashed researcher (it resumes from its notebook) up to ``max_restarts`` times;
   stops everything on the deadline, on the budgets, on ``w2slab research stop`` (the stop file)
   or on Ctrl-C (workers terminated, waited for, summarised);
5. writes ``<workdir>/status.json`` every poll, mirrors it and the transcripts on the grader
   (:mod:`.pusher`) and ends, once the submissions' audits are done, with the summary scored on
   the sealed holdout (:mod:`.summary`) and the report (:mod:`.report`).

``resume=True`` continues the run of ``workdir`` (stopped, or its launcher killed): the same
grader database, researchers, tokens, notebooks and session (so usage counts on), options from
``<workdir>/session.json`` except the wall-clock (``hours``: for the resumed part) and how to
reach or place things (``grader``, ``admin_token``, ``grader_host``, ``ray_address``, ``serve_after``,
``quiet``). The folder's layout is in :mod:`.runfolder`; the researcher contract in :mod:`.contract`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from w2slab.grader.process import GraderProcess
from w2slab.researchers.client import GraderClient, GraderError
from w2slab.researchers.console import LiveStatus, print_summary
from w2slab.researchers.contract import (BACKENDS, STOP_FILE, Budgets, LLMOptions, ResearcherConfig, Transcript, Usage,
                                         WorkerHandle, atomic_write, json_default, read_usage)
from w2slab.researchers.directions import assign_directions, load_directions
from w2slab.researchers.gpus import assign_gpus
from w2slab.researchers.options import DEFAULT_KEY_ENV, DEFAULT_MODELS, ResearchOptions, resume_options
from w2slab.researchers.prepare import build_shared_embeddings, export_kit_for, parse_testbed_ref, sandbox_masks
from w2slab.researchers.pusher import ResearchPusher
from w2slab.researchers.report import write_run_report
from w2slab.researchers.runfolder import lock_workdir, resumable_configs, stop_leftovers
from w2slab.researchers.sandbox import require_sandbox
from w2slab.researchers.summary import submit_naive_baseline, summarize
from w2slab.researchers.worker import LocalWorker

class Launcher:
    """One research session: :meth:`setup` (grader, kit, researchers' configs), :meth:`start`
    (their workers), :meth:`poll` every half second until all have ended, then the summary."""

    def __init__(self, opts: ResearchOptions, console: Any = None) -> None:
        if opts.backend not in BACKENDS:
            raise ValueError(f"unknown backend '{opts.backend}' (known: {', '.join(BACKENDS)})")
        if opts.researchers < 1:
            raise ValueError("--researchers must be at least 1")
        if opts.hours <= 0:
            raise ValueError("--hours must be positive")
        self.opts = opts
        self.console = console or Console(stderr=True, quiet=opts.quiet)
        self.workdir = Path(opts.workdir).absolute()
        # GPUs of a local run are checked now (a clear error before anything starts); on Ray, each
        # actor asks for its GPUs and sees those of its node
        self.gpu_blocks = ([[] for _ in range(opts.researchers)] if opts.ray_address
                           else assign_gpus(opts.researchers, opts.gpus_per_researcher, opts.gpus))
        self.grader: GraderProcess | None = None
        self.grader_url = ""
        self.admin_token = ""
        self.admin: GraderClient | None = None
        self.configs: list[ResearcherConfig] = []
        self.workers: dict[str, WorkerHandle] = {}
        self.restarts: dict[str, int] = {}
        self.finished: dict[str, str] = {}  # name -> done | failed | killed
        self.started = time.time()
        self.session = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        self.transcript_starts: dict[str, int] = {}  # byte offset where this session's lines begin
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
        self._lock: Any = None

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)

    @property
    def run_id(self) -> str:
        """This session on the grader: the workdir's name and the session's start time."""
        return f"{self.workdir.name}-{self.session}"

    # ---- set-up
    def setup(self) -> None:
        o = self.opts
        previous: dict[str, ResearcherConfig] = {}
        if o.resume:
            previous = {c.name: c for c in resumable_configs(self.workdir)}  # refuses a folder that is not a run
            session = json.loads((self.workdir / "session.json").read_text())
            self.session, self.transcript_starts = session["session"], session.get("transcript_starts", {})
        self._lock = lock_workdir(self.workdir)  # refuses while another launcher runs here
        if stopped := stop_leftovers(self.workdir):  # the lock was free: whatever a killed launcher left
            self.log(f"stopped processes left by the killed launcher: {stopped}")
        self._write_launcher_json()
        (self.workdir / STOP_FILE).unlink(missing_ok=True)
        if o.ray_address:  # connect now: a one-line refusal when the cluster is missing or too small
            _ray().check_cluster(o.ray_address, o.researchers, o.threads, o.gpus_per_researcher)
        if not o.unsafe_no_sandbox:
            require_sandbox()  # fails with an install hint (or use --unsafe-no-sandbox)
        public, data_ref = parse_testbed_ref(o.testbed)
        self.public_testbed = public
        self._connect_grader(public, data_ref)
        assert self.admin is not None
        served = {t["name"]: t for t in self.admin.testbeds()}
        if public not in served:
            raise ValueError(f"the grader at {self.grader_url} does not serve '{public}' (it serves: {', '.join(served)})")
        submit_seeds = self.admin.seeds(public)
        self.log(f"grader {self.grader_url}: {public}, submission seeds {submit_seeds}")

        # heavy (torch, the models): imported only when a run is set up
        from w2slab.engine.pipeline import Experiment
        from w2slab.engine.runner import prepare_features
        from w2slab.testbeds import get_testbed

        exp = Experiment.create(data_ref, o.weak, o.strong)
        prepare_features(exp, quiet=True)
        seeds = list(dict.fromkeys(list(o.dev_seeds) + list(submit_seeds)))
        kit = export_kit_for(exp, seeds, self.workdir / "kit")
        shared = build_shared_embeddings(exp, self.workdir / "shared_embeddings")
        masked = sandbox_masks(get_testbed(data_ref).folder)
        self.log(f"kit {kit} (seeds {seeds}); shared embeddings {shared}")

        directions = assign_directions(o.researchers, load_directions(o.directions))
        model = o.model or DEFAULT_MODELS.get(o.backend)
        key_env = o.api_key_env or DEFAULT_KEY_ENV.get(o.backend)
        per_usd = None if o.budget_usd is None else o.budget_usd / o.researchers
        old_by_index = {c.index: c for c in previous.values()}
        for i, direction in enumerate(directions):
            before = old_by_index.get(i)
            name, token = self._register(before.name if before else f"{o.backend}-{i + 1}")
            folder = self.workdir / name
            cfg = ResearcherConfig(
                name=name, token=token, grader_url=self.grader_url, testbed=public, kit_dir=kit,
                workspace=folder / "workspace", direction=before.direction if before else direction.text,
                direction_name=before.direction_name if before else direction.name,
                budgets=Budgets(usd=per_usd, tokens=o.max_tokens, wall_seconds=None, experiments=o.max_experiments,
                                grader_queries=o.max_grader_queries),
                backend=o.backend, model=model if o.backend != "offline" else None, base_url=o.base_url,
                api_key_env=key_env if o.backend != "offline" else None, llm=before.llm if before else LLMOptions(),
                sandbox=not o.unsafe_no_sandbox, transcript=folder / "transcript.jsonl", usage_path=folder / "usage.json",
                stop_file=self.workdir / STOP_FILE, dev_seeds=list(o.dev_seeds), submit_seeds=list(submit_seeds),
                shared_embeddings=shared, masked=masked, index=i, seed=1000 + i, threads=o.threads,
                gpus=list(self.gpu_blocks[i]), session=self.session,
            )
            cfg.workspace.mkdir(parents=True, exist_ok=True)
            self.configs.append(cfg)
            if name not in self.transcript_starts:  # lines of earlier sessions are not this run's
                self.transcript_starts[name] = cfg.transcript.stat().st_size if cfg.transcript.is_file() else 0
            if o.resume:
                Transcript(cfg.transcript, name).event("resumed", session=self.session, pid=os.getpid(),
                                                       usage={k: read_usage(cfg.usage_path).get(k) for k in (
                                                           "experiments", "grader_queries", "tokens_in", "tokens_out",
                                                           "usd", "wall_seconds")})
        atomic_write(self.workdir / "session.json", json.dumps(
            {"session": self.session, "options": o.to_json(), "transcript_starts": self.transcript_starts}, indent=1) + "\n")
        self.pusher = ResearchPusher(self.grader_url, self.admin_token, self.run_id,
                                     warn=lambda msg: self.log(f"[yellow]{msg}[/]"))
        for cfg in self.configs:  # from this session's first line: a resumed run re-sends nothing twice
            self.pusher.offsets[cfg.name], self.pusher.seqs[cfg.name] = self.transcript_starts[cfg.name], 0
        if o.backend in ("anthropic", "openai") and key_env and not os.environ.get(key_env):
            self.log(f"[yellow]warning:[/] {key_env} is not set: the {o.backend} researchers cannot call the API")

    def _connect_grader(self, public: str, data_ref: str) -> None:
        """Connect to ``--grader``, or start ``w2slab serve`` on the workdir's grader folder (the
        same database when the run is resumed)."""
        o = self.opts
        if o.grader:
            self.grader_url = o.grader.rstrip("/")
            self.admin_token = o.admin_token or os.environ.get("W2SLAB_ADMIN_TOKEN", "").strip()
            if not self.admin_token:
                from w2slab.grader.auth import admin_token_file  # the grader's own module: only for --grader

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
                atomic_write(token_file, self.admin_token + "\n", mode=0o600)
            ref = f"{public}={data_ref}" if Path(data_ref).is_dir() else data_ref
            self.log(f"starting the grader for {public} (baselines are computed on first use; can take minutes)")
            self.grader = GraderProcess(ref, self.workdir / "grader", o.weak, o.strong, o.dev_seeds, self.admin_token,
                                        o.eval_per_hour, o.eval_total, o.dev_ladder, host=o.grader_host)
            self._write_launcher_json()
            self.grader.wait_ready()
            self.grader_url = f"http://{_reachable_host(o.grader_host)}:{self.grader.port}"
        self.admin = GraderClient(self.grader_url, self.admin_token)

    def _register(self, base: str) -> tuple[str, str]:
        """Reuse the token of a researcher of this workdir, else register a fresh name."""
        assert self.admin is not None
        cfg_path = self.workdir / base / "config.json"
        if cfg_path.is_file():
            old = ResearcherConfig.load(cfg_path)
            c = GraderClient(self.grader_url, old.token, retries=1)
            try:
                if c.me().get("name") == old.name:
                    return old.name, old.token
            except GraderError:
                pass
            finally:
                c.close()
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

    def _write_launcher_json(self) -> None:
        """The live launcher's pid, grader and workers: what `research stop --now` and a resume read."""
        atomic_write(self.workdir / "launcher.json", json.dumps({
            "pid": os.getpid(), "started": self.started, "grader_url": self.grader_url, "session": self.session,
            "grader_pid": self.grader.proc.pid if self.grader else None,
            "workers": {n: w.pid for n, w in self.workers.items()}}) + "\n")

    # ---- workers
    def _spawn(self, cfg: ResearcherConfig) -> None:
        """Start ``cfg``'s researcher: a local process, or a Ray actor with ``ray_address``."""
        cfg.save(cfg.folder / "config.json")
        worker: WorkerHandle
        if self.opts.ray_address is None:
            worker = LocalWorker(cfg, cfg.folder, threads=self.opts.threads)
        else:
            worker = _ray().RayWorker(cfg, cfg.folder, num_cpus=self.opts.threads, num_gpus=self.opts.gpus_per_researcher,
                               address=self.opts.ray_address)
        self.workers[cfg.name] = worker
        self._write_launcher_json()
        Transcript(cfg.transcript, cfg.name).event("launched", pid=worker.pid, worker=type(worker).__name__,
                                                   restart=self.restarts.get(cfg.name, 0))

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
            self._baseline_thread = threading.Thread(target=self._submit_baseline, daemon=True)
            self._baseline_thread.start()

    def _submit_baseline(self) -> None:
        assert self.admin is not None
        self.baseline = submit_naive_baseline(self.admin, self.configs[0], self.workdir, self.public_testbed, self._register)

    def poll(self) -> bool:
        """One supervision step; False once every researcher has ended."""
        now = time.time()
        stop_requested = (self.workdir / STOP_FILE).exists()
        if stop_requested and self.stop_at is None:
            self.log("stop requested: researchers wrap up and submit")
            self.state = "stopping"
            self.stop_at = now + self.opts.grace_seconds
        if self.opts.budget_usd is not None:
            spent = sum(float(read_usage(c.usage_path).get("usd", 0.0)) for c in self.configs)
            if spent >= self.opts.budget_usd and not stop_requested:
                self.log(f"dollar budget reached (${spent:.2f}): stopping")
                (self.workdir / STOP_FILE).touch()
        hard_stop = (self.deadline is not None and now > self.deadline + self.opts.grace_seconds) or \
            (self.stop_at is not None and now > self.stop_at)
        for cfg in self.configs:
            worker = self.workers.get(cfg.name)
            if worker is None or cfg.name in self.finished:
                continue
            worker.sync()
            over = self._over_llm_budget(cfg, read_usage(cfg.usage_path))
            code = worker.poll()
            if code is None:
                if hard_stop or over:
                    self.log(f"{cfg.name}: {'over budget' if over else 'past the deadline'}; terminating")
                    worker.terminate()
                    worker.sync()
                    self.finished[cfg.name] = "killed"
                    self._mark(cfg, "killed", over or "deadline")
                continue
            worker.sync()
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

    def terminate_all(self) -> None:
        """Stop every worker still running (in parallel), then record them as killed."""
        running = [(cfg, w) for cfg in self.configs if (w := self.workers.get(cfg.name)) is not None]
        threads = [threading.Thread(target=w.terminate, daemon=True) for _, w in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for cfg, w in running:
            w.sync()
            if cfg.name not in self.finished:
                self.finished[cfg.name] = "killed"
                self._mark(cfg, "killed", "interrupted")

    # ---- status
    def _poll_server(self, force: bool = False) -> None:
        """The grader's own counts per researcher, at most every 5 s while running (``force``: now)."""
        if (not force and time.time() - self._server_poll < 5) or self.admin is None:
            return
        self._server_poll = time.time()
        try:
            self.server_usage = {r["name"]: r for r in self.admin.researchers()}
        except Exception:  # noqa: BLE001 - the grader may be busy; status shows the last poll
            pass

    def status(self) -> dict[str, Any]:
        self._poll_server(force=self.state not in ("starting", "running", "stopping"))  # final counts at the end
        rows = []
        for cfg in self.configs:
            u = read_usage(cfg.usage_path)
            worker = self.workers.get(cfg.name)
            server = self.server_usage.get(cfg.name, {})
            rows.append({
                "name": cfg.name, "direction": cfg.direction_name, "backend": cfg.backend, "gpus": cfg.gpus,
                "pid": worker.pid if worker else None, "node": getattr(worker, "node", None), "alive": bool(worker and worker.poll() is None),
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
            "run_id": self.run_id, "session": self.session, "resumed": self.opts.resume,
            "sandboxed": not self.opts.unsafe_no_sandbox,
            "workdir": str(self.workdir), "state": self.state, "pid": os.getpid(), "started": self.started,
            "updated": time.time(), "elapsed_seconds": round(time.time() - self.started, 1), "deadline": self.deadline,
            "grader_url": self.grader_url, "dashboard": f"{self.grader_url}/leaderboard", "testbed": self.public_testbed,
            "backend": self.opts.backend, "grader_started_here": self.grader is not None,
            "workers": "ray" if self.opts.ray_address else "local",
            "budgets": {"hours": self.opts.hours, "budget_usd": self.opts.budget_usd,
                        "max_experiments": self.opts.max_experiments, "max_grader_queries": self.opts.max_grader_queries},
            "researchers": rows, "total": total, "baseline": self.baseline, "summary": self.summary,
        }

    def write_status(self) -> dict[str, Any]:
        st = self.status()
        atomic_write(self.workdir / "status.json", json.dumps(st, indent=1, default=json_default) + "\n")
        if self.pusher is not None:  # throttled while running; always at the end
            self.pusher.push(st, {c.name: Path(c.transcript) for c in self.configs},
                             force=self.state not in ("starting", "running", "stopping"))
        return st

    def summarize(self) -> dict[str, Any]:
        assert self.admin is not None
        total = self.status()["total"]
        self.summary = {**summarize(self.admin, self.public_testbed, {c.name for c in self.configs}, total,
                                    self.opts.audit_wait_seconds, self.log),
                        "wall_seconds": round(time.time() - self.started, 1),
                        "dashboard": f"{self.grader_url}/leaderboard", "outcomes": dict(self.finished)}
        self.write_status()
        return self.summary

    def dashboard_hint(self) -> str | None:
        if self.grader is not None and not self.opts.serve_after:
            return f"w2slab serve -t {self.opts.testbed} --db {self.grader.db_url}  (the grader of this run is stopped)"
        return None

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
                print_summary(self.console, self.summary, self.dashboard_hint())
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
            if self.grader is not None and keep:
                self.log(f"dashboard: {self.grader_url}/leaderboard (Ctrl-C to stop the grader)")
                try:
                    self.grader.proc.wait()
                except KeyboardInterrupt:
                    self.grader.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._lock is not None:
                self._lock.close()
            if self.opts.ray_address:
                _ray().shutdown()
        return summary


def _ray() -> Any:
    """:mod:`w2slab.researchers.ray_workers`, imported only for ``--ray`` (Ray is heavy and optional)."""
    from w2slab.researchers import ray_workers

    return ray_workers


def _reachable_host(bind: str) -> str:
    """The address researchers use for a grader bound to ``bind`` (a wildcard: this host's name)."""
    if bind in ("0.0.0.0", "::", ""):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return f"[{bind}]" if ":" in bind else bind


def run_research(opts: ResearchOptions, console: Any = None) -> dict[str, Any]:
    """Run a research session, or resume one (``opts.resume``); returns the summary."""
    if opts.resume:
        resumable_configs(Path(opts.workdir))  # a clear refusal before anything else
        opts = resume_options(opts)
    return Launcher(opts, console).run()

