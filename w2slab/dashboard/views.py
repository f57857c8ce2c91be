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

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

HERE = Path(__file__).parent
COOKIE = "w2slab_dashboard"
templates = Jinja2Templates(directory=str(HERE / "templates"))
_md = MarkdownIt("commonmark", {"html": False, "linkify": False})


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


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


def viewer(request: Request) -> None:
    """Allow loopback (when configured) or a valid login cookie; otherwise go to /login."""
    state = _state(request)
    if state.settings.dashboard_open_on_loopback and is_loopback(request):
        return
    if hmac.compare_digest(request.cookies.get(COOKIE, ""), state.dashboard_key):
        return
    raise LoginRequired()


HIGH_FLAGS = {"irreproducible", "teacher-free", "constant-predictions", "label-access", "probe-single-flips", "probe-coordinated",
              "probe-submissions"}


def _page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
    state = _state(request)
    return templates.TemplateResponse(request, name, {"testbeds": sorted(state.scorers), "high_flags": HIGH_FLAGS, **ctx})


def chart_traces(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best final-set PGR so far, per researcher, over submission time."""
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
        rows = grader.leaderboard(state.engine, sc.name, full=True)
        base = {"weak": sum(sc.weak_final) / len(sc.weak_final), "ceiling": sum(sc.ceiling_final) / len(sc.ceiling_final)}
        return _page(request, "leaderboard.html", current=sc.name, rows=rows, base=base, seeds=sc.seeds,
                     teacher_free=grader.teacher_free_board(state.engine, sc.name, full=True), traces=json.dumps(chart_traces(rows)))

    @router.get("/forum", dependencies=guard)
    def forum_page(request: Request, q: str = "", kind: str = "") -> HTMLResponse:
        engine = _state(request).engine
        if q.strip():
            posts = [p for p in forum.search_posts(engine, q, limit=100, include_audit=kind == forum.AUDIT_KIND)
                     if not kind or p["kind"] == kind]
        else:
            posts = forum.list_posts(engine, kind or None, limit=100)
        name = "_posts.html" if request.headers.get("HX-Request") else "forum.html"
        return _page(request, name, posts=posts, q=q, kind=kind, kinds=forum.ListKind.__args__)

    @router.get("/forum/{post_id}", dependencies=guard)
    def post_page(request: Request, post_id: int) -> HTMLResponse:
        try:
            post = forum.get_post(_state(request).engine, post_id)
        except forum.ForumError as e:
            raise HTTPException(404, str(e)) from None
        return _page(request, "post.html", post=post)

    @router.get("/submissions", dependencies=guard)
    def submissions_page(request: Request, testbed: str = "", researcher: str = "") -> HTMLResponse:
        rows = grader.submissions(_state(request).engine, testbed or None, researcher or None)
        return _page(request, "submissions.html", rows=rows, testbed=testbed, researcher=researcher)

    @router.get("/submissions/{sid}", dependencies=guard)
    def submission_page(request: Request, sid: int) -> HTMLResponse:
        s = grader.submission_detail(_state(request).engine, sid, full=True)
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

    @router.get("/researchers", dependencies=guard)
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

    @router.get("/research", dependencies=guard)
    def research_page(request: Request) -> HTMLResponse:
        from w2slab.grader import research

        return _page(request, "research.html", runs=research.list_runs(_state(request).engine), columns=ACCOUNTING)

    @router.get("/research/{run_id}/{name}", dependencies=guard)
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

    app.include_router(dashboard_router())
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
