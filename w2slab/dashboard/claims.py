"""Forum claims checked against the grader's records.

A *claim* is a decimal number written right after "PGR" in a post's title or body (``PGR 0.43``,
``dev PGR: 0.431``) or the ``pgr`` of its metrics. A *reference* is ``#N``, ``submission N`` or
``eval N`` / ``evaluation N`` (N: an evaluation's audit id, the ``X-Audit-Id`` of its answer), plus
the post's ``submission_ids``. A claim is **verified** when one of the author's records made
before the post, among the referenced ones if the post references any, returned a PGR that agrees
with it within rounding (the intervals of the two roundings overlap: ``0.43`` matches ``0.43``,
``0.431`` and ``0.4``, not ``0.42``), or when it is the mean of per-seed values in the post's
metrics that each match one of the author's evaluations on that seed. Anything else is
**unverified**. A verified claim says that such a record exists, not that it supports the words
around the number.
"""

from __future__ import annotations

import re
from typing import Any

RULE = ("Verified: the grader returned this PGR (within rounding) to the author, before the post, for a referenced "
        "evaluation or submission (or, with no reference, for any of the author's), or it is the mean of per-seed "
        "values in the post's metrics that each match one of the author's evaluations on that seed. "
        "Unverified: no such record. A verified number exists in the grader's records; it may still be quoted out of context.")

_NUM = r"[-+\u2212]?\d*\.\d+"
_CLAIM = re.compile(r"\bPGR\b[^0-9\n+\-\u2212#\[\]{}]{0,20}?(" + _NUM + r")", re.I)
_SUB = re.compile(r"(?:\bsubmission\s*#?|(?<![\w&])#)(\d{1,12})\b", re.I)
_EVAL = re.compile(r"\beval(?:uation)?\s*#?(\d{1,12})\b", re.I)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def agrees(claim: float, digits: int, record: float, record_digits: int = 2) -> bool:
    """The two numbers' rounding intervals overlap (half a unit of the last digit each)."""
    return abs(claim - record) < 0.5 * 10 ** -digits + 0.5 * 10 ** -record_digits - 1e-9


def parse(post: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, set[int]]]:
    """The claims (value, digits, where, context) and references ({'submission': ids, 'evaluation': ids})."""
    text = _CODE.sub(" ", f"{post.get('title') or ''}\n{post.get('body') or ''}")
    claims = []
    for m in _CLAIM.finditer(text):
        raw = m.group(1).replace("\u2212", "-")
        start = max(0, m.start() - 30)
        claims.append({"value": float(raw), "text": raw, "digits": _decimals(raw),
                       "context": " ".join(text[start: m.end() + 20].split())})
    metrics = post.get("metrics") or {}
    value = metrics.get("pgr") if isinstance(metrics, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raw = repr(float(value))
        claims.append({"value": float(value), "text": raw, "digits": min(_decimals(raw), 4), "context": "metrics.pgr"})
    text_no_eval = _EVAL.sub(" ", text)
    refs = {"submission": {int(i) for i in _SUB.findall(text_no_eval)} | {int(i) for i in post.get("submission_ids") or []},
            "evaluation": {int(i) for i in _EVAL.findall(text)}}
    return claims, refs


def check(post: dict[str, Any], records: dict[str, Any]) -> dict[str, Any]:
    """Each claim with ``verified`` and the matching ``records`` [(kind, id)]; references to records
    that are not the author's (or came after the post) are listed in ``bad_refs``."""
    claims, refs = parse(post)
    t = post.get("created_at")
    before = (lambda r: True) if t is None else (lambda r: r.get("t") is None or r["t"] <= t)  # noqa: E731
    evs = {i: r for i, r in records["evaluations"].items() if before(r)}
    subs = {i: r for i, r in records["submissions"].items() if before(r)}
    bad = [("evaluation", i) for i in sorted(refs["evaluation"]) if i not in evs]
    bad += [("submission", i) for i in sorted(refs["submission"]) if i not in subs]
    referenced = bool(refs["evaluation"] or refs["submission"])
    pool = ([("evaluation", i, evs[i]) for i in sorted(refs["evaluation"]) if i in evs]
            + [("submission", i, subs[i]) for i in sorted(refs["submission"]) if i in subs]) if referenced else \
        [("evaluation", i, r) for i, r in sorted(evs.items())] + [("submission", i, r) for i, r in sorted(subs.items())]
    mean_match = _per_seed_mean(post, evs)
    for c in claims:
        hits = [(kind, i) for kind, i, r in pool if r.get("pgr") is not None and agrees(c["value"], c["digits"], r["pgr"])]
        if not hits and mean_match and agrees(c["value"], c["digits"], mean_match[0], 4):
            hits = mean_match[1]
        c["verified"], c["records"] = bool(hits), hits[:5]
    return {"claims": claims, "bad_refs": bad, "n_unverified": sum(not c["verified"] for c in claims) + len(bad), "rule": RULE}


def _per_seed_mean(post: dict[str, Any], evs: dict[int, dict[str, Any]]) -> tuple[float, list[tuple[str, int]]] | None:
    """(mean, evaluations) when the metrics' ``per_seed`` values each match an evaluation of the author on that seed."""
    per_seed = (post.get("metrics") or {}).get("per_seed") if isinstance(post.get("metrics"), dict) else None
    if not isinstance(per_seed, dict) or not per_seed:
        return None
    used: list[tuple[str, int]] = []
    for seed, value in per_seed.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        hit = next((i for i, r in sorted(evs.items()) if r.get("seed") == str(seed) and r.get("pgr") is not None
                    and agrees(float(value), 4, r["pgr"])), None)
        if hit is None:
            return None
        used.append(("evaluation", hit))
    return sum(float(v) for v in per_seed.values()) / len(per_seed), used
