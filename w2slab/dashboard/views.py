"""The read-only dashboard: server-rendered Jinja2 pages, progressively enhanced by a tiny
vendored htmx subset (``static/htmx-lite.js``); every page also works without JavaScript.

Access: open to requests from loopback (127.0.0.1 / ::1) unless the grader runs with
``dashboard_open_on_loopback=False``; anyone else logs in at ``/login`` with the admin token,
which sets an HttpOnly cookie holding a hash derived from that token (never the token).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup
from sqlalchemy import func
from sqlmodel import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from w2slab.grader.db import Post, read_session
from w2slab.grader.deps import DbId

HERE = Path(__file__).parent
COOKIE = "w2slab_dashboard"
templates = Jinja2Templates(directory=str(HERE / "templates"))
_md = MarkdownIt("commonmark", {"html": False, "linkify": False})


def _fmt(x: Any, digits: int = 3) -> str:
    """A number to ``digits`` decimals; anything else (None, a missing field) as n/a."""
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "n/a"


def _ts(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


templates.env.filters.update(fmt=_fmt, ts=_ts, md=lambda text: Markup(_md.render(text or "")))


class LoginRequired(Exception):
    pass


def _state(request: Request) -> Any:
    return request.app.state.grader


def is_loopback(request: Request) -> bool:
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def is_operator(request: Request) -> bool:
    """Logged in with the admin token (the cookie). Only then does a page show the operator's
    exact numbers and audit details; the open loopback view shows what the API shows a researcher."""
    return hmac.compare_digest(request.cookies.get(COOKIE, ""), _state(request).dashboard_key)


def operator(request: Request) -> None:
    """Pages with what only the operator may see through the API (flags with their evidence,
    research runs and transcripts): the admin login, even on loopback."""
    if not is_operator(request):
        raise LoginRequired()


def viewer(request: Request) -> None:
    """Allow loopback (when configured) or a valid login cookie; otherwise go to /login."""
    state = _state(request)
    if state.settings.dashboard_open_on_loopback and is_loopback(request):
        return
    if hmac.compare_digest(request.cookies.get(COOKIE, ""), state.dashboard_key):
        return
    raise LoginRequired()


HIGH_FLAGS = {"irreproducible", "teacher-free", "constant-predictions", "label-access", "probe-single-flips", "probe-coordinated",
              "probe-submission-edits",
              "probe-submissions"}


def _page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
    state = _state(request)
    return templates.TemplateResponse(request, name, {"testbeds": sorted(state.scorers), "high_flags": HIGH_FLAGS, **ctx})


def chart_traces(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best shown board PGR so far, per researcher, over submission time."""
    series: dict[str, dict[str, list[Any]]] = {}
    best: dict[str, float] = {}
    for r in sorted(rows, key=lambda r: r["created_at"]):
        if r["pgr"] is None:
            continue
        name = r["researcher"]
        best[name] = max(best.get(name, -1e9), r["pgr"])
        s = series.setdefault(name, {"x": [], "y": []})
        s["x"].append(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"])))
        s["y"].append(best[name])
    return [{"type": "scatter", "mode": "lines+markers", "line": {"shape": "hv"}, "name": n, **s} for n, s in series.items()]


ACCOUNTING = (("tokens_in", "tokens in"), ("tokens_out", "tokens out"), ("usd", "$"), ("wall_seconds", "wall-clock s"),
              ("experiments", "experiments"), ("grader_queries", "grader queries"))
TRANSCRIPT_PAGE = 50
_ENTRY_META = ("ts", "researcher", "type")


def _entry_label(e: dict[str, Any]) -> str:
    """message (role) | tool call (tool) | tool result (tool) | event (what)."""
    d = e["entry"]
    kind = e.get("kind") or d.get("type") or "line"
    detail = d.get("role") if kind == "message" else d.get("tool") if kind in ("tool_call", "tool_result") else d.get("event")
    return kind.replace("_", " ") + (f" ({detail})" if detail else "")


def _entry_body(d: dict[str, Any]) -> str:
    """The entry in full: text content as is, anything else as indented JSON."""
    main = next((d[k] for k in ("content", "args", "result") if k in d), None)
    rest = {k: v for k, v in d.items() if k not in _ENTRY_META and k not in ("content", "args", "result", "role", "tool")}
    parts = []
    if main is not None:
        parts.append(main if isinstance(main, str) else json.dumps(main, indent=1, ensure_ascii=False))
    if rest:
        parts.append(json.dumps(rest, indent=1, ensure_ascii=False))
    return "\n".join(parts)


PAGE_SIZE = 100  # rows per page of the forum and the submissions list
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"  # the report: inline CSS and its plot only


def pager(request: Request, offset: int, shown: int, total: int) -> dict[str, Any]:
    """'showing X-Y of N' and prev/next links that keep the page's other query parameters."""
    params = {k: v for k, v in request.query_params.items() if k != "offset"}

    def url(at: int) -> str:
        query = urlencode({**params, **({"offset": at} if at else {})})
        return request.url.path + (f"?{query}" if query else "")

    return {"start": offset + 1 if shown else 0, "end": offset + shown, "total": total,
            "prev": url(max(0, min(offset - PAGE_SIZE, (total - 1) // PAGE_SIZE * PAGE_SIZE))) if offset > 0 else None,
            "next": url(offset + PAGE_SIZE) if offset + shown < total else None}


def count_posts(engine: Any, kind: str | None, audit_kind: str) -> int:
    """Posts of ``kind`` (default: all but the audit threads), as ``forum.list_posts`` lists them."""
    with read_session(engine) as s:
        q = select(func.count()).select_from(Post)
        return int(s.exec(q.where(Post.kind == kind) if kind else q.where(Post.kind != audit_kind)).one())


def latest_report(runs: list[dict[str, Any]], run_id: str | None = None) -> tuple[dict[str, Any], Path] | None:
    """The newest research run (or ``run_id``) whose workdir holds a report.html, with its path."""
    for run in runs:
        if run_id and run["run_id"] != run_id:
            continue
        workdir = (run.get("status") or {}).get("workdir")
        path = Path(workdir) / "report.html" if isinstance(workdir, str) and workdir else None
        if path is not None and path.is_file():
            return run, path
    return None


def dashboard_router() -> APIRouter:
    from w2slab.grader import app as grader
    from w2slab.grader import forum

    router = APIRouter(include_in_schema=False)
    guard = [Depends(viewer)]

    @router.get("/", dependencies=guard)
    def index() -> RedirectResponse:
        return RedirectResponse("/leaderboard", status_code=303)

    @router.get("/leaderboard", dependencies=guard)
    def leaderboard(request: Request, testbed: str | None = None) -> HTMLResponse:
        state = _state(request)
        name = testbed or sorted(state.scorers)[0]
        sc = state.scorer(name)
        full = is_operator(request)
        rows = grader.leaderboard(state.engine, sc.name, full=full)
        weak, ceiling = sc.baseline(sc.board)
        base = {"weak": round(weak, 2), "ceiling": round(ceiling, 2), "board_rows": len(sc.board), "sealed_rows": len(sc.sealed),
                "mde": sc.sealed_mde()}
        return _page(request, "leaderboard.html", current=sc.name, rows=rows, base=base, seeds=sc.seeds, operator=full,
                     sealed=grader.sealed_board(state, sc.name, full=full),
                     teacher_free=grader.teacher_free_board(state.engine, sc.name, full=full), traces=json.dumps(chart_traces(rows)))

    @router.get("/forum", dependencies=guard)
    def forum_page(request: Request, q: str = "", kind: str = "", offset: int = Query(0, ge=0, le=10**9)) -> HTMLResponse:
        engine = _state(request).engine
        if q.strip():  # search ranks at most 2000 matches; the page is a slice of them
            found = [p for p in forum.search_posts(engine, q, limit=2000, include_audit=kind == forum.AUDIT_KIND)
                     if not kind or p["kind"] == kind]
            posts, total = found[offset: offset + PAGE_SIZE], len(found)
        else:
            posts = forum.list_posts(engine, kind or None, limit=PAGE_SIZE, offset=offset)
            total = count_posts(engine, kind or None, forum.AUDIT_KIND)
        name = "_posts.html" if request.headers.get("HX-Request") else "forum.html"
        return _page(request, name, posts=posts, q=q, kind=kind, kinds=forum.ListKind.__args__,
                     pager=pager(request, offset, len(posts), total))

    @router.get("/forum/{post_id}", dependencies=guard)
    def post_page(request: Request, post_id: DbId) -> HTMLResponse:
        try:
            post = forum.get_post(_state(request).engine, post_id)
        except forum.ForumError as e:
            raise HTTPException(404, str(e)) from None
        return _page(request, "post.html", post=post)

    @router.get("/submissions", dependencies=guard)
    def submissions_page(request: Request, testbed: str = "", researcher: str = "",
                         offset: int = Query(0, ge=0, le=10**9)) -> HTMLResponse:
        rows = grader.submissions(_state(request).engine, testbed or None, researcher or None)
        page = rows[offset: offset + PAGE_SIZE]
        return _page(request, "submissions.html", rows=page, testbed=testbed, researcher=researcher,
                     pager=pager(request, offset, len(page), len(rows)))

    @router.get("/submissions/{sid}", dependencies=guard)
    def submission_page(request: Request, sid: DbId) -> HTMLResponse:
        s = grader.submission_detail(_state(request).engine, sid, full=is_operator(request))
        if s is None:
            raise HTTPException(404, f"no submission {sid}")
        return _page(request, "submission.html", s=s)

    @router.get("/snapshots", dependencies=guard)
    def snapshots_page(request: Request) -> HTMLResponse:
        return _page(request, "snapshots.html", rows=grader.snapshots(_state(request).engine))

    @router.get("/snapshots/{sha}.tar.gz", dependencies=guard)
    def snapshot_file(request: Request, sha: str) -> FileResponse:
        state = _state(request)
        grader._snapshot_or_404(state, sha)
        return FileResponse(state.store.path(sha), media_type="application/gzip", filename=f"{sha}.tar.gz")

    @router.get("/researchers", dependencies=[Depends(operator)])
    def researchers_page(request: Request) -> HTMLResponse:
        from w2slab.integrity.probes import all_flags

        state = _state(request)
        flags = all_flags(state.engine, state.thresholds)
        kinds: dict[str, list[str]] = {}
        for f in flags:
            kinds.setdefault(f["researcher"], [])
            if f["kind"] not in kinds[f["researcher"]]:
                kinds[f["researcher"]].append(f["kind"])
        return _page(request, "researchers.html", rows=grader.researcher_usage(state), flags=flags, flag_kinds=kinds)

    @router.get("/research", dependencies=[Depends(operator)])
    def research_page(request: Request) -> HTMLResponse:
        from w2slab.grader import research

        return _page(request, "research.html", runs=research.list_runs(_state(request).engine), columns=ACCOUNTING)

    @router.get("/research/{run_id}/{name}", dependencies=[Depends(operator)])
    def transcript_page(request: Request, run_id: str, name: str, page: int | None = None) -> HTMLResponse:
        from w2slab.grader import research

        engine = _state(request).engine
        total = research.transcript(engine, run_id, name, 0, 1)["total"]
        pages = max(1, -(-total // TRANSCRIPT_PAGE))
        page = pages if page is None else min(max(1, page), pages)  # default: the newest page
        tr = research.transcript(engine, run_id, name, (page - 1) * TRANSCRIPT_PAGE, TRANSCRIPT_PAGE)
        entries = [dict(e, body=_entry_body(e["entry"]), label=_entry_label(e)) for e in tr["lines"]]
        return _page(request, "transcript.html", run_id=run_id, researcher=name, entries=entries, total=total, page=page,
                     pages=pages)

    @router.get("/report", dependencies=[Depends(operator)])
    def report_page(request: Request, run: str = "") -> HTMLResponse:
        """The end-of-run report (report.html in the run's workdir) of the newest research run that has one."""
        from w2slab.grader import research

        found = latest_report(research.list_runs(_state(request).engine), run or None)
        if found is None:
            what = f"research run '{run}' has no report" if run else "no research run has written a report yet"
            return _page(request, "no_report.html", message=what, runs=research.list_runs(_state(request).engine, limit=10))
        info, path = found
        return HTMLResponse(path.read_text(encoding="utf-8", errors="replace"),
                            headers={"Content-Security-Policy": REPORT_CSP, "X-Report-Run": info["run_id"]})

    @router.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(HERE / "static" / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    @router.get("/login")
    def login_form(request: Request, next: str = "/leaderboard", error: str = "") -> HTMLResponse:
        return templates.TemplateResponse(request, "login.html", {"next": next, "error": error, "testbeds": []})

    @router.post("/login")
    def login(request: Request, token: str = Form(...), next: str = Form("/leaderboard")) -> Response:
        state = _state(request)
        who = state.auth.lookup(token.strip()) if token.strip() else None
        if who is None or not who.admin:
            return templates.TemplateResponse(request, "login.html", {"next": next, "error": "wrong token", "testbeds": []},
                                              status_code=401)
        target = next if next.startswith("/") and not next.startswith("//") else "/leaderboard"
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(COOKIE, state.dashboard_key, httponly=True, samesite="strict", max_age=7 * 86400)
        return resp

    @router.post("/logout")
    def logout() -> RedirectResponse:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    @router.get("/static/plotly.min.js")
    def plotly_js() -> FileResponse:
        import plotly

        path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    return router


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard pages, its static files and the login redirect to ``app``."""

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    def is_page(request: Request) -> bool:
        return not request.url.path.startswith(("/api/", "/healthz", "/docs", "/redoc", "/openapi"))

    def error_page(request: Request, status: int, detail: Any, headers: Any = None) -> HTMLResponse:
        return templates.TemplateResponse(request, "error.html", {"status": status, "detail": detail, "testbeds": []},
                                          status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Dashboard pages get an HTML error page; the API keeps ``{"detail": ...}``."""
        if not is_page(request):
            return await http_exception_handler(request, exc)
        return error_page(request, exc.status_code, exc.detail, getattr(exc, "headers", None))

    api_invalid = app.exception_handlers.get(RequestValidationError)  # the API's one-line 422 (install_error_handlers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if not is_page(request) and api_invalid is not None:
            return await api_invalid(request, exc)
        detail = "; ".join(f"{e.get('loc', ['?'])[-1]}: {e.get('msg')}" for e in exc.errors()[:5]) or "invalid request"
        return error_page(request, 422, detail)

    app.include_router(dashboard_router())
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
