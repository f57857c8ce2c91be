"""The warm process inside a researcher's sandbox (:class:`w2slab.researchers.sandbox.WarmSandbox`).

It imports what experiments need once (torch, the w2slab CLI and engine), optionally reads a kit's
rows and their features, then serves runs: each request line on stdin is a JSON object
``{"id", "args", "cpu_seconds", "wall_seconds"}``; the process forks a child that runs
``w2slab <args>`` exactly as a fresh ``python -m w2slab`` would, and answers one JSON line on stdout
``{"id", "returncode", "timed_out", "cpu_seconds_used", "wall_seconds", "stdout", "stderr"}``.

Each child starts from this process's state before any run (``fork``), in its own process group,
with stdin from ``/dev/null``, its output in private files, and its own CPU-time rlimit; at the
wall clock its whole group is killed. This process is never dumpable, so a child (same uid)
cannot ptrace it or write its memory to change what later runs compute.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback

import torch  # noqa: F401  (the point of this process: experiments start with torch imported)

from w2slab.cli import app
from w2slab.engine.kit import Kit
from w2slab.models.factory import make_backend

PR_SET_DUMPABLE = 4
POLL_SECONDS = 0.005


def warm_kit(kit_dir: str) -> None:
    """Read the kit's rows and, for a probe student, their features once, so that every child has
    them. An ``lm`` student is left alone: loading it here would initialise CUDA before the forks."""
    kit = Kit.open(kit_dir)
    ctx = kit.context(kit.seeds[0])
    if ctx.strong.kind == "probe":
        student = make_backend(ctx.strong)
        student.features(ctx.train)
        student.features(ctx.test)


def _tail(path: str, cap: int) -> str:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - cap))
        data = f.read()
    note = f"[... {size - cap} bytes of output dropped ...]\n" if size > cap else ""
    return note + data.decode("utf-8", errors="replace")


def _child(args: list[str], cpu_seconds: float | None, out: str, err: str, private: list[int]) -> None:
    """In the forked child: never returns. ``private``: this process's descriptors to close (the
    reply stream), so a run cannot write answers for other runs."""
    code = 1
    try:
        for fd in private:
            os.close(fd)
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        if cpu_seconds is not None:
            soft = max(1, int(round(cpu_seconds)))
            resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
        sys.argv = ["w2slab", *args]
        try:
            app(args=args, prog_name="w2slab")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001  (the child reports every failure through its exit status)
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_one(req: dict, cap: int, private: list[int]) -> dict:
    tmp = tempfile.mkdtemp(prefix="w2slab-run-")
    out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    wall = req.get("wall_seconds")
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(list(req["args"]), req.get("cpu_seconds"), out, err, private)
    try:
        os.setpgid(pid, pid)  # as the child does: whichever runs first, the group exists before a kill
    except OSError:
        pass
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if wall is not None and time.monotonic() - start > wall:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(POLL_SECONDS)
    elapsed = time.monotonic() - start
    try:
        os.killpg(pid, signal.SIGKILL)  # what the run left running in the background
    except (ProcessLookupError, PermissionError):
        pass
    code = os.waitstatus_to_exitcode(status)
    reply = {"id": req.get("id"), "returncode": 128 - code if code < 0 else code, "timed_out": timed_out,
             "cpu_seconds_used": usage.ru_utime + usage.ru_stime, "wall_seconds": elapsed,
             "stdout": _tail(out, cap // 2), "stderr": _tail(err, cap // 2)}
    for path in (out, err):
        os.unlink(path)
    os.rmdir(tmp)
    return reply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", help="a kit whose rows and features to read before serving")
    ap.add_argument("--output-cap", type=int, default=100_000)
    ap.add_argument("--dumpable", action="store_true", help="leave this process dumpable (the red-team test's defence off)")
    a = ap.parse_args()
    if not a.dumpable:
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if a.kit:
        warm_kit(a.kit)
    replies = os.fdopen(os.dup(1), "w")
    quiet = os.open(os.devnull, os.O_WRONLY)  # nothing else may write into the reply stream
    os.dup2(quiet, 1)
    os.close(quiet)
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        replies.write(json.dumps(run_one(json.loads(line), a.output_cap, [replies.fileno()])) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
