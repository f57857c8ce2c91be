"""A typed HTTP client for the grader's API (what researchers use, outside their sandbox)."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx


class GraderError(RuntimeError):
    """The grader refused a request; ``status`` and the server's message are kept (every grader error
    body is ``{"detail": "<one line>"}``, 422 included: ``w2slab.grader.deps.ErrorOut``)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"grader said {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class GraderClient:
    def __init__(self, url: str, token: str, timeout: float = 60.0, retries: int = 3):
        self.url = url.rstrip("/")
        self.retries = retries
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                resp = self.http.request(method, path, **kwargs)
            except httpx.TransportError as e:  # server restarting: retry with backoff
                if attempt == self.retries:
                    raise GraderError(0, f"cannot reach the grader at {self.url}: {e}") from None
                time.sleep(0.5 * 2**attempt)
                continue
            if resp.status_code < 400:
                return resp.json() if resp.headers.get("content-type", "").startswith("application/json") else resp.content
            try:
                body = resp.json()
            except ValueError:
                body = None
            detail = body.get("detail", resp.text) if isinstance(body, dict) else resp.text
            if isinstance(detail, list):  # FastAPI's default validation body, from a server without our handler
                detail = "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in detail)
            retry = resp.headers.get("Retry-After")
            raise GraderError(resp.status_code, str(detail), float(retry) if retry else None)
        raise AssertionError("unreachable")

    # identity and testbeds
    def me(self) -> dict[str, Any]:
        return self._call("GET", "/api/me")

    def testbeds(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/testbeds")

    def seeds(self, testbed: str) -> list[int]:
        return list(self._call("GET", "/api/seeds", params={"testbed": testbed})["seeds"])

    # scoring
    def evaluate(self, testbed: str, predictions: list[float], seed: int | None = None) -> dict[str, Any]:
        """Dev-half feedback: ``{pgr, transfer_acc}`` rounded to 2 decimals (budgeted), through the
        grader's Ladder for ``seed`` (``improved``, ``ladder``, ``ladder_pgr``)."""
        body: dict[str, Any] = {"testbed": testbed, "predictions": predictions}
        if seed is not None:
            body["seed"] = seed
        return self._call("POST", "/api/evaluate", json=body)

    def submit(self, testbed: str, method_name: str, snapshot_sha256: str, predictions: dict[str, list[float]]) -> dict[str, Any]:
        body = {"testbed": testbed, "method_name": method_name, "snapshot_sha256": snapshot_sha256, "predictions": predictions}
        return self._call("POST", "/api/submit", json=body)

    def leaderboard(self, testbed: str) -> dict[str, Any]:
        return self._call("GET", "/api/leaderboard", params={"testbed": testbed})

    def pick_final(self, testbed: str, submission_id: int) -> dict[str, Any]:
        """Choose the submission scored once on the sealed holdout when the run ends."""
        return self._call("POST", "/api/final", json={"testbed": testbed, "submission_id": submission_id})

    def sealed(self, testbed: str, vs: int | None = None) -> dict[str, Any]:
        """Sealed-holdout scores, with paired differences against the sealed pick ``vs``."""
        return self._call("GET", "/api/sealed", params={"testbed": testbed, **({"vs": vs} if vs is not None else {})})

    def seal(self, testbed: str) -> dict[str, Any]:
        """(operator) Score every researcher's pick once on the sealed holdout."""
        return self._call("POST", "/api/admin/seal", json={"testbed": testbed})

    # code store
    def upload_snapshot(self, folder: str | Path, parent: str | None = None, note: str = "") -> dict[str, Any]:
        """Pack ``folder`` (regular files only) as tar.gz and upload it; returns its info incl. sha256."""
        params = {"note": note, **({"parent": parent} if parent else {})}
        return self._call("POST", "/api/snapshots", params=params, content=pack_folder(folder))

    def download_snapshot(self, sha: str, dest: str | Path) -> Path:
        data = self._call("GET", f"/api/snapshots/{sha}")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(dest, filter="data")
        return dest

    def snapshots(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/snapshots")

    # forum
    def post(self, kind: str, title: str, body: str, metrics: dict[str, Any] | None = None, **links: Any) -> dict[str, Any]:
        payload = {"kind": kind, "title": title, "body": body, "metrics": metrics, **links}
        return self._call("POST", "/api/posts", json={k: v for k, v in payload.items() if v is not None})

    def posts(self, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return self._call("GET", "/api/posts", params={"limit": limit, **({"kind": kind} if kind else {})})

    def get_post(self, post_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/posts/{post_id}")

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        return self._call("GET", "/api/posts/search", params={"q": query, "limit": limit})

    def comment(self, post_id: int, body: str) -> dict[str, Any]:
        return self._call("POST", f"/api/posts/{post_id}/comments", json={"body": body})

    def vote(self, post_id: int, value: int = 1) -> dict[str, Any]:
        return self._call("POST", f"/api/posts/{post_id}/vote", json={"value": value})

    def submissions(self, testbed: str | None = None, researcher: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"testbed": testbed, "researcher": researcher}.items() if v}
        return self._call("GET", "/api/submissions", params=params)

    # operator (admin token)
    def add_researcher(self, name: str) -> dict[str, Any]:
        """Admin: register a researcher; returns ``{id, name, token}`` (the token is shown once)."""
        return self._call("POST", "/api/admin/researchers", json={"name": name})

    def researchers(self) -> list[dict[str, Any]]:
        """Admin: every researcher with their evaluations, submissions and posts."""
        return self._call("GET", "/api/admin/researchers")

    def audit(self, researcher: str | None = None, kind: str | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
        """Admin: the audit log (evaluations and submissions), newest first."""
        params = {"limit": limit, **{k: v for k, v in {"researcher": researcher, "kind": kind}.items() if v}}
        return self._call("GET", "/api/admin/audit", params=params)


def pack_folder(folder: str | Path) -> bytes:
    """A deterministic tar.gz of the regular files under ``folder`` (relative paths)."""
    folder = Path(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(folder)
            if "__pycache__" in rel.parts:
                continue
            info = tar.gettarinfo(str(path), arcname=str(rel))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()
