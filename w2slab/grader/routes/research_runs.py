"""Automated research runs: the ``w2slab research`` launcher pushes its status and the researchers'
transcripts here (size-capped bodies); the operator reads them back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from w2slab.grader import research
from w2slab.grader.deps import CurrentAdmin, Db, Offset

router = APIRouter(prefix="/admin/research", tags=["research runs"])


def _json_body(description: str) -> dict[str, Any]:
    """The published request body of a route that reads its JSON by hand (size-capped first)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": {"type": "object"}}}}}


async def _capped_body(request: Request, what: str) -> dict[str, Any]:
    cap = research.MAX_BATCH_BYTES
    if int(request.headers.get("content-length") or 0) > cap:
        raise research.ResearchError(f"{what} is {request.headers['content-length']} bytes; the limit is {cap} bytes "
                                     "per request (send transcript lines in smaller batches)", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise research.ResearchError(f"{what} is larger than the limit of {cap} bytes per request "
                                         "(send transcript lines in smaller batches)", 413)
        chunks.append(chunk)
    return research.parse_body(b"".join(chunks), what)


@router.post("/status", openapi_extra=_json_body("status.json of a research run: run_id, sandboxed, accounting"))
async def post_research_status(request: Request, engine: Db, _: CurrentAdmin) -> dict[str, Any]:
    """The launcher's status.json (with ``run_id`` and ``sandboxed``): replaces the run's last one."""
    body = await _capped_body(request, "the status")
    return await run_in_threadpool(research.store_status, engine, body)


@router.post("/transcript", openapi_extra=_json_body("{run_id, researcher, start_seq, lines}: transcript lines"))
async def post_research_transcript(request: Request, engine: Db, _: CurrentAdmin) -> dict[str, Any]:
    """A batch of transcript lines of one researcher: ``{run_id, researcher, start_seq, lines}``, appended."""
    body = await _capped_body(request, "the transcript batch")
    return await run_in_threadpool(research.store_transcript, engine, body)


@router.get("/runs")
def get_research_runs(engine: Db, _: CurrentAdmin, limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    return research.list_runs(engine, limit)


@router.get("/transcript")
def get_research_transcript(engine: Db, _: CurrentAdmin, run_id: str, researcher: str, offset: Offset = 0,
                            limit: int = Query(100, ge=1, le=5000)) -> dict[str, Any]:
    return research.transcript(engine, run_id, researcher, offset, limit)
