"""A grader server as a subprocess: ``w2slab serve`` on a free loopback port, in its own process
group (so a stop or kill reaches every uvicorn worker), logging to a file, with a health loop.

The one harness used by the research launcher, the red team, the tests and the benchmarks::

    grader = GraderProcess("toy=/data/toy", folder, weak, strong, seeds=[1, 2, 3]).wait_ready()
    ...
    grader.stop()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from w2slab.processes import signal_group, stop_group


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class GraderProcess:
    """``w2slab serve`` in its own process group, started by the constructor.

    ``testbed_ref``: one reference (``NAME=FOLDER``, a name or a folder) or several. ``folder``
    holds the log (``grader.log`` unless ``log`` is given) and, unless ``db_url`` is given, the
    SQLite file ``grader.db``. ``admin_token`` is passed as ``W2SLAB_ADMIN_TOKEN``; ``env`` replaces
    the inherited environment; ``extra`` are further ``serve`` options, passed as they are; ``cwd``:
    the server's working folder (with ``PYTHONPATH`` in ``env``, another copy of the package can serve).
    """

    def __init__(self, testbed_ref: str | Sequence[str], folder: Path, weak: str | None = None, strong: str | None = None,
                 seeds: Sequence[int] | None = None, admin_token: str | None = None, eval_per_hour: int | None = None,
                 eval_total: int | None = None, dev_ladder: float | None = None, *, extra: Sequence[str] = (),
                 workers: int = 1, port: int | None = None, host: str = "127.0.0.1", db_url: str | None = None,
                 log: Path | None = None, env: Mapping[str, str] | None = None, baseline_workers: int = 1,
                 cwd: Path | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = Path(log) if log is not None else self.folder / "grader.log"
        self.db_url = db_url or f"sqlite:///{self.folder / 'grader.db'}"
        refs = [testbed_ref] if isinstance(testbed_ref, str) else list(testbed_ref)
        cmd = [sys.executable, "-m", "w2slab.grader.cli", "serve"]
        for ref in refs:
            cmd += ["-t", ref]
        cmd += ["--host", host, "--port", str(self.port), "--db", self.db_url, "--baseline-workers", str(baseline_workers),
                "--workers", str(workers)]
        cmd += ["--seeds", ",".join(map(str, seeds))] if seeds else []
        cmd += ["--eval-per-hour", str(eval_per_hour)] if eval_per_hour is not None else []
        cmd += ["--eval-total", str(eval_total)] if eval_total is not None else []
        cmd += ["--dev-ladder", str(dev_ladder)] if dev_ladder is not None else []
        cmd += ["--weak", weak] if weak else []
        cmd += ["--strong", strong] if strong else []
        self.cmd = [*cmd, *extra]
        environ = dict(os.environ if env is None else env)
        if admin_token is not None:
            environ["W2SLAB_ADMIN_TOKEN"] = admin_token
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=environ,
                                         start_new_session=True, cwd=cwd)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 1800.0, on_wait: Callable[[float], None] | None = None,
                   interval: float = 0.1) -> GraderProcess:
        """Poll ``/healthz`` until it answers 200 (``on_wait(seconds)`` between polls); a server
        that exits, or is not ready in ``timeout`` seconds (then stopped), raises RuntimeError
        with the end of its log."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the grader exited with status {self.proc.returncode}; its log ({self.log}):\n"
                                   + self.log_tail())
            if self.healthy():
                return self
            if on_wait:
                on_wait(time.monotonic() - start)
            time.sleep(interval)
        self.stop()
        raise RuntimeError(f"the grader did not become ready in {timeout:.0f} s; its log ({self.log}):\n" + self.log_tail())

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown of anything."""
        signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds."""
        stop_group(self.proc, timeout)

    def __enter__(self) -> GraderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
