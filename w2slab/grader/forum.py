"""The research forum: typed posts with markdown bodies, comments, one vote per researcher
per post, and full-text search (SQLite FTS5, or PostgreSQL ``tsvector``)."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, func, text
from sqlmodel import col, select

from w2slab.grader.db import Comment, Post, Researcher, Snapshot, Submission, Vote, dumps, now, read_session, write_session
from w2slab.grader.deps import BodyId

PostKind = Literal["result", "hypothesis", "insight", "negative_result", "question"]
AUDIT_KIND = "audit"  # threads of the system account about submission audits (w2slab.integrity.audit)
ListKind = Literal["result", "hypothesis", "insight", "negative_result", "question", "audit"]


class ForumError(ValueError):
    def __init__(self, message: str, status: int = 422, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def check_rate(s: Any, table: Any, who_column: Any, who: int, per_hour: int | None, what: str) -> None:
    """429 (with the seconds to wait) when ``who`` made ``per_hour`` rows of ``table`` in the last
    hour. Call inside the write session that adds the row, so concurrent requests queue."""
    if per_hour is None:
        return
    t = now()
    n, oldest = s.exec(select(func.count(), func.min(table.created_at)).where(who_column == who, table.created_at > t - 3600)).one()
    if n >= per_hour:
        wait = max(1, math.ceil(oldest + 3600 - t))
        raise ForumError(f"rate limit: at most {per_hour} {what} per hour; retry in {wait} s", 429, wait)


class PostIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: PostKind
    title: str = Field(min_length=1, max_length=300)
    body: str = Field(default="", max_length=100_000, description="markdown")
    metrics: dict[str, Any] | None = None
    submission_ids: list[BodyId] = Field(default_factory=list, max_length=50)
    snapshot_shas: list[str] = Field(default_factory=list, max_length=50)


class CommentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: str = Field(min_length=1, max_length=20_000)


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Literal[1, -1] = 1


def post_dict(p: Any, author: str, body: bool = True) -> dict[str, Any]:
    """A post (an ORM ``Post`` or a row with its columns) as the API returns it."""
    out = {
        "id": p.id, "kind": p.kind, "title": p.title, "author": author, "created_at": p.created_at,
        "score": p.score, "n_comments": p.n_comments, "metrics": json.loads(p.metrics) if p.metrics else None,
        "submission_ids": json.loads(p.submission_ids), "snapshot_shas": json.loads(p.snapshot_shas),
    }
    if body:
        out["body"] = p.body
    return out


def create_post(engine: Engine, author_id: int, data: PostIn, per_hour: int | None = None) -> Post:
    metrics = None
    if data.metrics is not None:
        try:
            metrics = dumps(data.metrics)
        except ValueError:
            raise ForumError("metrics: NaN and infinity are not valid JSON values") from None
        if len(metrics) > 10_000:
            raise ForumError("metrics: at most 10000 characters of JSON")
    with write_session(engine) as s:
        check_rate(s, Post, Post.author_id, author_id, per_hour, "posts")
        for sid in data.submission_ids:
            if s.get(Submission, sid) is None:
                raise ForumError(f"submission_ids: no submission {sid}")
        for sha in data.snapshot_shas:
            if s.get(Snapshot, sha) is None:
                raise ForumError(f"snapshot_shas: snapshot {sha!r} is not in the code store")
        post = Post(author_id=author_id, kind=data.kind, title=data.title, body=data.body, metrics=metrics,
                    submission_ids=dumps(data.submission_ids), snapshot_shas=dumps(data.snapshot_shas))
        s.add(post)
        s.commit()
        s.refresh(post)
    return post


def list_posts(engine: Engine, kind: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """Posts, newest first; audit threads only when asked for (``kind="audit"``)."""
    with read_session(engine) as s:
        q = select(Post, Researcher.name).join(Researcher, col(Post.author_id) == col(Researcher.id))
        if kind:
            q = q.where(Post.kind == kind)
        else:
            q = q.where(Post.kind != AUDIT_KIND)
        rows = s.exec(q.order_by(col(Post.created_at).desc(), col(Post.id).desc()).offset(offset).limit(limit)).all()
    return [post_dict(p, name, body=False) for p, name in rows]


def get_post(engine: Engine, post_id: int) -> dict[str, Any]:
    with read_session(engine) as s:
        row = s.exec(select(Post, Researcher.name).join(Researcher, col(Post.author_id) == col(Researcher.id))
                     .where(Post.id == post_id)).first()
        if row is None:
            raise ForumError(f"no post {post_id}", 404)
        comments = s.exec(select(Comment, Researcher.name).join(Researcher, col(Comment.author_id) == col(Researcher.id))
                          .where(Comment.post_id == post_id).order_by(col(Comment.id))).all()
    out = post_dict(*row)
    out["comments"] = [{"id": c.id, "author": n, "body": c.body, "created_at": c.created_at} for c, n in comments]
    return out


def fts_query(q: str) -> str:
    """User text to a safe FTS5 query: every word must match; the last may be a prefix."""
    terms = [f'"{w}"' for w in re.findall(r"\w+", q)]
    return " ".join(terms[:-1] + [terms[-1] + "*"]) if terms else ""


def search_posts(engine: Engine, q: str, limit: int = 50, include_audit: bool = False) -> list[dict[str, Any]]:
    """Posts matching ``q`` (title and body), best first (audit threads only with ``include_audit``)."""
    if not re.search(r"\w", q):
        return []
    with read_session(engine) as s:
        if engine.dialect.name == "sqlite":
            ids = s.exec(text("SELECT rowid FROM post_fts WHERE post_fts MATCH :q ORDER BY bm25(post_fts, 5.0, 1.0) LIMIT :n"),
                         params={"q": fts_query(q), "n": limit}).all()
        else:
            ids = s.exec(text("SELECT id FROM post WHERE search @@ websearch_to_tsquery('english', :q) ORDER BY "
                              "ts_rank(search, websearch_to_tsquery('english', :q)) DESC LIMIT :n"),
                         params={"q": q, "n": limit}).all()
        order = [i for (i,) in ids]
        if not order:
            return []
        listed = (Post.id, Post.kind, Post.title, Post.created_at, Post.score, Post.n_comments, Post.metrics,
                  Post.submission_ids, Post.snapshot_shas)  # plain rows, no ORM objects and no bodies: search is hot
        rows = s.exec(select(*listed, Researcher.name).join(Researcher, col(Post.author_id) == col(Researcher.id))
                      .where(col(Post.id).in_(order))).all()
    by_id = {p.id: post_dict(p, p.name, body=False) for p in rows if include_audit or p.kind != AUDIT_KIND}
    return [by_id[i] for i in order if i in by_id]


def add_comment(engine: Engine, post_id: int, author_id: int, data: CommentIn, per_hour: int | None = None) -> Comment:
    with write_session(engine) as s:
        post = s.get(Post, post_id, with_for_update=True)
        if post is None:
            raise ForumError(f"no post {post_id}", 404)
        check_rate(s, Comment, Comment.author_id, author_id, per_hour, "comments")
        c = Comment(post_id=post_id, author_id=author_id, body=data.body)
        s.add(c)
        post.n_comments += 1
        s.add(post)
        s.commit()
        s.refresh(c)
    return c


def vote(engine: Engine, post_id: int, researcher_id: int, data: VoteIn, per_hour: int | None = None) -> int:
    """Cast or change this researcher's one vote on a post; returns the post's new score. A vote's
    ``created_at`` is when it was last cast: the rate limit counts votes cast or changed."""
    with write_session(engine) as s:
        post = s.get(Post, post_id, with_for_update=True)
        if post is None:
            raise ForumError(f"no post {post_id}", 404)
        if post.author_id == researcher_id:
            raise ForumError("you cannot vote on your own post", 403)
        check_rate(s, Vote, Vote.researcher_id, researcher_id, per_hour, "votes")
        v = s.exec(select(Vote).where(Vote.post_id == post_id, Vote.researcher_id == researcher_id)).first()
        if v is None:
            s.add(Vote(post_id=post_id, researcher_id=researcher_id, value=data.value))
        else:
            v.value, v.created_at = data.value, now()
            s.add(v)
        s.flush()
        post.score = int(s.exec(select(func.coalesce(func.sum(Vote.value), 0)).where(Vote.post_id == post_id)).one())
        s.add(post)
        s.commit()
        return post.score
