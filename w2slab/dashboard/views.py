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
from urllib.parse import quote, urlencode

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

from w2slab.dashboard import claims, data
from w2slab.grader import forum
from w2slab.grader import queries as grader
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


def progress_data(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The PGR-over-time small multiples (one panel per researcher) as JSON for the page's script:
    times as local date strings and one y range shared by every panel."""
    ys = [p[k] for r in history for part in ("dev", "board", "sealed") for p in r[part] for k in ("pgr", "lo", "hi")
          if p.get(k) is not None]
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = max(0.05, 0.08 * (hi - lo))
    out = []
    for r in history:
        out.append({"name": r["name"], **{part: {"x": [_ts(p["t"]) for p in r[part]], "y": [p["pgr"] for p in r[part]],
                                                  "lo": [p.get("lo") for p in r[part]], "hi": [p.get("hi") for p in r[part]],
                                                  "id": [p["id"] for p in r[part]]} for part in ("dev", "board", "sealed")}})
    return {"researchers": out, "yrange": [round(lo - pad, 3), round(hi + pad, 3)]}


ACCOUNTING = (("tokens_in", "tokens in"), ("tokens_out", "tokens out"), ("usd", "$"), ("wall_seconds", "wall-clock s"),
              ("experiments", "experiments"), ("grader_queries", "grader queries"))
TRANSCRIPT_PAGE = 50  # entries per transcript page
RUNS_PAGE = 20  # research runs per page
_ENTRY_META = ("ts", "researcher", "type")


def _entry_label(e: dict[str, Any]) -> str:
    """message (role) | tool call (tool) | tool result (tool) | event (what)."""
    d = e["entry"]
    kind = e.get("kind") or d.get("type") or "line"
    detail = d.get("role") if kind == "message" else d.get("tool") if kind in ("tool_call", "tool_result") else d.get("event")
    return kind.replace("_", " ") + (f" ({detail})" if detail else "")


LONG_LIST = 12  # numeric lists longer than this are shown abbreviated (predictions: thousands of numbers)
MAX_BODY = 20_000  # characters of one entry shown on the page


def _abbreviate(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) > LONG_LIST and all(isinstance(v, (int, float)) for v in value):
            head = ", ".join(json.dumps(v) for v in value[:4])
            return f"[{head}, ... ({len(value)} numbers)]"
        return [_abbreviate(v) for v in value]
    if isinstance(value, dict):
        return {k: _abbreviate(v) for k, v in value.items()}
    return value


def _entry_body(d: dict[str, Any]) -> str:
    """The entry in full (long numeric lists abbreviated): text content as is, anything else as indented JSON."""
    main = next((d[k] for k in ("content", "args", "result") if k in d), None)
    rest = {k: v for k, v in d.items()
            if k not in _ENTRY_META and k not in ("content", "args", "result", "role", "tool") and v is not None}
    parts = []
    if main is not None:
        parts.append(main if isinstance(main, str) else json.dumps(_abbreviate(main), indent=1, ensure_ascii=False))
    if rest:
        parts.append(json.dumps(_abbreviate(rest), indent=1, ensure_ascii=False))
    text = "\n".join(parts)
    return text if len(text) <= MAX_BODY else text[:MAX_BODY] + f"\n... ({len(text) - MAX_BODY} more characters)"


def _entry_preview(d: dict[str, Any], limit: int = 140) -> str:
    """One line: the text, or the arguments / result / event data, flattened."""
    main = next((d[k] for k in ("content", "args", "result") if k in d), None)
    if main is None:
        main = {k: v for k, v in d.items() if k not in _ENTRY_META and k not in ("event",)}
    text = main if isinstance(main, str) else json.dumps(_abbreviate(main), ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


PAGE_SIZE = 100  # rows per page of the forum and the submissions list
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"  # the report: inline CSS and its plot only


def pager(request: Request, offset: int, shown: int, total: int, size: int = PAGE_SIZE) -> dict[str, Any]:
    """'showing X-Y of N' and prev/next links that keep the page's other query parameters."""
    params = {k: v for k, v in request.query_params.items() if k != "offset"}

    def url(at: int) -> str:
        query = urlencode({**params, **({"offset": at} if at else {})})
        return request.url.path + (f"?{query}" if query else "")

    return {"start": offset + 1 if shown else 0, "end": offset + shown, "total": total,
            "prev": url(max(0, min(offset - size, (total - 1) // size * size))) if offset > 0 else None,
            "next": url(offset + size) if offset + shown < total else None,
            "first": url(0) if offset > 0 else None, "last": url((total - 1) // size * size) if offset + shown < total else None}


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


def experiment_rows(state: Any, full: bool) -> list[dict[str, Any]]:
    """Experiments (from pushed transcripts: operator only) and submissions, side by side: each
    with its recipe parameters (an experiment's logged recipe; a submission's snapshot ``recipe.json``),
    its PGR (dev mean over the seeds it ran; the submission's shown board PGR) and links to its
    code and result."""
    out: list[dict[str, Any]] = []
    if full:
        for e in data.experiments(state.engine):
            where = f"/research/{quote(e['run_id'], safe='')}/{quote(e['researcher'], safe='')}"
            out.append({"kind": "experiment", "researcher": e["researcher"], "run": e["run_id"], "id": e["n"],
                        "when": e["created_at"], "what": e["action"] or "experiment", "detail": e["why"],
                        "seeds": ", ".join(map(str, e["seeds"])), "pgr": e["dev_pgr"], "status": e["status"],
                        "params": e["recipe"],
                        "code": f"{where}?offset={e['seq'] // TRANSCRIPT_PAGE * TRANSCRIPT_PAGE}#e{e['seq']}",
                        "result": (f"{where}?offset={e['result_seq'] // TRANSCRIPT_PAGE * TRANSCRIPT_PAGE}#e{e['result_seq']}"
                                   if e["result_seq"] is not None else None),
                        "error": e.get("error")})
    for sub in grader.submissions(state.engine, limit=10_000):
        recipe = data.snapshot_recipe(state.store.path(sub["snapshot_sha256"]))
        out.append({"kind": "submission", "researcher": sub["researcher"], "run": sub["testbed"], "id": sub["id"],
                    "when": sub["created_at"], "what": sub["method_name"], "detail": "",
                    "seeds": str(sub["n_seeds"]) + " seeds", "pgr": sub["pgr"], "status": sub["audit"],
                    "params": recipe or {}, "code": f"/snapshots/{sub['snapshot_sha256']}.tar.gz",
                    "result": f"/submissions/{sub['id']}", "error": None})
    return out


def split_params(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """The parameters that vary across the rows that have any (columns), and those with one value in all of them."""
    with_params = [r["params"] for r in rows if r["params"]]
    names = sorted({k for p in with_params for k in p})
    same = {k: with_params[0].get(k) for k in names
            if len(with_params) > 1 and len({json.dumps(p.get(k), sort_keys=True) for p in with_params}) == 1}
    return [k for k in names if k not in same], same


def filter_rows(rows: list[dict[str, Any]], q: str, kind: str, researcher: str) -> list[dict[str, Any]]:
    """Rows of ``kind`` by ``researcher`` whose text (any column or parameter) contains every word of ``q``."""
    words = q.lower().split()
    keep = []
    for r in rows:
        if (kind and r["kind"] != kind) or (researcher and r["researcher"] != researcher):
            continue
        text = " ".join(str(v) for k, v in r.items() if k not in ("params", "when", "code", "result"))
        text += f" {_ts(r['when'])} {json.dumps(r['params'])}"
        if all(w in text.lower() for w in words):
            keep.append(r)
    return keep


def sort_rows(rows: list[dict[str, Any]], key: str, order: str) -> list[dict[str, Any]]:
    """By a column (``when``, ``pgr``, ``researcher``, ...) or a parameter (``p.NAME``); missing values last."""
    def value(r: dict[str, Any]) -> Any:
        v = r["params"].get(key[2:]) if key.startswith("p.") else r.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else json.dumps(v) if v is not None else None

    have = [r for r in rows if value(r) is not None]
    missing = [r for r in rows if value(r) is None]
    numeric = all(isinstance(value(r), (int, float)) for r in have)
    have.sort(key=lambda r: value(r) if numeric else str(value(r)), reverse=order == "desc")
    return have + missing


def dashboard_router() -> APIRouter:
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
                     teacher_free=grader.teacher_free_board(state.engine, sc.name, full=full),
                     progress=progress_data(grader.pgr_history(state.engine, sc.name, full)))

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
        bodies = grader.post_bodies(engine, [p["id"] for p in posts])
        records: dict[str, Any] = {}
        for p in posts:  # the claims badge of each post (records fetched once per author)
            if p["author"] not in records:
                records[p["author"]] = grader.author_records(engine, p["author"])
            p["checked"] = claims.check(dict(p, body=bodies.get(p["id"], "")), records[p["author"]])
        name = "_posts.html" if request.headers.get("HX-Request") else "forum.html"
        return _page(request, name, posts=posts, q=q, kind=kind, kinds=forum.ListKind.__args__,
                     pager=pager(request, offset, len(posts), total))

    @router.get("/forum/{post_id}", dependencies=guard)
    def post_page(request: Request, post_id: DbId) -> HTMLResponse:
        engine = _state(request).engine
        try:
            post = forum.get_post(engine, post_id)
        except forum.ForumError as e:
            raise HTTPException(404, str(e)) from None
        checked = claims.check(post, grader.author_records(engine, post["author"]))
        return _page(request, "post.html", post=post, checked=checked, operator=is_operator(request))

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
    def snapshots_page(request: Request, offset: int = Query(0, ge=0, le=10**9)) -> HTMLResponse:
        rows, total = grader.snapshots_page(_state(request).engine, offset, PAGE_SIZE)
        return _page(request, "snapshots.html", rows=rows, pager=pager(request, offset, len(rows), total))

    @router.get("/experiments", dependencies=guard)
    def experiments_page(request: Request, q: str = Query("", max_length=200), kind: str = "", researcher: str = "",
                         sort: str = Query("when", max_length=100), order: str = Query("desc", pattern="^(asc|desc)$"),
                         offset: int = Query(0, ge=0, le=10**9)) -> HTMLResponse:
        state = _state(request)
        full = is_operator(request)
        rows = filter_rows(experiment_rows(state, full), q, kind, researcher)
        params, same = split_params(rows)
        rows = sort_rows(rows, sort, order)
        page = rows[offset: offset + PAGE_SIZE]
        base = {k: v for k, v in {"q": q, "kind": kind, "researcher": researcher}.items() if v}

        def sort_url(key: str) -> str:
            flip = "asc" if sort == key and order == "desc" else "desc"
            return "/experiments?" + urlencode({**base, "sort": key, "order": flip})

        return _page(request, "experiments.html", rows=page, params=params, same=same, q=q, kind=kind, researcher=researcher, sort=sort,
                     order=order, sort_url=sort_url, operator=full, pager=pager(request, offset, len(page), len(rows)))

    @router.get("/snapshots/{sha}.tar.gz", dependencies=guard)
    def snapshot_file(request: Request, sha: str) -> FileResponse:
        state = _state(request)
        grader.snapshot_or_404(state, sha)
        return FileResponse(state.store.path(sha), media_type="application/gzip", filename=f"{sha}.tar.gz")

    @router.get("/researchers", dependencies=[Depends(operator)])
    def researchers_page(request: Request, offset: int = Query(0, ge=0, le=10**9)) -> HTMLResponse:
        from w2slab.integrity.probes import all_flags

        state = _state(request)
        flags = all_flags(state.engine, state.thresholds)
        kinds: dict[str, list[str]] = {}
        for f in flags:
            kinds.setdefault(f["researcher"], [])
            if f["kind"] not in kinds[f["researcher"]]:
                kinds[f["researcher"]].append(f["kind"])
        page = flags[offset: offset + PAGE_SIZE]
        return _page(request, "researchers.html", rows=grader.researcher_usage(state), flags=page, flag_kinds=kinds,
                     pager=pager(request, offset, len(page), len(flags)))

    @router.get("/research", dependencies=[Depends(operator)])
    def research_page(request: Request, offset: int = Query(0, ge=0, le=10**9)) -> HTMLResponse:
        from w2slab.grader import research

        engine = _state(request).engine
        runs = research.list_runs(engine, limit=offset + RUNS_PAGE)[offset:]
        return _page(request, "research.html", runs=runs, columns=ACCOUNTING,
                     pager=pager(request, offset, len(runs), grader.count_runs(engine), RUNS_PAGE))

    @router.get("/evaluations", dependencies=[Depends(operator)])
    def evaluations_page(request: Request, researcher: str = "", testbed: str = "",
                         offset: int = Query(0, ge=0, le=10**9)) -> HTMLResponse:
        rows, total = grader.evaluations(_state(request).engine, testbed or None, researcher or None, offset, PAGE_SIZE)
        return _page(request, "evaluations.html", rows=rows, researcher=researcher, testbed=testbed,
                     pager=pager(request, offset, len(rows), total))

    @router.get("/research/{run_id}/{name}", dependencies=[Depends(operator)])
    def transcript_page(request: Request, run_id: str, name: str, kind: str = "", tool: str = Query("", max_length=100),
                        q: str = Query("", max_length=200), offset: int = Query(0, ge=0, le=10**9)) -> HTMLResponse:
        from w2slab.grader import research

        engine = _state(request).engine
        research.transcript(engine, run_id, name, 0, 0)  # 404 for an unknown run
        tr = grader.transcript_page(engine, run_id, name, kind, tool, q, offset, TRANSCRIPT_PAGE)
        entries = [dict(e, body=_entry_body(e["entry"]), label=_entry_label(e), preview=_entry_preview(e["entry"]))
                   for e in tr["lines"]]
        return _page(request, "transcript.html", run_id=run_id, researcher=name, entries=entries, total=tr["total"],
                     matching=tr["matching"], tools=tr["tools"], kind=kind, tool=tool, q=q,
                     kinds=("message", "tool_call", "tool_result", "event"),
                     pager=pager(request, offset, len(entries), tr["matching"], TRANSCRIPT_PAGE))

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
