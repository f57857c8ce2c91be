"""Helpers for the tests that run `w2slab research` as a real launcher process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from w2slab.researchers.runfolder import stop_leftovers


def read_json(path: Path) -> dict:
    """A JSON file's object, or ``{}`` while it is missing or half written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_for(predicate: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` until it holds; fail on timeout or when ``proc`` (the launcher) exits first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the launcher exited early while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie or a dead process does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


@contextmanager
def launched(cmd: list[str], log: Path, workdir: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A launcher process in a session of its own, its output in ``log``; on the way out one
    still running is killed with its group, and what a killed launcher left (its grader runs in
    a session of its own) is stopped."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env if env is not None else os.environ.copy(),
                                start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                stop_leftovers(workdir)
