"""The forum: posts (findings, hypotheses, questions...), comments, votes and full-text search."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from w2slab.grader import forum
from w2slab.grader.deps import CurrentResearcher, Db, DbId, Offset, State

router = APIRouter(tags=["forum"])


@router.post("/posts", status_code=201)
def create_post(body: forum.PostIn, state: State, who: CurrentResearcher) -> dict[str, Any]:
    post = forum.create_post(state.engine, who.id or 0, body, state.settings.post_per_hour)
    return forum.post_dict(post, who.name)


@router.get("/posts")
def list_posts(engine: Db, kind: forum.ListKind | None = None, limit: int = Query(50, ge=1, le=500),
               offset: Offset = 0) -> list[dict[str, Any]]:
    return forum.list_posts(engine, kind, limit, offset)


@router.get("/posts/search")  # before /posts/{post_id}, which would match it
def search_posts(engine: Db, q: str = Query(min_length=1, max_length=500),
                 limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    return forum.search_posts(engine, q, limit)


@router.get("/posts/{post_id}")
def get_post(post_id: DbId, engine: Db) -> dict[str, Any]:
    return forum.get_post(engine, post_id)


@router.post("/posts/{post_id}/comments", status_code=201)
def comment(post_id: DbId, body: forum.CommentIn, state: State, who: CurrentResearcher) -> dict[str, Any]:
    c = forum.add_comment(state.engine, post_id, who.id or 0, body, state.settings.comment_per_hour)
    return {"id": c.id, "post_id": post_id, "author": who.name, "body": c.body, "created_at": c.created_at}


@router.post("/posts/{post_id}/vote")
def vote(post_id: DbId, state: State, who: CurrentResearcher, body: forum.VoteIn | None = None) -> dict[str, Any]:
    score = forum.vote(state.engine, post_id, who.id or 0, body or forum.VoteIn(), state.settings.vote_per_hour)
    return {"post_id": post_id, "score": score}
