"""The code store: researchers upload their code as tar.gz snapshots (checked, content-addressed,
with a lineage), and anyone with a token lists and downloads them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from w2slab.grader.auth import Principal
from w2slab.grader.codestore import SHA_RE, ArchiveError, check_archive
from w2slab.grader.db import Researcher, Snapshot, write_session
from w2slab.grader.deps import SHA256_PATTERN, CurrentResearcher, Db, Sha256, State
from w2slab.grader.queries import snapshot_dict, snapshot_or_404, snapshots
from w2slab.grader.state import GraderState

router = APIRouter(tags=["snapshots"])


@router.post("/snapshots", responses={201: {"description": "stored (a new snapshot)"}}, openapi_extra={"requestBody": {
    "required": True, "description": "a tar.gz archive (any content type)",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_snapshot(request: Request, response: Response, state: State, who: CurrentResearcher,
                          parent: str | None = Query(None, pattern=SHA256_PATTERN),
                          note: str = Query("", max_length=500)) -> dict[str, Any]:
    cap = state.settings.max_archive_bytes
    if int(request.headers.get("content-length") or 0) > cap:
        raise ArchiveError(f"archive is {request.headers['content-length']} bytes; the limit is {cap} bytes compressed", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ArchiveError(f"archive is larger than the limit of {cap} bytes compressed", 413)
        chunks.append(chunk)
    if len(note) > 500:
        raise ArchiveError("note: at most 500 characters")
    if parent is not None and not SHA_RE.match(parent):
        raise ArchiveError("parent must be a sha256 (64 lowercase hex characters)")
    data = b"".join(chunks)
    s = state.settings
    info = await run_in_threadpool(check_archive, data, cap, s.max_unpacked_bytes, s.max_archive_members)
    rec, created = await run_in_threadpool(store_snapshot, state, who, info, data, parent, note)
    response.status_code = 201 if created else 200
    return {**rec, "created": created}


@router.get("/snapshots")
def list_snapshots(engine: Db, limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
    return snapshots(engine, limit)


@router.get("/snapshots/{sha}", response_class=FileResponse,
            responses={200: {"content": {"application/gzip": {}}, "description": "the snapshot as tar.gz"}})
def download_snapshot(sha: Sha256, state: State) -> FileResponse:
    snapshot_or_404(state, sha)
    return FileResponse(state.store.path(sha), media_type="application/gzip", filename=f"{sha}.tar.gz")


@router.get("/snapshots/{sha}/info")
def snapshot_info(sha: Sha256, state: State) -> dict[str, Any]:
    return snapshot_or_404(state, sha)


def store_snapshot(state: GraderState, who: Principal, info: Any, data: bytes, parent: str | None,
                   note: str) -> tuple[dict[str, Any], bool]:
    """Store an archive checked by :func:`check_archive` (the file first: a committed row always has
    its file); an archive already stored is returned as it is, with ``False``."""
    with write_session(state.engine) as s:
        if parent and s.get(Snapshot, parent) is None:
            raise ArchiveError(f"parent snapshot {parent} is not in the code store")
        existing = s.get(Snapshot, info.sha256)
        if existing is not None:
            return snapshot_dict(existing, s.get(Researcher, existing.uploader_id).name), False  # type: ignore[union-attr]
        state.store.put(info.sha256, data)
        snap = Snapshot(sha256=info.sha256, uploader_id=who.id or 0, parent_sha256=parent, size=info.size,
                        unpacked_size=info.unpacked_size, n_files=info.n_files, note=note)
        s.add(snap)
        s.commit()
    return snapshot_dict(snap, who.name), True
