"""Automated research runs on the grader: the launcher (``w2slab research``) pushes its
status.json (accounting per researcher and in total, sandboxed or not) and every line of each
researcher's transcript.jsonl through the admin API; the dashboard shows them (``/research``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from sqlalchemy import Engine, func
from sqlmodel import col, select

from w2slab.grader.db import (
    ResearchRun,
    TranscriptLine,
    dumps,
    now,
    read_session,
    write_session,
)

MAX_BATCH_BYTES = 2 * 2**20  # one POST (a status or a batch of transcript lines)
MAX_LINES = 5000  # transcript lines per batch
NAME_MAX = 64
RUN_MAX = 100


class ResearchError(Exception):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def parse_body(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_BATCH_BYTES:
        raise ResearchError(f"{what} is {len(raw)} bytes; the limit is {MAX_BATCH_BYTES} bytes per request "
                            "(send transcript lines in smaller batches)", 413)
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise ResearchError(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ResearchError(f"{what} must be a JSON object")
    return body


def _run_id(body: dict[str, Any]) -> str:
    run_id = body.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > RUN_MAX:
        raise ResearchError(f"run_id: a non-empty string of at most {RUN_MAX} characters")
    return run_id


def store_status(engine: Engine, body: dict[str, Any]) -> dict[str, Any]:
    """Upsert a run's status.json (must hold ``run_id`` and boolean ``sandboxed``)."""
    run_id = _run_id(body)
    if not isinstance(body.get("sandboxed"), bool):
        raise ResearchError("sandboxed: true or false (false: the run used --unsafe-no-sandbox)")
    if not isinstance(body.get("researchers", []), list) or not isinstance(body.get("total", {}), dict):
        raise ResearchError("researchers must be a list and total an object")
    text = dumps(body)
    with write_session(engine) as s:
        run = s.get(ResearchRun, run_id)
        if run is None:
            run = ResearchRun(run_id=run_id)
        run.sandboxed = body["sandboxed"]
        run.state = str(body.get("state") or "")[:32]
        run.testbed = str(body.get("testbed") or "")[:200]
        run.status = text
        run.updated_at = now()
        s.add(run)
        s.commit()
    return {"run_id": run_id, "sandboxed": body["sandboxed"], "stored": True}


def store_transcript(engine: Engine, body: dict[str, Any]) -> dict[str, Any]:
    """Append a batch: ``{run_id, researcher, start_seq, lines: [JSON text or object, ...]}``.
    Line ``i`` gets sequence number ``start_seq + i``; lines already stored are skipped (a
    retried batch is harmless); a gap before ``start_seq`` is refused (409, with next_seq)."""
    run_id = _run_id(body)
    name = body.get("researcher")
    if not isinstance(name, str) or not name or len(name) > NAME_MAX:
        raise ResearchError(f"researcher: a non-empty string of at most {NAME_MAX} characters")
    start = body.get("start_seq", 0)
    lines = body.get("lines")
    if not isinstance(start, int) or start < 0:
        raise ResearchError("start_seq: a non-negative integer")
    if not isinstance(lines, list):
        raise ResearchError("lines: a list of transcript lines (JSON text or objects)")
    if len(lines) > MAX_LINES:
        raise ResearchError(f"at most {MAX_LINES} lines per batch, got {len(lines)}", 413)
    rows: list[tuple[str, str, float | None]] = []
    for i, line in enumerate(lines):
        obj = line
        if isinstance(line, str):
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"type": "unparsed", "text": line}
                line = json.dumps(obj)
        else:
            line = json.dumps(line)
        if not isinstance(obj, dict):
            raise ResearchError(f"lines[{i}]: a JSON object")
        ts = obj.get("ts")
        rows.append((line, str(obj.get("type") or "")[:32], float(ts) if isinstance(ts, (int, float)) else None))
    with write_session(engine) as s:
        have = s.exec(select(func.count()).where(TranscriptLine.run_id == run_id, TranscriptLine.researcher == name)).one()
        if start > have:
            raise ResearchError(f"start_seq {start} leaves a gap: {have} lines are stored (next_seq {have})", 409)
        added = 0
        for i, (line, kind, ts) in enumerate(rows):
            seq = start + i
            if seq < have:
                continue
            s.add(TranscriptLine(run_id=run_id, researcher=name, seq=seq, kind=kind, ts=ts, line=line))
            added += 1
        s.commit()
    return {"run_id": run_id, "researcher": name, "stored": added, "next_seq": max(have, start + len(rows))}


def list_runs(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first, each with its status.json and the number of transcript lines per researcher."""
    with read_session(engine) as s:
        runs = s.exec(select(ResearchRun).order_by(col(ResearchRun.updated_at).desc()).limit(limit)).all()
        counts = s.exec(select(TranscriptLine.run_id, TranscriptLine.researcher, func.count())
                        .group_by(TranscriptLine.run_id, TranscriptLine.researcher)).all()
    n: dict[str, dict[str, int]] = {}
    for run_id, name, c in counts:
        n.setdefault(run_id, {})[name] = c
    return [run_dict(r, n.get(r.run_id, {})) for r in runs]


def run_dict(run: ResearchRun, lines: dict[str, int] | None = None) -> dict[str, Any]:
    return {"run_id": run.run_id, "sandboxed": run.sandboxed, "state": run.state, "testbed": run.testbed,
            "created_at": run.created_at, "updated_at": run.updated_at, "status": json.loads(run.status),
            "transcript_lines": lines or {}}


def transcript(engine: Engine, run_id: str, researcher: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """Lines ``offset`` .. ``offset + limit`` (oldest first) and the total count."""
    with read_session(engine) as s:
        if s.get(ResearchRun, run_id) is None and not s.exec(select(TranscriptLine.id).where(
                TranscriptLine.run_id == run_id).limit(1)).first():
            raise HTTPException(404, f"no research run '{run_id}'")
        total = s.exec(select(func.count()).where(TranscriptLine.run_id == run_id, TranscriptLine.researcher == researcher)).one()
        rows = s.exec(select(TranscriptLine).where(TranscriptLine.run_id == run_id, TranscriptLine.researcher == researcher)
                      .order_by(col(TranscriptLine.seq)).offset(offset).limit(limit)).all()
    return {"run_id": run_id, "researcher": researcher, "total": total, "offset": offset,
            "lines": [{"seq": r.seq, "kind": r.kind, "ts": r.ts, "entry": json.loads(r.line)} for r in rows]}
