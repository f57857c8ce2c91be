"""Mirror a research run on the grader (admin API): status.json and the transcripts' new lines.

Used by the launcher; the grader stores them for the dashboard's research pages."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from w2slab.researchers.contract import json_default


class ResearchPusher:
    """Mirrors a research run on the grader (admin API): status.json (throttled to one push
    every ``interval`` seconds unless forced) and each researcher's transcript lines, sent
    incrementally from a byte offset per researcher (only whole lines; batches under
    ``max_batch_bytes``). Failures never raise: the first one is reported through ``warn``,
    and pushes pause for ``backoff`` seconds; unsent lines are sent by a later push."""

    def __init__(self, grader_url: str, admin_token: str, run_id: str, interval: float = 3.0,
                 warn: Callable[[str], None] | None = None, timeout: float = 5.0, backoff: float = 15.0,
                 max_batch_bytes: int = 1 << 20) -> None:
        self.url = grader_url.rstrip("/")
        self.token = admin_token
        self.run_id = run_id
        self.interval, self.timeout, self.backoff, self.max_batch_bytes = interval, timeout, backoff, max_batch_bytes
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr))
        self.offsets: dict[str, int] = {}  # researcher -> byte offset in its transcript.jsonl
        self.seqs: dict[str, int] = {}  # researcher -> next sequence number on the grader
        self.last_push = 0.0
        self.paused_until = 0.0
        self.warned = False
        self.failures = 0
        self._client: Any = None

    def begin(self, name: str, transcript: Path, from_start: bool = False) -> None:
        """Track ``name``'s transcript from its current end (lines of earlier sessions are not
        this run's), or from the start."""
        if name not in self.offsets:
            p = Path(transcript)
            self.offsets[name] = 0 if from_start or not p.is_file() else p.stat().st_size
            self.seqs[name] = 0

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=self.timeout,
                                        headers={"Authorization": f"Bearer {self.token}"})
        r = self._client.post(path, content=json.dumps(body, default=json_default).encode(),
                              headers={"Content-Type": "application/json"})
        if r.status_code >= 400:
            raise RuntimeError(f"{path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def _fail(self, e: BaseException) -> None:
        self.failures += 1
        self.paused_until = time.monotonic() + self.backoff
        if not self.warned:
            self.warned = True
            self.warn(f"warning: could not push the research run to the grader ({type(e).__name__}: {e}); "
                      "the run goes on, pushes are retried (this warning is shown once)")

    def _new_lines(self, name: str, transcript: Path) -> tuple[list[str], int]:
        """Whole lines after the offset, up to about ``max_batch_bytes``; and the new offset."""
        start = self.offsets.get(name, 0)
        try:
            with open(transcript, "rb") as f:
                f.seek(start)
                data = f.read(self.max_batch_bytes)
        except OSError:
            return [], start
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) < self.max_batch_bytes:
                return [], start  # a line still being written
            with open(transcript, "rb") as f:  # one line longer than a batch: send its head
                f.seek(start)
                whole = f.readline()
            stub = json.dumps({"type": "event", "event": "line_truncated", "bytes": len(whole),
                               "head": whole[: self.max_batch_bytes // 2].decode("utf-8", "replace")})
            return [stub], start + len(whole)
        chunk = data[: end + 1]
        lines = [ln.decode("utf-8", "replace") for ln in chunk.split(b"\n")[:-1]]
        return [ln for ln in lines if ln.strip()] or [], start + len(chunk)

    def push_transcripts(self, transcripts: dict[str, Path]) -> int:
        """Send the new lines of each researcher's transcript; returns lines sent."""
        sent = 0
        for name, path in transcripts.items():
            self.begin(name, path, from_start=True)
            for _ in range(100):  # bounded: at most ~100 batches per call
                lines, new_offset = self._new_lines(name, path)
                if new_offset == self.offsets[name]:
                    break
                if lines:
                    answer = self._post("/api/admin/research/transcript", {
                        "run_id": self.run_id, "researcher": name, "start_seq": self.seqs[name], "lines": lines})
                    self.seqs[name] = int(answer.get("next_seq", self.seqs[name] + len(lines)))
                    sent += len(lines)
                self.offsets[name] = new_offset
        return sent

    def push(self, status: dict[str, Any], transcripts: dict[str, Path], force: bool = False) -> bool:
        """Push the status and new transcript lines (at most every ``interval`` s unless
        ``force``); never raises. True when something was pushed successfully."""
        t = time.monotonic()
        if not force and (t - self.last_push < self.interval or t < self.paused_until):
            return False
        self.last_push = t
        try:
            self.push_transcripts(transcripts)
            self._post("/api/admin/research/status", {**status, "run_id": self.run_id})
            return True
        except Exception as e:  # noqa: BLE001 - the grader may be down or busy: the run goes on
            self._fail(e)
            return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
