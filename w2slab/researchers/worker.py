"""One researcher's process: ``python -m w2slab.researchers.worker CONFIG.json``.

:func:`worker_main` loads the :class:`~w2slab.researchers.contract.ResearcherConfig`, records
``process_start`` / ``process_exit`` (or ``crash``) in its transcript and runs the backend
(:func:`run_researcher`). :class:`LocalWorker` is the supervisor's handle on such a process on
this machine (a :class:`~w2slab.researchers.contract.WorkerHandle`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

from w2slab.processes import stop_group
from w2slab.researchers.contract import BACKENDS, ResearcherConfig, Transcript


def run_researcher(config: ResearcherConfig) -> int:
    """Dispatch to the backend's run function (in the researcher's own process). The backends
    are imported here: a worker loads only its own (the LLM one pulls in its API SDK)."""
    if config.backend == "offline":
        from w2slab.researchers.offline import run_offline_researcher

        return int(run_offline_researcher(config) or 0)
    if config.backend in ("anthropic", "openai"):
        from w2slab.researchers.agent import run_llm_researcher

        return int(run_llm_researcher(config) or 0)
    raise ValueError(f"unknown backend '{config.backend}' (known: {', '.join(BACKENDS)})")


def worker_main(config_path: str | Path) -> int:
    config = ResearcherConfig.load(config_path)
    tr = Transcript(config.transcript, config.name)
    tr.event("process_start", pid=os.getpid(), backend=config.backend)
    try:
        code = run_researcher(config)
    except Exception as e:  # noqa: BLE001 - recorded, then the launcher restarts us
        tr.event("crash", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    tr.event("process_exit", code=code)
    return code


def _die_with_launcher() -> None:
    """In the child before exec: SIGTERM when the launcher dies, even by kill -9 (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


class LocalWorker:
    """A researcher as a subprocess of this machine, in its own session (its sandboxes die
    with it) and ended by the kernel when the launcher dies, cwd its workspace, output appended
    to ``<folder>/process.log``. The folder already holds ``config.json`` (written by the launcher)."""

    def __init__(self, cfg: ResearcherConfig, folder: Path, threads: int = 1) -> None:
        self.name = cfg.name
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        with open(folder / "process.log", "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "w2slab.researchers.worker", str(folder / "config.json")],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                         cwd=str(cfg.workspace), preexec_fn=_die_with_launcher)
        self.pid: int | None = self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def sync(self) -> None:
        """Everything is already in the local folder."""

    def terminate(self, wait: float = 10.0) -> None:
        stop_group(self.proc, wait)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m w2slab.researchers.worker CONFIG.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(worker_main(sys.argv[1]))
