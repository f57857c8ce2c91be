"""Identity: researcher tokens (stored as sha256), the operator's admin token, and the
ASGI middleware that authenticates every ``/api`` request before anything else runs."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from anyio import to_thread
from fastapi import HTTPException, Request
from sqlalchemy import Engine
from sqlmodel import select

from w2slab import paths
from w2slab.grader.db import Researcher, read_session, write_session

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
RESERVED_NAMES = {"admin", "infinity", "inf", "nan", "null", "none", "true", "false", "undefined"}  # read as values elsewhere


@dataclass(frozen=True)
class Principal:
    """Who is calling: a researcher (id set) or the operator (admin)."""

    id: int | None
    name: str
    admin: bool = False


def new_token(prefix: str = "w2s") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def admin_token_file() -> Path:
    return paths.home() / "grader" / "admin_token"


def secret_file(path: Path, prefix: str) -> str:
    """The secret in ``path``, created (mode 0600, never overwritten) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            if value := path.read_text().strip():
                return value
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty: delete it to make a new secret") from None
    with os.fdopen(fd, "w") as f:
        f.write(new_token(prefix) + "\n")
    return path.read_text().strip()


def load_admin_token() -> str:
    """``W2SLAB_ADMIN_TOKEN``, else the 0600 file under W2SLAB_HOME (created on first use)."""
    env = os.environ.get("W2SLAB_ADMIN_TOKEN", "").strip()
    return env or secret_file(admin_token_file(), "adm")


def load_server_secret() -> bytes:
    """The secret that picks each testbed's submission seeds (0600 file under W2SLAB_HOME)."""
    return secret_file(paths.home() / "grader" / "server_secret", "sec").encode()


def check_name(name: str) -> None:
    """A researcher name is 1-64 letters, digits, '_' or '-', starting with a letter, and not a word
    that reads as a value (``Infinity``, ``null``, ``true``...) or the operator (``admin``)."""
    if not NAME_RE.match(name):
        raise ValueError(f"bad researcher name {name[:80]!r}: use 1-64 letters, digits, '_' or '-', starting with a letter")
    if name.lower() in RESERVED_NAMES:
        raise ValueError(f"bad researcher name {name!r}: it reads as a value or the operator; choose another")


def create_researcher(engine: Engine, name: str) -> tuple[Researcher, str]:
    """A new researcher and their token (shown once; only its hash is kept)."""
    check_name(name)
    token = new_token()
    with write_session(engine) as s:
        if s.exec(select(Researcher).where(Researcher.name == name)).first():
            raise ValueError(f"researcher '{name}' already exists")
        r = Researcher(name=name, token_hash=hash_token(token))
        s.add(r)
        s.commit()
        s.refresh(r)
    return r, token


class Authenticator:
    """Maps bearer tokens to principals; researcher lookups are cached per process."""

    def __init__(self, engine: Engine, admin_token: str) -> None:
        self.engine = engine
        self.admin_hash = hash_token(admin_token)
        self._cache: dict[str, Principal] = {}

    def lookup(self, token: str) -> Principal | None:
        h = hash_token(token)
        if hmac.compare_digest(h, self.admin_hash):
            return Principal(None, "admin", admin=True)
        hit = self._cache.get(h)
        if hit is not None:
            return hit
        with read_session(self.engine) as s:
            r = s.exec(select(Researcher).where(Researcher.token_hash == h)).first()
        if r is None:
            return None
        self._cache[h] = Principal(r.id, r.name)
        return self._cache[h]

    def cached(self, token: str) -> Principal | None:
        h = hash_token(token)
        if hmac.compare_digest(h, self.admin_hash):
            return Principal(None, "admin", admin=True)
        return self._cache.get(h)


class AuthMiddleware:
    """Pure ASGI middleware: every ``/api/`` request needs ``Authorization: Bearer <token>``;
    the principal lands in ``request.state.principal``. 401 otherwise, before the body is read."""

    def __init__(self, app: Any, get_auth: Callable[[], Authenticator]) -> None:
        self.app = app
        self.get_auth = get_auth

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        principal = None
        if scheme.lower() == "bearer" and token.strip():
            auth = self.get_auth()
            token = token.strip()
            principal = auth.cached(token) or await to_thread.run_sync(auth.lookup, token)
        if principal is None:
            why = "invalid token" if header else "missing 'Authorization: Bearer <token>' header"
            body = json.dumps({"detail": f"not authenticated: {why}"}).encode()
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def principal(request: Request) -> Principal:
    return request.state.principal


def researcher(request: Request) -> Principal:
    p: Principal = request.state.principal
    if p.admin:
        raise HTTPException(403, "this action needs a researcher token, not the admin token")
    return p


def admin(request: Request) -> Principal:
    p: Principal = request.state.principal
    if not p.admin:
        raise HTTPException(403, "this action needs the admin token")
    return p
