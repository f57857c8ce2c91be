"""What the launcher shows on the terminal: the live status board during a run and the
summary table at its end."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.live import Live
from rich.table import Table
from rich.text import Text

from w2slab.researchers.report import dev_ci, method_text

if TYPE_CHECKING:  # the launcher imports this module, not the other way round
    from w2slab.researchers.launcher import Launcher


class LiveStatus:
    """The terminal's live status board during a run (rich Live, redrawn every second): per
    researcher its direction, state, experiments, best dev PGR, grader queries, tokens and
    dollars, with the elapsed and remaining time. Off (log lines only) when the console is not
    a terminal or is quiet. ``update()`` (main thread, at most once a second) reads
    ``Launcher.status()``; the redraw thread only renders the last status it read."""

    def __init__(self, launcher: Launcher, interval: float = 1.0) -> None:
        self.launcher = launcher
        self.interval = interval
        self.enabled = bool(launcher.console.is_terminal and not launcher.opts.quiet and not launcher.console.quiet)
        self.st: dict[str, Any] | None = None
        self.base: dict[str, Any] | None = None  # weak/ceiling and dev rows: the dev PGR intervals
        self.last = 0.0
        self.live: Any = None

    def __enter__(self) -> LiveStatus:
        if self.enabled:
            self.live = Live(get_renderable=self.render, console=self.launcher.console, refresh_per_second=1 / self.interval,
                             transient=False, redirect_stdout=False, redirect_stderr=False)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Draw the last status once more and release the terminal (idempotent)."""
        if self.live is not None:
            live, self.live = self.live, None
            try:
                if self.launcher.configs:
                    self.st = self.launcher.status()
                live.refresh()
            finally:
                live.stop()

    def update(self, force: bool = False) -> None:
        if self.live is None or (not force and time.monotonic() - self.last < self.interval):
            return
        self.last = time.monotonic()
        la = self.launcher
        if not la.configs:
            return
        if self.base is None and la.admin is not None:
            self.base = {}
            try:
                lb, beds = la.admin.leaderboard(la.public_testbed), la.admin.testbeds()
                n = next((t.get("dev_rows") for t in beds if t.get("name") == la.public_testbed), None)
                self.base = {"weak": lb["weak_acc"], "gap": lb["ceiling_acc"] - lb["weak_acc"], "dev_rows": n}
            except Exception:  # noqa: BLE001 - without them the board shows dev PGRs without intervals
                pass
        self.st = la.status()

    def render(self) -> Any:
        la, st = self.launcher, self.st
        now = time.time()
        clock = f"elapsed {now - la.started:.0f} s"
        if la.deadline is not None and la.state in ("running", "stopping"):
            clock += f", {max(0.0, la.deadline - now):.0f} s left"
        if st is None:
            doing = " (setting up: grader, kit, embeddings)" if la.state == "starting" else ""
            return Text(f"w2slab research: {la.state}{doing}; {clock}")
        table = Table(title=f"research {st.get('state')} on {st.get('testbed')}: {clock}", title_justify="left",
                      caption=f"dashboard {st.get('dashboard')}; Ctrl-C stops the run", caption_justify="left",
                      box=None, pad_edge=False, padding=(0, 1))
        rows = st.get("researchers", [])
        cols = [("researcher", max([len(r["name"]) for r in rows] + [10])), ("direction", 0), ("state", 9),
                ("exper-\niments", 6), ("best dev\nPGR ±95%", 10), ("grader\nqueries", 7), ("tokens\nin/out", 8), ("$", 5)]
        room = max(6, min(24, la.console.width - sum(w + 2 for _, w in cols)))  # the direction gives way
        for i, (col, width) in enumerate(cols):
            table.add_column(col, justify="left" if i < 3 else "right", no_wrap=True, min_width=width or None,
                             header_style="bold")

        def cut(text: str) -> str:
            return text if len(text) <= room else text[: room - 1] + "…"

        for r in rows:
            best = r.get("best_dev_pgr")
            ci = dev_ci(best, None, self.base or {}) if best is not None else None  # symmetric: shown as ±
            shown = "-" if best is None else f"{best:.2f}" + (f" ±{(ci[1] - ci[0]) / 2:.2f}" if ci else " (no CI)")
            table.add_row(r["name"], cut(r.get("direction") or ""), r.get("outcome") or r.get("status") or "",
                          str(r.get("experiments", 0)), shown, str(r.get("grader_queries", 0)),
                          f"{_short(r.get('tokens_in', 0))}/{_short(r.get('tokens_out', 0))}", f"{float(r.get('usd') or 0):.2f}")
        t = st.get("total") or {}
        table.add_row("total", "", "", str(t.get("experiments", 0)), "", str(t.get("grader_queries", 0)),
                      f"{_short(t.get('tokens_in', 0))}/{_short(t.get('tokens_out', 0))}", f"{float(t.get('usd') or 0):.2f}",
                      style="bold")
        return table


def _short(n: Any) -> str:
    """1234 -> 1.2k, 2345678 -> 2.3M (token counts in the live board)."""
    n = int(n or 0)
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


def print_summary(console: Any, summary: dict[str, Any] | None, dashboard_hint: str | None = None) -> None:
    """The end-of-run table: the best pick and the naive baseline on the sealed holdout, with
    their paired difference, the other picks, and what the run spent. ``dashboard_hint``: how to
    browse the dashboard again when the grader of the run is stopped."""
    s = summary or {}
    table = Table(title=f"research summary: {s.get('testbed')} (sealed holdout, {s.get('sealed_rows')} rows)")
    table.add_column("what")
    table.add_column("value")
    best, naive = s.get("best"), s.get("naive")

    def fmt(row: dict[str, Any] | None) -> str:
        if not row or row.get("pgr") is None:
            return "n/a"
        lo, hi = row.get("pgr_ci") or [None, None]
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
        return f"PGR {row['pgr']:.3f}{ci}"

    def audit(row: dict[str, Any] | None) -> str:
        if not row or not row.get("audit"):
            return ""
        flags = ", ".join(f.get("kind", str(f)) if isinstance(f, dict) else str(f) for f in row.get("flags") or [])
        return f" (audit: {row['audit']}{'; ' + flags if flags else ''})"

    table.add_row("best pick (chosen on the board, scored once on the sealed holdout)",
                  f"{fmt(best)} by {best['researcher']}: {method_text(best)}{audit(best)}" if best else "none")
    table.add_row("naive baseline (same seeds and rows)", fmt(naive) + audit(naive))
    vs = (best or {}).get("vs")
    if vs and vs.get("diff") is not None:
        lo, hi = vs["ci"]
        table.add_row("best vs naive (paired, same rows and seeds)", f"{vs['diff']:+.3f} PGR [{lo:+.3f}, {hi:+.3f}]")
    for row in s.get("sealed_picks") or []:
        if not best or row["researcher"] != best["researcher"]:
            table.add_row(f"  {row['researcher']}'s pick (sealed)", f"{fmt(row)}: {method_text(row)}{audit(row)}")
    cand = s.get("candidates") or {}
    table.add_row("candidates compared", f"{cand.get('dev_evaluations')} on dev, {cand.get('board_submissions')} on the board")
    table.add_row("experiments / grader queries", f"{s.get('experiments')} / {s.get('grader_queries')}")
    table.add_row("findings posted", str(s.get("findings_posted")))
    if s.get("tokens_in") or s.get("usd"):
        table.add_row("tokens in / out, dollars", f"{s['tokens_in']} / {s['tokens_out']}, ${s['usd']:.2f}")
    table.add_row("wall-clock", f"{s.get('wall_seconds', 0):.0f} s")
    table.add_row("dashboard", dashboard_hint or str(s.get("dashboard")))
    table.add_row("outcomes", ", ".join(f"{k}: {v}" for k, v in (s.get("outcomes") or {}).items()))
    console.print(table)
