"""The grader side of the hardened feedback: per-testbed histories of fingerprints (kept in
memory, synced from the database inside each write transaction), dev answers with keyed noise,
reuse and the Ladder, and the near-duplicate check on submissions."""

from __future__ import annotations

import bisect
import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import bindparam, insert, select
from sqlmodel import Session

from w2slab.engine.stats import pgr
from w2slab.grader.db import Fingerprint, Submission, dumps, now
from w2slab.grader.scoring import PredictionError
from w2slab.integrity.feedback import default_radius, noisy_accuracy
from w2slab.integrity.fingerprint import hamming, pack, unpack

FINGERPRINTS = Fingerprint.__table__  # type: ignore[attr-defined]  # Core statements: no ORM objects on the hot path
# built once: the hot path binds parameters only
_NEW_FINGERPRINTS = (select(FINGERPRINTS.c.id, FINGERPRINTS.c.n_rows, FINGERPRINTS.c.bits, FINGERPRINTS.c.researcher_id,
                            FINGERPRINTS.c.anchor_id, FINGERPRINTS.c.answer, FINGERPRINTS.c.ladder_key)
                     .where(FINGERPRINTS.c.testbed == bindparam("testbed"), FINGERPRINTS.c.kind == bindparam("kind"),
                            FINGERPRINTS.c.id > bindparam("last")).order_by(FINGERPRINTS.c.id))
_INSERT_FINGERPRINT = insert(FINGERPRINTS)
MAX_FLIPPED = 8  # rows listed as evidence when a vector is this close to the researcher's previous one


@dataclass
class History:
    """Scored-row views of every fingerprint of one (testbed, kind), in id order."""

    testbed: str
    kind: str
    rows: np.ndarray  # rows a vector is compared on: dev rows for evaluations, every test row for submissions
    n_test: int
    n_seeds: int = 1
    ladder: float | None = None  # evaluate: the Ladder's margin (None: off)
    best: dict[tuple[int, str | None], dict[str, Any]] = field(default_factory=dict)  # Ladder: best answer per (researcher, seed)
    last_id: int = 0
    ids: list[int] = field(default_factory=list)
    rids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # researcher of each view
    fresh: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # got a fresh (not reused) answer
    answers: list[str] = field(default_factory=list)
    _views: np.ndarray | None = None
    _n: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def view(self, full: np.ndarray) -> np.ndarray:
        n = len(full) // self.n_seeds
        return np.packbits(np.concatenate([full[i * n:(i + 1) * n][self.rows] for i in range(self.n_seeds)]))

    def sync(self, s: Session) -> None:
        new = s.connection().execute(_NEW_FINGERPRINTS, {"testbed": self.testbed, "kind": self.kind, "last": self.last_id}).all()
        for fp in new:
            self.last_id = max(self.last_id, fp.id)
            if fp.n_rows != self.n_test or len(fp.bits) != -(-fp.n_rows * self.n_seeds // 8):
                continue  # from another configuration of this testbed (other data or seed count)
            v = self.view(unpack(fp.bits, fp.n_rows * self.n_seeds))
            if self._views is None:
                self._views, self._n = np.zeros((64, len(v)), dtype=np.uint8), 0
                self.rids, self.fresh = np.zeros(64, dtype=np.int64), np.zeros(64, dtype=bool)
            if self._n == len(self._views):  # grow by doubling: appends stay O(1), lookups stay vectorised
                self._views = np.concatenate([self._views, np.zeros_like(self._views)])
                self.rids, self.fresh = np.concatenate([self.rids, self.rids]), np.concatenate([self.fresh, self.fresh])
            self._views[self._n], self.rids[self._n], self.fresh[self._n] = v, fp.researcher_id, fp.anchor_id is None
            self._n += 1
            self.ids.append(fp.id)
            self.answers.append(fp.answer)
            answer = json.loads(fp.answer) if self.ladder is not None else None
            if answer is not None and self.improves((fp.researcher_id, fp.ladder_key), answer):
                self.best[(fp.researcher_id, fp.ladder_key)] = answer

    def improves(self, ladder: tuple[int, str | None], answer: dict[str, Any]) -> bool:
        """The Ladder's test: does ``answer`` beat the best dev accuracy on this (researcher, seed)
        ladder by more than the margin?"""
        best = self.best.get(ladder)
        return best is None or answer["transfer_acc"] > best["transfer_acc"] + (self.ladder or 0.0) + 1e-9

    def ladders_of(self, who: int) -> set[str | None]:
        return {key for rid, key in self.best if rid == who}

    def distances(self, v: np.ndarray, start: int = 0) -> np.ndarray:
        """Hamming distances from ``v`` to the views from index ``start`` on (views are only appended)."""
        if self._views is None or self._n <= start or self._views.shape[1] != len(v):
            return np.zeros(0, dtype=np.int64)
        return hamming(v, self._views[start: self._n])

    def nearest(self, d: np.ndarray, who: int) -> dict[str, Any]:
        rids = self.rids[: len(d)]
        out: dict[str, Any] = {"nearest_own": None, "nearest_own_id": None, "nearest_other": None,
                               "nearest_other_id": None, "nearest_other_researcher_id": None}
        for name, mask in (("own", rids == who), ("other", rids != who)):
            if mask.any():
                idx = np.flatnonzero(mask)
                i = int(idx[np.argmin(d[idx])])
                out[f"nearest_{name}"], out[f"nearest_{name}_id"] = int(d[i]), self.ids[i]
                if name == "other":
                    out["nearest_other_researcher_id"] = int(self.rids[i])
        return out

    def flipped_rows(self, v: np.ndarray, index: int | None) -> list[int]:
        """Test rows (of the first seed) where ``v`` differs from fingerprint ``index``."""
        if index is None or self._views is None:
            return []
        i = bisect.bisect_left(self.ids, index)  # ids are in increasing order
        n = len(self.rows)
        diff = np.flatnonzero(np.unpackbits(np.bitwise_xor(v, self._views[i]))[: n * self.n_seeds])
        return sorted({int(self.rows[j % n]) for j in diff})


@dataclass
class PendingEvaluation:
    """An evaluation's lock-free part (:meth:`FeedbackGuard.prepare`): hard labels, view, distances
    to the first ``len(d)`` history views, and the fresh (not reused) answer."""

    h: np.ndarray
    v: np.ndarray
    d: np.ndarray
    fresh: dict[str, Any]


class FeedbackGuard:
    """Dev answers (noise + reuse) and submission near-duplicate checks for every served testbed."""

    def __init__(self, secret: bytes, dev_noise: float = 1.0, dev_radius: int | None = None,
                 submit_radius: int | None = None, ladder: float | None = None, ladder_seeds: int = 5,
                 board_ladder: float | None = None, dup_rows: str = "all") -> None:
        self.secret, self.dev_noise, self.dev_radius, self.submit_radius = secret, dev_noise, dev_radius, submit_radius
        self.board_ladder = board_ladder  # None: auto (board_margin), 0: off (exact board numbers: red-team comparison only)
        self.dup_rows = dup_rows  # "all": near-duplicates compared on every row; "board": scored rows only (red team)
        self.ladder = ladder  # None: auto (ladder_margin), 0: off
        self.ladder_seeds = ladder_seeds  # ladders (seed keys) per researcher and testbed
        self._histories: dict[tuple[str, str], History] = {}
        self._lock = threading.Lock()

    def history(self, scorer: Any, kind: str) -> History:
        with self._lock:
            key = (scorer.name, kind)
            if key not in self._histories:
                # submissions are compared on every row, so a refusal depends on the researcher's own
                # vectors only, never on which rows are scored (no split-membership oracle)
                rows = scorer.dev if kind == "evaluate" else np.arange(scorer.n_test) if self.dup_rows == "all" else scorer.board
                self._histories[key] = History(scorer.name, kind, np.asarray(rows), scorer.n_test,
                                               1 if kind == "evaluate" else len(scorer.seeds),
                                               ladder=self.ladder_margin(scorer) if kind == "evaluate" else None)
            return self._histories[key]

    def ladder_margin(self, scorer: Any) -> float | None:
        """The Ladder's margin in dev accuracy: the setting, or by default one sampling error of an
        accuracy near 0.5 on the dev half (0.5 / sqrt(n_dev), to 2 decimals, at least 0.01); None: off."""
        if self.ladder is None:
            return max(0.01, round(0.5 / math.sqrt(max(1, len(scorer.dev))), 2))
        return self.ladder or None

    def radius(self, scorer: Any) -> int:
        return default_radius(len(scorer.dev)) if self.dev_radius is None else self.dev_radius

    def sub_radius(self, scorer: Any) -> int:
        if self.submit_radius is not None:
            return self.submit_radius
        return max(2, math.ceil(0.005 * len(self.history(scorer, "submit").rows) * len(scorer.seeds)))

    # ------------------------------------------------------------ the board

    def board_margin(self, scorer: Any) -> float | None:
        """The submission Ladder's margin in board accuracy: by default one sampling error of an
        accuracy near 0.5 on the board third (0.5 / sqrt(n_board), to 2 decimals, at least 0.01)."""
        if self.board_ladder is None:
            return max(0.01, round(0.5 / math.sqrt(max(1, len(scorer.board))), 2))
        return self.board_ladder or None

    def board_answer(self, s: Session, who: int, scorer: Any, score: Any) -> dict[str, Any]:
        """What a researcher is shown of a submission's board score (``score``: a PGRInterval).

        A Ladder (Blum & Hardt 2015) per (researcher, testbed): a submission gets its own numbers,
        rounded to 2 decimals, only when its board accuracy beats the researcher's best by more than
        the margin; otherwise it is shown the best's numbers with ``improved: false``. Controlled
        changes to a submission then move no answer, so exact counts of correct rows never leave
        the grader. Replayed from the stored real scores (the same answers after restarts and
        across workers). Off (margin 0): the real numbers to 3 decimals (red-team comparison only)."""
        margin = self.board_margin(scorer)
        if margin is None:
            return {**_rounded(score, 3), "improved": True, "ladder": None}
        w, c = scorer.baseline(scorer.board)
        extra = {"ladder": margin, "ladder_pgr": round(margin / (c - w), 2) if c > w else None}
        t = Submission.__table__  # type: ignore[attr-defined]
        rows = s.connection().execute(select(t.c.transfer_acc, t.c.shown).where(
            t.c.researcher_id == who, t.c.testbed == scorer.name).order_by(t.c.id)).all()
        best_acc, best_shown = None, None
        for acc, shown in rows:  # replay: the improvements are the rungs
            if best_acc is None or acc > best_acc + margin + 1e-9:
                best_acc, best_shown = acc, json.loads(shown or "{}")
        if best_acc is None or score.transfer_acc > best_acc + margin + 1e-9:
            return {**_rounded(score, 2), "improved": True, **extra}
        return {**{k: best_shown.get(k) for k in ("pgr", "pgr_ci", "transfer_acc")}, "improved": False, **extra,
                "note": f"not better than your best board accuracy by more than {margin}: these are your best's numbers"}

    # ------------------------------------------------------------ evaluations

    def fresh_answer(self, scorer: Any, p1: np.ndarray, view: np.ndarray) -> dict[str, Any]:
        acc = scorer.acc(p1, scorer.dev)
        noisy = noisy_accuracy(acc, len(scorer.dev), self.dev_noise, self.secret, scorer.name, view.tobytes())
        g = pgr(noisy, scorer.weak_dev, scorer.ceiling_dev)
        return {"pgr": None if math.isnan(g) else round(g, 2), "transfer_acc": round(noisy, 2)}

    def prepare(self, scorer: Any, p1: np.ndarray) -> PendingEvaluation:
        """The work of an evaluation that needs no lock: its view, its fresh answer and its distances
        to the history known so far (:meth:`evaluate` adds the rows synced since)."""
        h = np.asarray(p1) > 0.5
        hist = self.history(scorer, "evaluate")
        v = hist.view(h)
        with hist.lock:
            d = hist.distances(v)
        return PendingEvaluation(h, v, d, self.fresh_answer(scorer, p1, v))

    def evaluate(self, s: Session, who: int, scorer: Any, p1: np.ndarray, seed: int | None = None,
                 pending: PendingEvaluation | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The answer to one evaluation and its fingerprint row's values, for :meth:`record` in the
        same write transaction (so reuse decisions are serialised). ``seed`` picks the ladder: one
        best per (researcher, seed), at most ``ladder_seeds`` seeds (the information a researcher
        can draw through ladders grows with their number, so it is capped). ``pending``: from
        :meth:`prepare`, called before the write lock was taken (shortens the serial section)."""
        p = pending or self.prepare(scorer, p1)
        h, v = p.h, p.v
        hist = self.history(scorer, "evaluate")
        key = None if seed is None else str(seed)
        with hist.lock:
            hist.sync(s)
            if hist.ladder is not None and key not in (mine := hist.ladders_of(who)) and len(mine) >= self.ladder_seeds:
                raise PredictionError(f"seed {seed}: you already climb {len(mine)} ladders (seeds "
                                      f"{sorted(map(str, mine))}) on {scorer.name}, the most the grader keeps per researcher; "
                                      "evaluate one of those seeds")
            d = hist.distances(v, start=len(p.d))
            d = np.concatenate([p.d, d]) if len(p.d) else d
            near = hist.nearest(d, who)
            radius = self.radius(scorer)
            anchor = None
            if radius > 0 and len(d):
                cand = np.flatnonzero(hist.fresh[: len(d)] & (d <= radius))
                if len(cand):
                    anchor = int(cand[np.argmin(d[cand])])
            if anchor is not None:
                answer, anchor_id = json.loads(hist.answers[anchor]), hist.ids[anchor]
            else:
                answer, anchor_id = p.fresh, None
            own = near["nearest_own"]
            flipped = hist.flipped_rows(v, near["nearest_own_id"]) if own is not None and 0 < own <= MAX_FLIPPED else []
            shown = answer
            if hist.ladder is not None:  # the stored answer stays the real one: sync replays the Ladder from it
                margin = {"ladder": hist.ladder, "ladder_pgr": round(hist.ladder / (scorer.ceiling_dev - scorer.weak_dev), 2)
                          if scorer.ceiling_dev > scorer.weak_dev else None}
                where = "" if key is None else f" on seed {key}"
                shown = ({**answer, "improved": True, **margin} if hist.improves((who, key), answer) else
                         {**hist.best[(who, key)], "improved": False, **margin,
                          "note": f"not better than your best dev accuracy{where} by more than {hist.ladder}: "
                                  "these are your best's numbers"})
        return shown, dict(researcher_id=who, testbed=scorer.name, kind="evaluate", n_rows=len(h), bits=pack(h),
                           anchor_id=anchor_id, answer=dumps(answer), flipped=dumps(flipped), ladder_key=key, **near)

    @staticmethod
    def record(s: Session, fingerprint: dict[str, Any], audit_id: int | None) -> int:
        """Insert a fingerprint row (from :meth:`evaluate` or :meth:`submit_fingerprint`); its id."""
        row = {**fingerprint, "audit_id": audit_id, "created_at": now()}
        return s.connection().execute(_INSERT_FINGERPRINT, row).inserted_primary_key[0]

    # ------------------------------------------------------------ submissions

    def submission_view(self, scorer: Any, hard_by_seed: list[np.ndarray]) -> tuple[np.ndarray, History]:
        hist = self.history(scorer, "submit")
        return hist.view(np.concatenate(hard_by_seed)), hist

    def near_duplicate(self, s: Session, scorer: Any, hard_by_seed: list[np.ndarray]) -> tuple[int, int] | None:
        """(fingerprint id, distance) of an earlier submission whose predictions (every row, every seed) differ
        from these in 1..radius rows (over all seeds), else None."""
        v, hist = self.submission_view(scorer, hard_by_seed)
        radius = self.sub_radius(scorer)
        with hist.lock:
            hist.sync(s)
            d = hist.distances(v)
            hit = np.flatnonzero((d >= 1) & (d <= radius))
            if radius <= 0 or not len(hit):
                return None
            i = int(hit[np.argmin(d[hit])])
            return hist.ids[i], int(d[i])

    def submit_fingerprint(self, s: Session, who: int, scorer: Any, hard_by_seed: list[np.ndarray]) -> dict[str, Any]:
        """The fingerprint row's values of a submission, for :meth:`record`."""
        v, hist = self.submission_view(scorer, hard_by_seed)
        with hist.lock:
            hist.sync(s)
            d = hist.distances(v)
            near = hist.nearest(d, who)
            own = near["nearest_own"]
            flipped = hist.flipped_rows(v, near["nearest_own_id"]) if own is not None and 0 < own <= MAX_FLIPPED else []
        full = np.concatenate(hard_by_seed)
        return dict(researcher_id=who, testbed=scorer.name, kind="submit", n_rows=len(hard_by_seed[0]), bits=pack(full),
                    flipped=dumps(flipped), **near)


def _rounded(score: Any, digits: int) -> dict[str, Any]:
    r = lambda x: None if x is None or not math.isfinite(x) else round(float(x), digits)  # noqa: E731
    return {"pgr": r(score.pgr), "pgr_ci": [r(score.lo), r(score.hi)], "transfer_acc": r(score.transfer_acc)}
