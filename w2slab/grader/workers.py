"""``w2slab serve --workers N``: N uvicorn worker processes, each with its own listening socket on
the same port (``SO_REUSEPORT``), so the kernel spreads connections evenly over the workers.

With one shared socket (uvicorn's own ``--workers``), the first worker to wake accepts every
pending connection, and clients that keep their connection alive (httpx, the researchers' tools)
all stay on it: with 50 clients, one worker served 48 connections and the other 2.

The supervisor restarts a worker that dies (on its own socket), stops them all on SIGTERM or
SIGINT (uvicorn's graceful stop, SIGKILL after ``grace`` seconds), and gives up when a worker fails
at start-up. Workers exit with the supervisor (``die_with_parent`` in their app factory).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
from multiprocessing.context import SpawnProcess
from typing import Any

import uvicorn

log = logging.getLogger("w2slab.grader")
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not start


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket that shares ``host:port`` with the other workers'."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    return sock


def balanced_available() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def _worker(app: str, options: dict[str, Any], sock: socket.socket) -> None:
    config = uvicorn.Config(app, factory=True, **options)
    config.configure_logging()
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def run_workers(app: str, host: str, port: int, workers: int, options: dict[str, Any], grace: float = 15.0) -> int:
    """Serve the app factory ``app`` ("module:function") with ``workers`` processes until SIGTERM
    or SIGINT; the exit status (1 when a worker failed to start)."""
    ctx = multiprocessing.get_context("spawn")
    sockets = [reuseport_socket(host, port) for _ in range(workers)]
    stop = threading.Event()
    failed = False

    def start(sock: socket.socket) -> SpawnProcess:
        p = ctx.Process(target=_worker, args=(app, options, sock), name="w2slab-grader-worker")
        p.start()
        return p

    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs = [start(s) for s in sockets]
    try:
        while not stop.wait(0.5):
            for i, p in enumerate(procs):
                if p.is_alive():
                    continue
                if p.exitcode == STARTUP_FAILURE:
                    log.error("a grader worker failed to start; stopping")
                    failed = True
                    stop.set()
                    break
                log.warning("grader worker %s exited with status %s; starting another", p.pid, p.exitcode)
                procs[i] = start(sockets[i])
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: uvicorn's graceful stop
        for p in procs:
            p.join(grace)
            if p.is_alive():
                p.kill()
                p.join(5)
        for s in sockets:
            s.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0
