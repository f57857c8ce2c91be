"""The run's reference and result on the grader: the naive baseline submitted at the start,
and at the end, once the submissions' audits are done, every researcher's pick scored once on
the sealed holdout (the headline pick is chosen on the board)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from w2slab.researchers.client import GraderClient, GraderError
from w2slab.researchers.contract import ResearcherConfig

NAIVE_METHOD = Path(__file__).with_name("naive_method.py")  # a method file, copied into the workspace
NAIVE_NAME = "naive (reference)"


def submit_naive_baseline(admin: GraderClient, template: ResearcherConfig, workdir: Path, testbed: str,
                          register: Callable[[str], tuple[str, str]]) -> dict[str, Any]:
    """Submit plain hard-label training for the server's seeds as researcher ``naive-baseline``:
    the reference on the board and the sealed holdout (same rows, same seeds). Reused when the
    grader already holds one (a resumed run, or a second run on the same grader)."""
    try:
        board = admin.leaderboard(testbed)  # either list: an audit may have moved the baseline off the W2S board
        existing = [r for r in board["rows"] + board.get("teacher_free", [])
                    if r["researcher"].startswith("naive-baseline") and r["method_name"] == NAIVE_NAME]
        if existing:
            return {"pgr": existing[0]["pgr"], "pgr_ci": existing[0]["pgr_ci"], "reused": True}
        folder = workdir / "naive-baseline"
        ws = folder / "workspace"
        (ws / "snapshot").mkdir(parents=True, exist_ok=True)
        method_file = ws / "snapshot" / "naive.py"
        method_file.write_text(NAIVE_METHOD.read_text())
        cfg = ResearcherConfig.from_dict({**template.to_dict(), "name": "naive-baseline", "workspace": str(ws),
                                          "transcript": str(folder / "transcript.jsonl"),
                                          "usage_path": str(folder / "usage.json")})
        res = cfg.run(cfg.predict_argv(method_file, cfg.submit_seeds, ws / "predictions.json"))
        if not res.ok:
            return {"error": (res.stderr or res.stdout)[-500:]}
        preds = json.loads((ws / "predictions.json").read_text())["predictions"]
        name, token = register("naive-baseline")
        c = GraderClient(admin.url, token)
        try:
            snap = c.upload_snapshot(ws / "snapshot", note="naive: hard weak labels, strong defaults (reference)")
            sub = c.submit(testbed, NAIVE_NAME, snap["sha256"], preds)
        finally:
            c.close()
        return {"pgr": sub["pgr"], "pgr_ci": sub["pgr_ci"], "submission_id": sub["id"], "researcher": name}
    except (GraderError, OSError, ValueError, KeyError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def wait_for_audits(admin: GraderClient, testbed: str, timeout: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every submission on the testbed once its audit has finished (or ``timeout`` passed),
    with a countdown in the log: the summary crowns no submission that an audit would flag."""
    deadline, said = time.monotonic() + timeout, 0.0
    board: list[dict[str, Any]] = []
    while True:
        try:
            board = admin.submissions(testbed)
        except (GraderError, KeyError):
            return board
        pending = [r["id"] for r in board if r.get("audit") == "auditing"]
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            if pending:
                log(f"audits of {len(pending)} submission(s) still running after {timeout:.0f} s: the summary says so")
            return board
        if time.monotonic() - said >= 10:
            said = time.monotonic()
            log(f"waiting for {len(pending)} audit(s) to finish (at most {left:.0f} s more)")
        time.sleep(1.0)


def summarize(admin: GraderClient, testbed: str, researchers: set[str], total: dict[str, Any], audit_wait: float,
              log: Callable[[str], None]) -> dict[str, Any]:
    """The run's result on the sealed holdout. Every researcher's pick (or best board submission)
    is scored once on the sealed third; the headline is the pick of the researcher with the best
    board score (chosen on the board, so its sealed score is free of the winner's curse), with
    its paired interval against the naive baseline on the same sealed rows and seeds.
    ``total``: status.json's totals (experiments, queries, tokens, dollars)."""
    board = wait_for_audits(admin, testbed, audit_wait, log)
    sealed: dict[str, Any] = {"rows": []}
    server: dict[str, dict[str, Any]] = {}
    try:
        server = {r["name"]: r for r in admin.researchers()}
        admin.seal(testbed)
        naive_pick = next((r for r in admin.sealed(testbed)["rows"] if r["method_name"] == NAIVE_NAME), None)
        sealed = admin.sealed(testbed, vs=naive_pick["submission_id"] if naive_pick else None)
    except (GraderError, KeyError) as e:
        log(f"could not seal the holdout: {e}")
        naive_pick = None
    mine = [r for r in board if r["researcher"] in researchers]
    picks = [r for r in sealed["rows"] if r["researcher"] in researchers]
    head = max(picks, key=lambda r: (r.get("board_pgr") is not None, r.get("board_pgr") or 0, -r["submission_id"]), default=None)
    subs = {r["id"]: r for r in board}
    keys = ("researcher", "submission_id", "method_name", "pgr", "pgr_ci", "transfer_acc", "board_pgr", "chosen_by", "vs")

    def with_audit(row: dict[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        sub = subs.get(row["submission_id"], {})
        return {**{k: row.get(k) for k in keys}, "audit": sub.get("audit"), "flags": sub.get("flags"),
                "teacher_free": sub.get("teacher_free")}

    return {
        "testbed": testbed,
        "scoring": "sealed holdout, scored once per researcher; PGR with 95% paired bootstrap intervals over test rows "
                   "and seeds; the headline pick is chosen on the board",
        "sealed_rows": sealed.get("rows_scored"),
        "best": with_audit(head),
        "naive": with_audit(naive_pick),
        "sealed_picks": [with_audit(r) for r in picks],
        "candidates": {"dev_evaluations": sum((server.get(n) or {}).get("evaluations_total", 0) for n in researchers),
                       "board_submissions": len(mine)},
        "experiments": total["experiments"], "grader_queries": total["grader_queries"],
        "findings_posted": sum((server.get(n) or {}).get("posts", 0) for n in researchers) or total["findings_posted"],
        "submissions": len(mine), "tokens_in": total["tokens_in"], "tokens_out": total["tokens_out"], "usd": total["usd"],
    }
