"""Process groups: how the grader harness and the researcher workers stop what they started
(each child leads a session of its own, so a signal to its group reaches its children too)."""

from __future__ import annotations

import os
import signal
import subprocess


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group already gone (or not ours) is not an error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen, wait: float) -> int | None:
    """SIGTERM the group ``proc`` leads, SIGKILL it after ``wait`` seconds; ``proc``'s exit status."""
    if proc.poll() is not None:
        return proc.returncode
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return proc.returncode
