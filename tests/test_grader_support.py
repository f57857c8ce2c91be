"""Helpers shared by the grader and dashboard tests: a real grader server subprocess on a
free loopback port, with its own SQLite file, plus tar.gz builders. (No tests here.)"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx

from w2slab.grader.process import GraderProcess

WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=glove-50,head=mlp,epochs=10"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "w2slab.grader.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=timeout)


class GraderServer:
    """``w2slab serve`` in its own process group (so SIGKILL reaches every worker)."""

    def __init__(self, testbed: Path, db: Path, *extra: str, workers: int = 1) -> None:
        self.testbed, self.db, self.extra, self.workers = testbed, db, extra, workers
        self.grader: GraderProcess | None = None
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
        self.grader = GraderProcess(f"toy={self.testbed}", self.db.parent, WEAK, STRONG, workers=workers or self.workers,
                                    port=port, db_url=self.db_url, log=self.log, extra=self.extra)
        self.proc, self.port = self.grader.proc, self.grader.port
        self.grader.wait_ready(timeout)
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown of anything."""
        assert self.grader is not None
        self.grader.kill()

    def stop(self) -> None:
        if self.grader is not None:
            self.grader.stop()

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
