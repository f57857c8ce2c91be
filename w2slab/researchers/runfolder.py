"""A research run's folder (``<workdir>``) seen from outside the launcher: its status, the stop
request, the launcher lock, and what a resume reads back.

Layout::

    status.json  launcher.json (pid, grader, workers)  launcher.lock  STOP  kit/  shared_embeddings/
    grader/ (grader.db, grader.log, admin_token)  report.md  report.html  report_pgr.png
    <name>/config.json (0600: holds the token)  <name>/transcript.jsonl  <name>/usage.json
    <name>/process.log  <name>/workspace/  (the only folder the researcher's sandbox may write)
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path
from typing import IO, Any

from w2slab.researchers.contract import STOP_FILE, ResearcherConfig

LOCK_FILE = "launcher.lock"


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


def lock_workdir(workdir: Path) -> IO[str]:
    """Hold ``<workdir>/launcher.lock`` for this launcher's life (an flock: the kernel releases it
    when the process dies, even by kill -9). Refuses when another launcher holds it."""
    workdir.mkdir(parents=True, exist_ok=True)
    f = open(workdir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        pid = launcher_info(workdir).get("pid", "?")
        raise ValueError(f"a launcher (pid {pid}) is still running in {workdir}: stop it first "
                         f"(w2slab research stop --workdir {workdir} --now)") from None
    return f


def launcher_info(workdir: Path) -> dict[str, Any]:
    try:
        return json.loads((workdir / "launcher.json").read_text())
    except (OSError, ValueError):
        return {}


def resumable_configs(workdir: Path) -> list[ResearcherConfig]:
    """The researchers of the run in ``workdir`` (from ``<name>/config.json``, in their order);
    refuses a folder that is not a research run."""
    if not workdir.is_dir():
        raise ValueError(f"--resume: {workdir} does not exist")
    configs = []
    for path in sorted(workdir.glob("*/config.json")):
        if path.parent.name == "naive-baseline":
            continue
        try:
            configs.append(ResearcherConfig.load(path))
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"--resume: cannot read {path}: {e}") from None
    if not configs or not (workdir / "session.json").is_file():
        raise ValueError(f"--resume: {workdir} is not a research run folder (no session.json and <name>/config.json)")
    return sorted(configs, key=lambda c: c.index)


def stop_leftovers(workdir: Path) -> list[int]:
    """Stop what a killed launcher left running: its grader and researcher processes (pids in
    launcher.json, each checked to still be that process by its command line). Returns the pids."""
    info = launcher_info(workdir)
    stopped = []
    for pid, marker in [(info.get("grader_pid"), str(workdir / "grader"))] + [
            (p, str(workdir)) for p in (info.get("workers") or {}).values()]:
        if not isinstance(pid, int) or not _cmdline_has(pid, marker):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in stopped:
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return stopped


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
