"""Helpers shared by the grader and dashboard tests: a real grader server subprocess on a
free loopback port, with its own SQLite file, plus tar.gz builders. (No tests here.)"""

from __future__ import annotations

import gzip
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx

WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=glove-50,head=mlp,epochs=10"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "w2slab.grader.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=timeout)


class GraderServer:
    """``w2slab serve`` in its own process group (so SIGKILL reaches every worker)."""

    def __init__(self, testbed: Path, db: Path, *extra: str, workers: int = 1) -> None:
        self.testbed, self.db, self.extra, self.workers = testbed, db, extra, workers
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = db.with_suffix(".log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db}"

    def start(self, timeout: float = 180, workers: int | None = None, port: int | None = None) -> "GraderServer":
        self.port = port or free_port()
        cmd = [sys.executable, "-m", "w2slab.grader.cli", "serve", "-t", f"toy={self.testbed}", "--weak", WEAK,
               "--strong", STRONG, "--baseline-workers", "1", "--port", str(self.port), "--db", self.db_url,
               "--workers", str(workers or self.workers), *self.extra]
        log = open(self.log, "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"grader exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"grader did not start in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown of anything."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def admin_token(self) -> str:
        return (Path(os.environ["W2SLAB_HOME"]) / "grader" / "admin_token").read_text().strip()

    def client(self, token: str | None = None, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def add_researcher(self, name: str) -> httpx.Client:
        with self.client(self.admin_token()) as admin:
            r = admin.post("/api/admin/researchers", json={"name": name})
            assert r.status_code == 201, r.text
        return self.client(r.json()["token"])


def targz(members: list[tuple[str, bytes]] | None = None, tweak=None) -> bytes:
    """A tar.gz with regular files; ``tweak(tar)`` may add odd members. Deterministic bytes
    (gzip mtime 0), so parametrized test ids are the same in every pytest-xdist worker."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members or []:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if tweak:
            tweak(tar)
    return gzip.compress(raw.getvalue(), mtime=0)


def odd_member(name: str, kind: bytes, linkname: str = "") -> "callable":
    def tweak(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)

    return tweak
