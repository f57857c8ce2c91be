"""The probe detector: flags researchers whose evaluation history looks like label probing.

Every evaluation stores its fingerprint with the Hamming distance (on the scored dev rows) to the
same researcher's nearest earlier vector and to anyone else's (:mod:`w2slab.integrity.guard`).
From those, per researcher and testbed:

- ``probe-single-flips`` (high): at least ``flip_min`` evaluations differ from an earlier one of
  theirs in only 1-2 rows (systematic single-row flips); the flipped rows are the evidence;
- ``probe-near-duplicates`` (warning): at least ``near_min`` evaluations are within ``h`` rows of
  an earlier one of theirs (``h = max(3, 0.5%`` of the scored rows), repeats included);
- ``probe-coordinated`` (high): at least ``coord_min`` evaluations are within ``h`` rows (but not
  identical) of another researcher's evaluation: the same probing spread over several accounts.
  Both researchers are flagged.
- ``probe-random-vectors`` (high): at least ``random_min`` evaluations score within two sampling
  errors of chance (0.5) *and* are at least 30% of the scored rows from every earlier vector of
  theirs: fresh random vectors, the raw material of the regression (boosting) attack. (The Ladder
  is what stops that attack; this flag makes the naive form of it visible.)
- ``probe-submission-edits`` (high): at least ``submit_edit_min`` submissions differ from an
  earlier submission of theirs in only a few (row, seed) predictions (at most 2% of them, more
  than the near-duplicate refusal's radius): controlled edits of one submission, the pattern of
  a regression attack on the board labels. (The submission Ladder stops it; this makes it visible.)

Flags are computed live from the stored fingerprints (cheap aggregates), so they are always
current: ``GET /api/admin/flags``, the dashboard's researchers page and ``w2slab audit``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlmodel import col, select

from w2slab.grader.db import Fingerprint, Flag, Researcher, read_session


@dataclass(frozen=True)
class ProbeThresholds:
    flip_min: int = 5
    near_min: int = 10
    coord_min: int = 5
    random_min: int = 10
    submit_edit_min: int = 5

    def near_rows(self, n_scored: int) -> int:
        return max(3, math.ceil(0.005 * n_scored))


def probe_flags(engine: Engine, thresholds: ProbeThresholds | None = None, researcher: str | None = None) -> list[dict[str, Any]]:
    """Live probe flags from the evaluation fingerprints (newest evidence first)."""
    t = thresholds or ProbeThresholds()
    with read_session(engine) as s:
        names = dict(s.exec(select(Researcher.id, Researcher.name)).all())
        rows = s.exec(select(Fingerprint.researcher_id, Fingerprint.testbed, Fingerprint.n_rows, Fingerprint.nearest_own,
                             Fingerprint.nearest_other, Fingerprint.nearest_other_researcher_id, Fingerprint.flipped,
                             Fingerprint.created_at, Fingerprint.answer)
                      .where(Fingerprint.kind == "evaluate").order_by(col(Fingerprint.id))).all()
    stats: dict[tuple[int, str], dict[str, Any]] = defaultdict(lambda: {"n": 0, "near": 0, "flips": 0, "rows": set(), "last": 0.0,
                                                                         "partners": defaultdict(int), "h": 3, "random": 0})
    for rid, tb, n_rows, own, other, other_rid, flipped, created, answer in rows:
        st = stats[(rid, tb)]
        n_dev = n_rows // 3  # evaluations score the dev third
        h = t.near_rows(n_dev)
        st["h"], st["n"], st["last"] = h, st["n"] + 1, max(st["last"], created)
        if own is None or own >= 0.3 * n_dev:  # far from all their earlier vectors: is it chance-level too?
            acc = json.loads(answer).get("transfer_acc")
            st["random"] += isinstance(acc, (int, float)) and abs(acc - 0.5) <= 1 / math.sqrt(max(1, n_dev))
        if own is not None and own <= h:
            st["near"] += 1
        if own is not None and 1 <= own <= 2:
            st["flips"] += 1
            st["rows"].update(json.loads(flipped))
        if other is not None and 0 < other <= h and other_rid is not None:
            st["partners"][other_rid] += 1
    out: list[dict[str, Any]] = []

    def add(rid: int, tb: str, kind: str, severity: str, message: str, evidence: dict[str, Any], when: float) -> None:
        out.append({"key": f"{kind}:{tb}:{rid}", "researcher": names.get(rid, str(rid)), "researcher_id": rid, "testbed": tb,
                    "submission_id": None, "kind": kind, "severity": severity, "message": message, "evidence": evidence,
                    "created_at": when, "source": "probe-detector"})

    pairs: dict[tuple[int, str], dict[int, int]] = defaultdict(dict)
    for (rid, tb), st in stats.items():
        for other, k in st["partners"].items():
            if k >= t.coord_min:
                pairs[(rid, tb)][other] = k
                pairs[(other, tb)].setdefault(rid, 0)
    for (rid, tb), st in stats.items():
        if st["flips"] >= t.flip_min:
            rows_ = sorted(st["rows"])
            add(rid, tb, "probe-single-flips", "high",
                f"{st['flips']} of {st['n']} evaluations differ from an earlier one of theirs in only 1-2 rows "
                f"({len(rows_)} distinct rows flipped): systematic single-row probing",
                {"evaluations": st["n"], "single_flip_evaluations": st["flips"], "rows_flipped": rows_[:50],
                 "n_rows_flipped": len(rows_)}, st["last"])
        if st["random"] >= t.random_min:
            add(rid, tb, "probe-random-vectors", "high",
                f"{st['random']} of {st['n']} evaluations are chance-level vectors far from all their earlier ones: "
                "the pattern of a regression (boosting) attack on the dev labels",
                {"evaluations": st["n"], "random_vectors": st["random"]}, st["last"])
        if st["near"] >= t.near_min:
            add(rid, tb, "probe-near-duplicates", "warning",
                f"{st['near']} of {st['n']} evaluations are within {st['h']} rows of an earlier one of theirs",
                {"evaluations": st["n"], "near_duplicates": st["near"], "hamming_radius": st["h"]}, st["last"])
    for (rid, tb), partners in pairs.items():
        if not partners:
            continue
        who = ", ".join(f"{names.get(o, o)} ({k} near-identical queries)" if k else f"{names.get(o, o)}" for o, k in partners.items())
        st = stats.get((rid, tb), {"last": 0.0, "h": 3})
        add(rid, tb, "probe-coordinated", "high",
            f"evaluations near-identical (within {st['h']} rows, not equal) to other researchers' queries: {who}",
            {"partners": {names.get(o, str(o)): k for o, k in partners.items()}}, st["last"])
    out += _submission_edit_flags(engine, t, names)
    if researcher:
        out = [f for f in out if f["researcher"] == researcher]
    return sorted(out, key=lambda f: -f["created_at"])


def _submission_edit_flags(engine: Engine, t: ProbeThresholds, names: dict[int, str]) -> list[dict[str, Any]]:
    with read_session(engine) as s:
        rows = s.exec(select(Fingerprint.researcher_id, Fingerprint.testbed, Fingerprint.nearest_own, Fingerprint.bits,
                             Fingerprint.created_at).where(Fingerprint.kind == "submit").order_by(col(Fingerprint.id))).all()
    edits: dict[tuple[int, str], list[float]] = defaultdict(list)
    totals: dict[tuple[int, str], int] = defaultdict(int)
    for rid, tb, own, bits, created in rows:
        totals[(rid, tb)] += 1
        if own is not None and 0 < own <= math.ceil(0.02 * len(bits) * 8):  # bits: one per (row, seed) prediction
            edits[(rid, tb)].append(created)
    return [{"key": f"probe-submission-edits:{tb}:{rid}", "researcher": names.get(rid, str(rid)), "researcher_id": rid,
             "testbed": tb, "submission_id": None, "kind": "probe-submission-edits", "severity": "high",
             "message": f"{len(when)} of {totals[(rid, tb)]} submissions differ from an earlier one of theirs in at most 2% of "
                        "the (row, seed) predictions: controlled edits, the pattern of a regression attack on the board labels",
             "evidence": {"submissions": totals[(rid, tb)], "edited_submissions": len(when)}, "created_at": max(when),
             "source": "probe-detector"}
            for (rid, tb), when in edits.items() if len(when) >= t.submit_edit_min]


def stored_flags(engine: Engine, researcher: str | None = None, submission_id: int | None = None) -> list[dict[str, Any]]:
    with read_session(engine) as s:
        q = select(Flag, Researcher.name).join(Researcher, col(Flag.researcher_id) == col(Researcher.id), isouter=True)
        if researcher:
            q = q.where(Researcher.name == researcher)
        if submission_id is not None:
            q = q.where(Flag.submission_id == submission_id)
        rows = s.exec(q.order_by(col(Flag.created_at).desc())).all()
    return [{"key": f.key, "researcher": n, "researcher_id": f.researcher_id, "testbed": f.testbed, "submission_id": f.submission_id,
             "kind": f.kind, "severity": f.severity, "message": f.message, "evidence": json.loads(f.evidence),
             "created_at": f.created_at, "source": "audit"} for f, n in rows]


def all_flags(engine: Engine, thresholds: ProbeThresholds | None = None, researcher: str | None = None) -> list[dict[str, Any]]:
    """Stored flags (audits, refused requests) and live probe flags, newest first."""
    flags = stored_flags(engine, researcher) + probe_flags(engine, thresholds, researcher)
    return sorted(flags, key=lambda f: -f["created_at"])


def upsert_flag(s: Any, key: str, **fields: Any) -> Flag:
    """Raise (or refresh) the stored flag ``key`` inside the caller's write session."""
    from w2slab.grader.db import dumps, now

    flag = s.exec(select(Flag).where(Flag.key == key)).first()
    if "evidence" in fields and not isinstance(fields["evidence"], str):
        fields["evidence"] = dumps(fields["evidence"])
    if flag is None:
        flag = Flag(key=key, **fields)
    else:
        for k, v in fields.items():
            setattr(flag, k, v)
        flag.created_at = now()
    s.add(flag)
    return flag
