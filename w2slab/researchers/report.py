"""The end-of-run report of a research session: ``<workdir>/report.md``, ``<workdir>/report.html``
(self-contained: the plot is embedded as base64, no network) and ``<workdir>/report_pgr.png``.

What it says: the headline (sealed PGR of the board's best pick vs the naive baseline, paired
interval over sealed rows and seeds), PGR over time per researcher (dev evaluations, board
submissions and sealed picks, each with a 95% interval), the top ideas and the negative results
(paired dev effects vs their parent with an interval), cost and time per researcher, audit flags.

Sources: the launcher's summary and status.json, the grader's admin API (audit log of dev
evaluations, submissions, flags, forum posts) and each offline researcher's ``notebook.json``.

Dev-feedback intervals are approximate (the grader answers dev PGR rounded to 2 decimals,
without an interval): one dev answer on ``n`` dev rows gets the binomial row noise
``1.96 * sqrt(t (1 - t) / n) / gap`` (t: its transfer accuracy, gap: ceiling - weak); a paired
effect over seeds gets ``1.96 * sqrt(d / (n gap^2) + sd^2 / k)``, where ``d`` is the fraction of
rows on which the two methods disagree (measured on their predictions over all test rows when
the researcher kept them; else bounded by the sum of their error rates) and ``sd^2`` is the
seed-to-seed variance of a paired difference, pooled over the run's ideas measured on two or
more seeds (a prior of ``2 * 0.06^2`` when there are none).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from markdown_it import MarkdownIt

PNG_NAME = "report_pgr.png"
Z95 = 1.959964
TOP_IDEAS = 10
SEED_VAR_PRIOR = 2 * 0.06**2  # a paired difference of two dev PGRs, each with seed sd 0.06 (offline.SIGMA_PRIOR)
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!~])")


# ============================================================== small helpers


def esc(text: Any) -> str:
    """Untrusted text (method names, directions, flags) as literal markdown on one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text if text is not None else "").split()))


def code(text: Any) -> str:
    """Untrusted text as an inline code span (backslash escapes do not work inside one)."""
    return "`" + " ".join(str(text if text is not None else "").replace("`", "'").split()) + "`"


def num(x: Any, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def with_ci(value: Any, ci: Any, digits: int = 3, sign: bool = False) -> str:
    """``0.130 [-0.410, 0.540]``; ``n/a`` without a value."""
    if value is None:
        return "n/a"
    lo, hi = (list(ci) + [None, None])[:2] if ci else (None, None)
    if lo is None or hi is None:
        return f"{num(value, digits, sign)} [interval n/a]"
    return f"{num(value, digits, sign)} [{num(lo, digits, sign)}, {num(hi, digits, sign)}]"


def method_text(row: dict[str, Any]) -> str:
    """A pick's method name without its researcher's name in front (the offline researchers name
    their submissions "offline-1: recipe ...", and the tables say whose pick it is already)."""
    name, prefix = str(row.get("method_name") or ""), f"{row.get('researcher')}: "
    return name[len(prefix):] if name.startswith(prefix) else name


def dev_ci(pgr_value: float | None, acc: float | None, base: dict[str, Any]) -> tuple[float, float] | None:
    """Approximate 95% interval of one dev answer: binomial noise of its dev rows (see the module docstring)."""
    gap, n = base.get("gap"), base.get("dev_rows")
    if pgr_value is None or not gap or gap <= 0 or not n:
        return None
    t = acc if acc is not None else base["weak"] + pgr_value * gap
    t = min(max(float(t), 0.5 / n), 1 - 0.5 / n)
    half = Z95 * math.sqrt(t * (1 - t) / n) / gap
    return (pgr_value - half, pgr_value + half)


def effect_ci(mine: list[float], parent: list[float], base: dict[str, Any], disagreement: float | None = None,
              seed_var: float | None = None) -> tuple[float, tuple[float, float] | None]:
    """Paired dev effect (mean of per-seed differences) and its approximate 95% interval. Row
    noise: ``disagreement / n`` (the fraction of rows where the two methods' answers differ,
    measured on their predictions), else bounded by the sum of their error rates. Seed noise:
    ``seed_var`` (the variance of one paired difference across seeds, pooled over the run's
    ideas) over the number of seeds, else the ideas' own spread (needs two seeds)."""
    diffs = [a - b for a, b in zip(mine, parent, strict=True)]
    effect = sum(diffs) / len(diffs)
    gap, n = base.get("gap"), base.get("dev_rows")
    if not gap or gap <= 0 or not n:
        return effect, None
    if disagreement is None:
        err = [min(max(1 - (base["weak"] + statistics.fmean(v) * gap), 0.5 / n), 1.0) for v in (mine, parent)]
        disagreement = min(sum(err), 1.0)
    var = max(disagreement, 1.0 / n) / (n * gap * gap)
    if seed_var is None and len(diffs) > 1:
        seed_var = statistics.variance(diffs)
    var += (seed_var or 0.0) / len(diffs)
    half = Z95 * math.sqrt(var)
    return effect, (effect - half, effect + half)


def _safe(what: str, fn: Callable[[], Any], default: Any, problems: list[str]) -> Any:
    """A grader call that may fail (the grader is busy or gone): the report says what is missing."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the report is written with what could be read
        problems.append(f"{what}: {type(e).__name__}: {e}")
        return default


# ============================================================== gathering


def collect(workdir: Path, summary: dict[str, Any], status: dict[str, Any], admin: Any = None) -> dict[str, Any]:
    """Everything the report shows, from the summary, status.json, the grader and the notebooks."""
    problems: list[str] = []
    testbed = summary.get("testbed") or status.get("testbed")
    names = [r["name"] for r in status.get("researchers", [])]
    since = float(status.get("started") or 0)  # this session only (a researcher's name may span sessions)
    base: dict[str, Any] = {}
    evaluations: list[dict[str, Any]] = []
    board: list[dict[str, Any]] = []
    flags: list[dict[str, Any]] = []
    posts: list[dict[str, Any]] = []
    if admin is not None:
        lb = _safe("leaderboard", lambda: admin.leaderboard(testbed), {}, problems)
        beds = _safe("testbeds", admin.testbeds, [], problems)
        bed = next((t for t in beds if t.get("name") == testbed), {})
        if lb.get("weak_acc") is not None and lb.get("ceiling_acc") is not None:
            base = {"weak": lb["weak_acc"], "ceiling": lb["ceiling_acc"], "gap": lb["ceiling_acc"] - lb["weak_acc"],
                    "dev_rows": bed.get("dev_rows")}
        audit = _safe("audit log", lambda: admin.audit(kind="evaluate"), [], problems)
        evaluations = sorted((a for a in audit if a.get("researcher") in names and a.get("testbed") == testbed
                              and a["created_at"] >= since), key=lambda a: a["created_at"])
        board = _safe("submissions", lambda: admin.submissions(testbed), [], problems)
        flags = _safe("flags", lambda: admin._call("GET", "/api/admin/flags"), [], problems)
        posts = _safe("forum", lambda: admin.posts(limit=200), [], problems)
    for e in evaluations:
        s = e.get("score") or {}
        e["ci"] = dev_ci(s.get("pgr"), s.get("transfer_acc"), base)
    ideas, negatives, untested = _ideas(workdir, status, posts, base)
    return {"summary": summary, "status": status, "testbed": testbed, "base": base, "evaluations": evaluations,
            "board": [r for r in board if r.get("researcher") in names and r.get("created_at", since) >= since
                      or r.get("researcher", "").startswith("naive")],
            "flags": [f for f in flags if f.get("researcher") in names and float(f.get("created_at") or since) >= since], "ideas": ideas, "negatives": negatives,
            "untested": untested, "problems": problems, "workdir": str(workdir)}


def _ideas(workdir: Path, status: dict[str, Any], posts: list[dict[str, Any]],
           base: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Every change a researcher measured against its parent on the same dev seeds: from an
    offline researcher's notebook (per-seed answers, Ladder-censored ones left out), else from
    its forum findings (self-reported effect, no per-seed data)."""
    ideas: list[dict[str, Any]] = []
    untested = 0
    for r in status.get("researchers", []):
        name = r["name"]
        ws = Path(r.get("workspace") or workdir / name / "workspace")
        try:
            notebook = json.loads((ws / "notebook.json").read_text())
        except (OSError, ValueError):
            notebook = {}
        nodes = notebook.get("nodes") or {}
        if nodes:
            own, preds = _own_measurements(ws, notebook.get("experiments") or [])
            for key, node in nodes.items():
                parent = nodes.get(node.get("parent") or "")
                if parent is None or key not in own:  # a root, or numbers only read on the forum
                    continue
                cut = set(node.get("censored") or []) | set(parent.get("censored") or [])
                seeds = [s for s in node.get("results", {}) if s in own[key] and s in parent.get("results", {}) and s not in cut]
                if not seeds:
                    untested += 1
                    continue
                mine = [float(node["results"][s]) for s in seeds]
                theirs = [float(parent["results"][s]) for s in seeds]
                pairs = [(preds[(key, s)], preds[(parent["key"], s)]) for s in seeds
                         if (key, s) in preds and (parent.get("key"), s) in preds]
                measured = statistics.fmean(float(np.mean(a != b)) for a, b in pairs) if len(pairs) == len(seeds) else None
                ideas.append({"researcher": name, "idea": node.get("describe") or node.get("key"),
                              "parent": parent.get("describe") or parent.get("key"), "block": node.get("block"),
                              "seeds": len(seeds), "dev_pgr": statistics.fmean(mine), "mine": mine, "theirs": theirs,
                              "disagreement": measured,
                              "source": "notebook" + (" (a forum idea, replicated)" if node.get("origin") == "forum" else ""),
                              "post_id": node.get("post_id")})
            continue
        for p in posts:  # researchers without an offline notebook: their findings as posted
            m = p.get("metrics") or {}
            if p.get("author") != name or p.get("kind") not in ("result", "negative_result"):
                continue
            if not isinstance(m.get("effect"), (int, float)) or not isinstance(m.get("pgr"), (int, float)):
                continue
            parent_pgr = m.get("parent_pgr") if isinstance(m.get("parent_pgr"), (int, float)) else m["pgr"] - m["effect"]
            ideas.append({"researcher": name, "idea": p.get("title"), "parent": "", "block": m.get("block"),
                          "seeds": m.get("n_seeds"), "dev_pgr": float(m["pgr"]), "mine": [float(m["pgr"])],
                          "theirs": [float(parent_pgr)], "disagreement": None, "source": "forum (self-reported)",
                          "post_id": p.get("id")})
    # the seed-to-seed variance of a paired difference, pooled over the ideas measured on 2+ seeds
    dfs = [(len(i["mine"]) - 1, statistics.variance([a - b for a, b in zip(i["mine"], i["theirs"], strict=True)]))
           for i in ideas if len(i["mine"]) > 1]
    pooled = sum(d * v for d, v in dfs) / sum(d for d, _ in dfs) if dfs else SEED_VAR_PRIOR
    for i in ideas:
        i["effect"], i["ci"] = effect_ci(i["mine"], i["theirs"], base, i["disagreement"], pooled)
    ideas.sort(key=lambda i: -i["effect"])
    positive = [i for i in ideas if i["effect"] > 0]
    negative = sorted((i for i in ideas if i["effect"] <= 0), key=lambda i: i["effect"])
    return positive, negative, untested


def _own_measurements(ws: Path, experiments: list[dict[str, Any]]) -> tuple[dict[str, set[str]], dict[tuple[str, str], Any]]:
    """From an offline notebook's experiments: the dev seeds each recipe was run on by this
    researcher, and its hard predictions per (recipe, seed) from ``workspace/out`` (where kept)."""
    own: dict[str, set[str]] = {}
    preds: dict[tuple[str, str], Any] = {}
    for e in experiments:
        if not e.get("ok") or not isinstance(e.get("pgr"), dict):
            continue
        own.setdefault(e["key"], set()).update(str(s) for s in e["pgr"])
        path = ws / "out" / f"{e['key']}_s{'-'.join(map(str, e.get('seeds') or []))}.json"
        try:
            per_seed = json.loads(path.read_text())["predictions"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for seed, values in per_seed.items():
            preds[(e["key"], str(seed))] = np.asarray(values, dtype=float) > 0.5
    return own, preds


# ============================================================== the plot


def plot_pgr(data: dict[str, Any], path: Path) -> bytes:
    """PGR over time per researcher: dev answers (small dots; hollow when the Ladder only said
    'not better'), board submissions (squares) and sealed picks (stars), each with its 95%
    interval; the naive baseline's sealed PGR as a dashed line. Writes ``path``; returns the PNG."""
    import matplotlib  # heavy: imported only when a report is written
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    st, s = data["status"], data["summary"]
    t0 = float(st.get("started") or time.time())
    end = (t0 + float(s.get("wall_seconds") or st.get("elapsed_seconds") or 0)) if s else time.time()
    names = [r["name"] for r in st.get("researchers", [])]
    colors = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    fig = Figure(figsize=(9, 4.8), dpi=100)
    ax = fig.subplots()

    def bars(points: list[tuple[float, float, Any]], **style: Any) -> None:
        """One errorbar call for many points (x, y, (lo, hi) or None)."""
        if points:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            err = [[y - (ci[0] if ci else y) for _, y, ci in points], [(ci[1] if ci else y) - y for _, y, ci in points]]
            ax.errorbar(xs, ys, yerr=err, **style)

    alpha = 0.45 if len(data["evaluations"]) <= 300 else 0.15  # many dev answers: fainter dots
    for i, name in enumerate(names):
        c = colors(i % colors.N)
        evs = [e for e in data["evaluations"] if e["researcher"] == name and (e.get("score") or {}).get("pgr") is not None]
        for censored in (False, True):
            bars([((e["created_at"] - t0) / 60, e["score"]["pgr"], e.get("ci")) for e in evs
                  if (e["score"].get("improved") is False) == censored],
                 fmt="o", ms=4, color=c, alpha=alpha, mfc="none" if censored else c, elinewidth=0.8, capsize=0)
        bars([((r["created_at"] - t0) / 60, r["pgr"], r.get("pgr_ci")) for r in data["board"]
              if r["researcher"] == name and r.get("pgr") is not None], fmt="s", ms=7, color=c, capsize=3)
        x = (end - t0) / 60 * (1 + 0.05 * i / max(1, len(names) - 1))  # sealed picks side by side
        bars([(x, p["pgr"], p.get("pgr_ci")) for p in s.get("sealed_picks") or []
              if p["researcher"] == name and p.get("pgr") is not None], fmt="*", ms=13, color=c, capsize=4, mec="black", mew=0.5)
        ax.plot([], [], "o", color=c, label=name)
    naive = s.get("naive") or {}
    if naive.get("pgr") is not None:
        ax.axhline(naive["pgr"], ls="--", color="grey", lw=1, label=f"naive (sealed) {naive['pgr']:.2f}")
    ax.plot([], [], "o", color="black", alpha=0.45, ms=4, label="dev answer (hollow: Ladder 'not better')")
    ax.plot([], [], "s", color="black", label="board submission")
    ax.plot([], [], "*", color="black", ms=11, label="sealed pick (end of run)")
    ax.set_xlabel("minutes since the run started")
    ax.set_ylabel("PGR (95% intervals)")
    ax.set_title(f"PGR over time on {data['testbed']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncols=1 + (len(names) + 3) // 26)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = buf.getvalue()
    path.write_bytes(png)
    return png


# ============================================================== rendering


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _flag_text(flags: Any) -> str:
    kinds = [f.get("kind", str(f)) if isinstance(f, dict) else str(f) for f in flags or []]
    return ", ".join(esc(k) for k in kinds) or "none"


def render_markdown(data: dict[str, Any]) -> str:
    s, st, base = data["summary"], data["status"], data["base"]
    board_ci = {r.get("id"): r.get("pgr_ci") for r in data["board"]}

    def on_board(row: dict[str, Any]) -> str:  # a pick's board score with its interval
        return with_ci(row.get("board_pgr"), board_ci.get(row.get("submission_id")))

    best, naive = s.get("best") or {}, s.get("naive") or {}
    vs = best.get("vs") or {}
    lines = [f"# Research report: {esc(data['testbed'])}", "",
             (f"Run {code(st.get('run_id'))}, {len(st.get('researchers', []))} {esc(st.get('backend'))} researcher(s), "
             f"{num(s.get('wall_seconds'), 0)} s wall-clock; written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}."), ""]
    if st.get("sandboxed") is False:
        lines += ["**UNSANDBOXED RUN**: experiments ran without isolation (--unsafe-no-sandbox).", ""]
    lines += ["## Headline", ""]
    if best.get("pgr") is not None:
        lines += [(f"- **Best pick** (chosen on the board, scored once on the sealed holdout of {s.get('sealed_rows')} rows): "
                  f"sealed PGR **{with_ci(best['pgr'], best.get('pgr_ci'))}** by {esc(best['researcher'])}: "
                  f"{esc(method_text(best))} (board PGR {on_board(best)}; audit: {esc(best.get('audit'))}; "
                  f"flags: {_flag_text(best.get('flags'))})")]
    else:
        lines += ["- **Best pick**: none (no researcher's submission was scored on the sealed holdout)"]
    lines += [f"- **Naive baseline** (same sealed rows and seeds): sealed PGR {with_ci(naive.get('pgr'), naive.get('pgr_ci'))}"]
    if vs.get("diff") is not None:
        lo, hi = (vs.get("ci") or [None, None])[:2]
        verdict = ("the interval excludes 0: better than naive" if lo is not None and lo > 0 else
                   "the interval excludes 0: worse than naive" if hi is not None and hi < 0 else
                   "the interval includes 0: not distinguishable from naive")
        lines += [(f"- **Best vs naive** (paired over the same rows and seeds): {with_ci(vs['diff'], vs.get('ci'), sign=True)} PGR; "
                  f"{verdict}")]
    cand = s.get("candidates") or {}
    lines += [(f"- Candidates compared: {cand.get('dev_evaluations')} dev evaluations, {cand.get('board_submissions')} board "
              f"submissions; {s.get('experiments')} experiments, {s.get('findings_posted')} findings posted."),
              f"- Scoring: {esc(s.get('scoring'))}.", ""]
    picks = s.get("sealed_picks") or []
    if picks:
        lines += ["### Each researcher's sealed pick", ""]
        lines += _table(["researcher", "method", "sealed PGR [95% CI]", "vs naive [95% CI]", "board PGR [95% CI]", "audit", "flags"],
                        [[esc(p["researcher"]), esc(method_text(p)), with_ci(p.get("pgr"), p.get("pgr_ci")),
                          with_ci((p.get("vs") or {}).get("diff"), (p.get("vs") or {}).get("ci"), sign=True),
                          on_board(p), esc(p.get("audit")), _flag_text(p.get("flags"))] for p in picks])
    lines += ["## PGR over time", "", f"![PGR over time per researcher]({PNG_NAME})", "",
              ("Small dots: dev answers (hollow: the grader's Ladder only said 'not better than your best'); squares: board "
              "submissions; stars: sealed picks at the end; bars: 95% intervals (dev: approximate, binomial noise of the "
              f"{base.get('dev_rows', '?')} dev rows; board and sealed: paired bootstrap over rows and seeds)."), ""]
    lines += _idea_section("Top ideas", data["ideas"][:TOP_IDEAS], base,
                           "Changes that raised dev PGR over their parent on the same dev seeds, best first.")
    lines += _idea_section("Negative results", data["negatives"][:TOP_IDEAS * 2], base,
                           "Changes that did not raise dev PGR over their parent (worst first).")
    if data["untested"]:
        lines += [f"{data['untested']} more change(s) had no paired dev answer the Ladder did not censor; not ranked.", ""]
    lines += ["## Cost and time per researcher", ""]
    rows = []
    for r in st.get("researchers", []):
        bd = r.get("best_dev_pgr")
        rows.append([esc(r["name"]), esc(r.get("direction")), esc(r.get("outcome") or r.get("status")), esc(r.get("stop_reason")),
                     str(r.get("restarts", 0)), num(float(r.get("wall_seconds") or 0), 0), str(r.get("experiments", 0)),
                     str(r.get("grader_queries", 0)), str(r.get("submissions", 0)), str(r.get("findings_posted", 0)),
                     f"{r.get('tokens_in', 0)} / {r.get('tokens_out', 0)}", f"${float(r.get('usd') or 0):.2f}",
                     with_ci(bd, dev_ci(bd, None, base), 2) if bd is not None else "n/a"])
    t = st.get("total") or {}
    rows.append(["**total**", "", "", "", "", num(float(t.get("wall_seconds") or 0), 0), str(t.get("experiments", 0)),
                 str(t.get("grader_queries", 0)), str(t.get("submissions", 0)), str(t.get("findings_posted", 0)),
                 f"{t.get('tokens_in', 0)} / {t.get('tokens_out', 0)}", f"${float(t.get('usd') or 0):.2f}", ""])
    lines += _table(["researcher", "direction", "outcome", "stop reason", "restarts", "wall s", "experiments", "grader queries",
                     "submissions", "findings", "tokens in / out", "dollars", "best dev PGR [approx. 95% CI]"], rows)
    lines += ["## Audit flags", ""]
    subs = [r for r in data["board"] if r.get("pgr") is not None]
    if subs:
        lines += _table(["submission", "researcher", "method", "board PGR [95% CI]", "audit", "teacher-free", "flags"],
                        [[str(r["id"]), esc(r["researcher"]), esc(method_text(r)), with_ci(r["pgr"], r.get("pgr_ci")),
                          esc(r.get("audit")), esc(r.get("teacher_free")), _flag_text(r.get("flags"))] for r in subs])
    flagged = data["flags"]
    if flagged:
        lines += [f"Integrity flags raised on this run's researchers ({len(flagged)}):", ""]
        lines += [f"- {esc(f.get('researcher'))}: **{esc(f.get('kind'))}** ({esc(f.get('severity') or 'no severity')}"
                  + (f"; submission {f['submission_id']}" if f.get("submission_id") else "")
                  + f"): {esc(f.get('message') or '')}" for f in flagged[:50]]
        if len(flagged) > 50:
            lines += [f"- ... and {len(flagged) - 50} more (the dashboard's /researchers lists them all)"]
        lines += [""]
    elif not subs:
        lines += ["No submissions and no flags.", ""]
    else:
        lines += ["No integrity flags were raised on this run's researchers.", ""]
    if data["problems"]:
        lines += ["## Missing data", ""] + [f"- {esc(p)}" for p in data["problems"]] + [""]
    where = f"Workdir {code(data['workdir'])}: status.json, transcripts and notebooks are there. "
    if data.get("serve"):
        where += f"The run's grader is stopped; to browse its dashboard (this report at /report): {code(data['serve'])}"
    else:
        where += f"Dashboard: {esc(st.get('grader_url'))}/report"
    lines += ["---", "", where, ""]
    return "\n".join(lines)


def _idea_section(title: str, ideas: list[dict[str, Any]], base: dict[str, Any], intro: str) -> list[str]:
    lines = [f"## {title}", "", intro + " Effect: mean paired difference in dev PGR vs the parent; interval: approximate "
             "95% (dev-row noise bound plus seed-to-seed spread).", ""]
    if not ideas:
        return lines + ["None.", ""]
    rows = []
    for i in ideas:
        ci = i.get("ci")
        sure = "yes" if ci and (ci[0] > 0 or ci[1] < 0) else "no"
        rows.append([esc(i["idea"]), esc(i["researcher"]), esc(i.get("parent")), str(i.get("seeds") or "?"),
                     with_ci(i["dev_pgr"], dev_ci(i["dev_pgr"], None, base), 2), with_ci(i["effect"], ci, sign=True), sure,
                     f"{esc(i['source'])}" + (f" #{i['post_id']}" if i.get("post_id") else "")])
    return lines + _table(["idea", "researcher", "parent", "seeds", "dev PGR [approx. 95% CI]", "effect [approx. 95% CI]", "CI excludes 0",
                           "source"], rows)


_STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}code{background:#f5f5f5;padding:0 3px}h1{font-size:1.6em}"""


def render_html(markdown: str, png: bytes | None) -> str:
    """The markdown as one self-contained page (raw HTML in the text is escaped; the plot inline)."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    if png is not None:
        body = body.replace(f'src="{PNG_NAME}"', f'src="data:image/png;base64,{base64.b64encode(png).decode()}"')
    title = html.escape(markdown.splitlines()[0].lstrip("# ").replace("\\", "")) if markdown else "Research report"
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}</body></html>\n")


# ============================================================== entry points


def write_report(workdir: str | Path, summary: dict[str, Any], status: dict[str, Any], admin: Any = None,
                 serve: str | None = None) -> dict[str, Path]:
    """Write report.md, report.html and the plot into ``workdir``; returns their paths. ``serve``:
    the command that serves the run's grader again (when it is stopped after the run)."""
    workdir = Path(workdir)
    data = collect(workdir, summary or {}, status, admin)
    data["serve"] = serve
    png_path = workdir / PNG_NAME
    png: bytes | None
    try:
        png = plot_pgr(data, png_path)
    except Exception as e:  # noqa: BLE001 - a plotting failure must not lose the rest of the report
        data["problems"].append(f"plot: {type(e).__name__}: {e}")
        png = None
    md = render_markdown(data)
    if png is None:
        md = md.replace(f"![PGR over time per researcher]({PNG_NAME})", "(no plot: see Missing data)")
    out = {"md": workdir / "report.md", "html": workdir / "report.html", "png": png_path}
    out["md"].write_text(md)
    out["html"].write_text(render_html(md, png))
    return out


def write_run_report(launcher: Any) -> dict[str, Path] | None:
    """``Launcher.run()``'s last step: the report of its run; a failure is logged, never raised."""
    grader, opts = launcher.grader, launcher.opts
    serve = f"w2slab serve -t {opts.testbed} --db {grader.db_url}" if grader is not None and not opts.serve_after else None
    try:
        paths = write_report(launcher.workdir, launcher.summary or {}, launcher.status(), launcher.admin, serve)
    except Exception as e:  # noqa: BLE001 - the run's results are already in status.json and the summary
        launcher.log(f"[yellow]warning:[/] could not write the report: {type(e).__name__}: {e}")
        return None
    launcher.log(f"report: {paths['html']} (and {paths['md'].name}); the dashboard serves it at /report")
    return paths
