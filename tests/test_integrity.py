"""Research integrity, in-process and fast: the keyed dev noise, answer reuse, the probe detector,
the submission near-duplicate check, the method-file convention and every audit check on
deliberately hacked submissions (the sandboxed end-to-end runs are in test_redteam.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from w2slab.grader.scoring import Scorer
from w2slab.integrity.feedback import (
    default_radius,
    keyed_normal,
    noise_sd,
    noisy_accuracy,
)

SECRET = b"test-secret"


def make_scorer(n: int = 400, seed: int = 0, name: str = "toy", n_seeds: int = 5) -> Scorer:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    perm = rng.permutation(n)
    dev, board, sealed = np.sort(perm[: n // 2]), np.sort(perm[n // 2: 3 * n // 4]), np.sort(perm[3 * n // 4:])
    weak, ceiling = np.zeros((3, n), dtype=bool), np.zeros((3, n), dtype=bool)
    for rows in (dev, board, sealed):  # exactly 0.7 and 0.9 on each part
        weak[:, rows] = (np.arange(len(rows)) % 10 < 7)
        ceiling[:, rows] = (np.arange(len(rows)) % 10 < 9)
    return Scorer(name=name, kind="pairwise", labels=labels, dev=dev, board=board, sealed=sealed, baseline_seeds=[1, 2, 3],
                  weak_correct=weak, ceiling_correct=ceiling, seeds=[11, 22, 33, 44, 55][:n_seeds], fingerprint="ab" * 32)


def noisy_copy(y: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random(len(y)) < rate, 1 - y, y).astype(float)


# ---------------------------------------------------------------- the noise


def test_noise_is_deterministic_per_vector_and_fresh_for_a_one_row_flip() -> None:
    bits = np.packbits(np.arange(200) % 3 == 0).tobytes()
    flipped = bytearray(bits)
    flipped[7] ^= 1
    a = noisy_accuracy(0.75, 200, 1.0, SECRET, "toy", bits)
    assert a == noisy_accuracy(0.75, 200, 1.0, SECRET, "toy", bits)  # asking again: the same answer
    assert a != noisy_accuracy(0.75, 200, 1.0, SECRET, "toy", bytes(flipped))  # one row changed: another draw
    assert a != noisy_accuracy(0.75, 200, 1.0, b"other secret", "toy", bits)  # keyed by the server secret
    assert a != noisy_accuracy(0.75, 200, 1.0, SECRET, "other-testbed", bits)
    # exact at the extremes (nothing to hide), off when the scale is 0
    assert noisy_accuracy(1.0, 200, 1.0, SECRET, "toy", bits) == 1.0 and noisy_accuracy(0.0, 200, 1.0, SECRET, "toy", bits) == 0.0
    assert noisy_accuracy(0.75, 200, 0.0, SECRET, "toy", bits) == 0.75


def test_noise_has_the_documented_size() -> None:
    draws = np.array([keyed_normal(SECRET, "dev", "toy", i.to_bytes(4, "big")) for i in range(4000)])
    assert abs(draws.mean()) < 0.06 and 0.93 < draws.std() < 1.07
    # one sampling error of the dev accuracy: 0.01-0.02 on dev halves of 500-2500 rows
    assert 0.015 < noise_sd(0.75, 500, 1.0) < 0.02 and 0.008 < noise_sd(0.75, 2500, 1.0) < 0.01
    assert default_radius(60) == 2 and default_radius(500) == 5 and default_radius(2500) == 25


# ---------------------------------------------------------------- guard and detector on a real database


@pytest.fixture
def db(tmp_path: Path):
    from w2slab.grader.auth import create_researcher
    from w2slab.grader.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    migrate(engine)
    ids = {name: create_researcher(engine, name)[0].id for name in ("alice", "mallory", "eve", "zed")}
    yield engine, ids
    engine.dispose()


def ask(engine, guard, who: int, sc: Scorer, p1: np.ndarray, seed: int | None = None):  # type: ignore[no-untyped-def]
    from w2slab.grader.db import write_session

    with write_session(engine) as s:
        answer, fp = guard.evaluate(s, who, sc, p1, seed)
        fp["id"] = guard.record(s, fp, None)
        s.commit()
        return answer, fp


def test_answers_reused_within_the_radius_and_fresh_beyond(db) -> None:  # type: ignore[no-untyped-def]
    from w2slab.integrity.guard import FeedbackGuard

    engine, ids = db
    sc, guard = make_scorer(), FeedbackGuard(SECRET, ladder=0)  # the Ladder off: reuse alone
    rng = np.random.default_rng(1)
    base = noisy_copy(sc.labels, 0.25, rng)
    a0, fp0 = ask(engine, guard, ids["alice"], sc, base)
    assert fp0["anchor_id"] is None and set(a0) == {"pgr", "transfer_acc"}
    assert ask(engine, guard, ids["alice"], sc, base)[0] == a0  # the same question, the same answer
    for i in sc.dev[:5]:  # single-row flips on dev rows: the base's answer, whoever asks
        w = base.copy()
        w[i] = 1 - w[i]
        ans, fp = ask(engine, guard, ids["mallory"], sc, w)
        assert ans == a0 and fp["anchor_id"] == fp0["id"]
    w = base.copy()
    w[sc.board[:50]] = 1 - w[sc.board[:50]]  # unscored rows: same dev vector, same answer
    assert ask(engine, guard, ids["alice"], sc, w)[0] == a0
    far = base.copy()
    far[sc.dev[:20]] = 1 - far[sc.dev[:20]]  # 20 dev rows away: a fresh, noisy answer
    ans, fp = ask(engine, guard, ids["alice"], sc, far)
    assert fp["anchor_id"] is None
    exact = sc.acc(far, sc.dev)
    assert abs(ans["transfer_acc"] - exact) < 4 * noise_sd(exact, len(sc.dev), 1.0) + 0.006
    # without hardening the guard answers like the plain scorer
    plain = FeedbackGuard(SECRET, dev_noise=0, dev_radius=0, ladder=0)
    assert ask(engine, plain, ids["zed"], sc, base)[0] == sc.evaluate(base)


def test_ladder_answers_only_improvements_and_replays_from_the_database(db) -> None:  # type: ignore[no-untyped-def]
    from w2slab.grader.scoring import PredictionError
    from w2slab.integrity.guard import FeedbackGuard

    engine, ids = db
    sc, guard = make_scorer(), FeedbackGuard(SECRET, dev_noise=0, dev_radius=0, ladder=0.01)
    rng = np.random.default_rng(4)
    mid, worse, better = (noisy_copy(sc.labels, r, rng) for r in (0.25, 0.40, 0.10))
    first = ask(engine, guard, ids["alice"], sc, mid)[0]
    assert first["improved"] is True and first["transfer_acc"] == round(sc.acc(mid, sc.dev), 2)
    ans, fp = ask(engine, guard, ids["alice"], sc, worse)
    assert ans["improved"] is False and (ans["pgr"], ans["transfer_acc"]) == (first["pgr"], first["transfer_acc"])
    assert json.loads(fp["answer"])["transfer_acc"] == round(sc.acc(worse, sc.dev), 2)  # the real answer is kept for audit
    assert ask(engine, guard, ids["eve"], sc, worse)[0]["improved"] is True  # each researcher climbs their own ladder
    top = ask(engine, guard, ids["alice"], sc, better)[0]
    assert top["improved"] is True and top["transfer_acc"] > first["transfer_acc"]
    nudged = better.copy()
    wrong = np.flatnonzero(nudged[sc.dev] != sc.labels[sc.dev])[:1]
    nudged[sc.dev[wrong]] = sc.labels[sc.dev[wrong]]  # one more dev row right: within the margin, nothing learned
    assert ask(engine, guard, ids["alice"], sc, nudged)[0] == {**top, "improved": False, "note": ANY_NOTE}
    assert top["ladder"] == 0.01 and top["ladder_pgr"] == 0.05  # the margin, also in PGR (dev gap 0.2)
    # another process (a second uvicorn worker, a restart) replays the same ladder from the database
    again = FeedbackGuard(SECRET, dev_noise=0, dev_radius=0, ladder=0.01)
    assert ask(engine, again, ids["alice"], sc, worse)[0]["transfer_acc"] == top["transfer_acc"]
    # one ladder per seed (recipes compared on the same teacher seed), and only so many seeds
    capped = FeedbackGuard(SECRET, dev_noise=0, dev_radius=0, ladder=0.01, ladder_seeds=2)
    assert ask(engine, capped, ids["zed"], sc, mid, seed=1)[0]["improved"] is True
    assert ask(engine, capped, ids["zed"], sc, worse, seed=1)[0]["improved"] is False  # worse on seed 1's ladder
    assert ask(engine, capped, ids["zed"], sc, worse, seed=2)[0]["improved"] is True  # seed 2 climbs its own
    with pytest.raises(PredictionError, match="ladders"):
        ask(engine, capped, ids["zed"], sc, worse, seed=3)
    # on by default, with one sampling error of the dev accuracy as the margin (200 dev rows: 0.04)
    assert FeedbackGuard(SECRET).ladder_margin(sc) == 0.04 and FeedbackGuard(SECRET, ladder=0).ladder_margin(sc) is None


def test_regression_attack_learns_nothing_through_the_ladder_and_is_flagged(db) -> None:  # type: ignore[no-untyped-def]
    """Blum & Hardt's boosting attack: fresh random vectors, labels from answer/flip correlations.
    Without the Ladder it reads most dev labels; with it (the default) it is at chance. Either way
    the probe detector flags the chance-level random vectors."""
    from w2slab.integrity.guard import FeedbackGuard
    from w2slab.integrity.probes import probe_flags

    engine, ids = db
    sc = make_scorer()
    dev = sc.dev
    for who, guard in (("mallory", FeedbackGuard(SECRET, ladder=0)), ("eve", FeedbackGuard(SECRET))):
        rng = np.random.default_rng(5)
        base = rng.integers(0, 2, sc.n_test).astype(float)
        flips, answers = [], []
        for _ in range(250):
            f = rng.random(sc.n_test) < 0.5
            flips.append(f)
            answers.append(ask(engine, guard, ids[who], sc, np.where(f, 1 - base, base))[0]["transfer_acc"])
        F, a = np.asarray(flips, dtype=float), np.asarray(answers)
        corr = (F - F.mean(0)).T @ (a - a.mean())
        guess = np.where(corr > 0, 1 - base, base)
        right = float((guess[dev] == sc.labels[dev]).mean()) - float((base[dev] == sc.labels[dev]).mean())
        if who == "mallory":
            assert right > 0.15  # the hole the Ladder closes: most dev labels read off plain noisy answers
        else:
            assert abs(right) < 0.08  # through the Ladder: no better than the starting vector
    flagged = {f["researcher"] for f in probe_flags(engine) if f["kind"] == "probe-random-vectors"}
    assert flagged == {"mallory", "eve"}


class _AnyNote(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and "not better than your best" in other


ANY_NOTE = _AnyNote()


def test_probe_detector_flags_flips_and_coordination_not_honest_work(db) -> None:  # type: ignore[no-untyped-def]
    from w2slab.integrity.guard import FeedbackGuard
    from w2slab.integrity.probes import probe_flags

    engine, ids = db
    sc, guard = make_scorer(), FeedbackGuard(SECRET)
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, sc.n_test).astype(float)
    ask(engine, guard, ids["mallory"], sc, base)
    for i in sc.dev[:8]:  # mallory: systematic single-row flips
        w = base.copy()
        w[i] = 1 - w[i]
        ask(engine, guard, ids["mallory"], sc, w)
    for i in sc.dev[8:16]:  # eve: the same base, other rows (coordinated with mallory)
        w = base.copy()
        w[i] = 1 - w[i]
        ask(engine, guard, ids["eve"], sc, w)
    for k in range(12):  # alice: genuinely different methods
        ask(engine, guard, ids["alice"], sc, noisy_copy(sc.labels, 0.1 + 0.02 * k, rng))
    flags = probe_flags(engine)
    kinds = {(f["researcher"], f["kind"]) for f in flags}
    assert ("mallory", "probe-single-flips") in kinds and ("eve", "probe-coordinated") in kinds
    assert ("mallory", "probe-coordinated") in kinds  # both sides of the coordination
    assert not [f for f in flags if f["researcher"] == "alice"]
    single = next(f for f in flags if f["researcher"] == "mallory" and f["kind"] == "probe-single-flips")
    assert set(single["evidence"]["rows_flipped"]) == {int(i) for i in sc.dev[:8]}  # the flipped rows are the evidence


def test_near_duplicate_submissions_are_detected(db) -> None:  # type: ignore[no-untyped-def]
    from w2slab.grader.db import read_session, write_session
    from w2slab.integrity.guard import FeedbackGuard

    engine, ids = db
    sc, guard = make_scorer(), FeedbackGuard(SECRET)
    rng = np.random.default_rng(3)
    preds = [noisy_copy(sc.labels, 0.2, rng) > 0.5 for _ in sc.seeds]
    with write_session(engine) as s:
        guard.record(s, guard.submit_fingerprint(s, ids["alice"], sc, preds), None)
        s.commit()
    with read_session(engine) as s:
        assert guard.near_duplicate(s, sc, preds) is None  # identical: no new information, allowed
        one = [p.copy() for p in preds]
        one[2][sc.board[0]] = not one[2][sc.board[0]]
        hit = guard.near_duplicate(s, sc, one)
        assert hit is not None and hit[1] == 1
        for rows in (sc.dev, sc.sealed):  # every row counts: a refusal says nothing about which rows are scored
            unscored = [p.copy() for p in preds]
            unscored[0][rows[0]] = not unscored[0][rows[0]]
            assert guard.near_duplicate(s, sc, unscored) == hit
        board_only = FeedbackGuard(SECRET, dup_rows="board")  # the red team's defence-off mode: scored rows only
        unscored = [p.copy() for p in preds]
        unscored[0][sc.dev[0]] = not unscored[0][sc.dev[0]]
        assert board_only.near_duplicate(s, sc, unscored) is None and board_only.near_duplicate(s, sc, one) is not None
        other = [noisy_copy(sc.labels, 0.2, rng) > 0.5 for _ in sc.seeds]
        assert guard.near_duplicate(s, sc, other) is None


# ---------------------------------------------------------------- snapshots


def _tgz(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_method_file_convention(tmp_path: Path) -> None:
    from w2slab.integrity.audit import AuditError, find_method_file, unpack_snapshot

    m = b"from w2slab.methods import method\n\n@method('x')\ndef x(ctx):\n    pass\n"
    cases = {
        "root": ([("method.py", b"pass\n"), ("other.py", m)], "method.py"),
        "one-folder": ([("proj/method.py", b"pass\n"), ("proj/util.py", b"")], "proj/method.py"),
        "single-marked": ([("ideas/mine.py", m), ("ideas/util.py", b"X = 1\n"), ("NOTES.md", b"")], "ideas/mine.py"),
        "run-function": ([("a.py", b"def run(ctx):\n    pass\n"), ("b.py", b"")], "a.py"),
    }
    for name, (members, want) in cases.items():
        unpack_snapshot(_tgz(members), tmp_path / name)
        assert find_method_file(tmp_path / name).relative_to((tmp_path / name).resolve()).as_posix() == want, name
    for name, members in {"two": [("a.py", m), ("b.py", m)], "none": [("README.md", b"hi")]}.items():
        unpack_snapshot(_tgz(members), tmp_path / name)
        with pytest.raises(AuditError, match="method.py"):
            find_method_file(tmp_path / name)
    from w2slab.grader.codestore import ArchiveError

    with pytest.raises(ArchiveError, match="leaving the archive root"):
        unpack_snapshot(_tgz([("../evil.py", b"x")]), tmp_path / "evil")
    assert not (tmp_path / "evil.py").exists()


# ---------------------------------------------------------------- every audit check on hacked submissions


def job(preds: dict[int, np.ndarray]) -> dict:
    return {"predictions": {str(s): v.tolist() for s, v in preds.items()}, "notes": "{}"}


def honest_world(sc: Scorer, rng: np.random.Generator) -> tuple[dict[int, np.ndarray], dict]:
    """What an honest W2S method looks like: per-seed predictions, reproducible, and garbage
    when the teacher is shuffled or constant."""
    sub = {s: noisy_copy(sc.labels, 0.15, rng) for s in sc.seeds}
    jobs = {"real": job(sub),
            "shuffled": job({s: rng.integers(0, 2, sc.n_test).astype(float) for s in sc.seeds[:2]}),
            "constant": job({s: np.zeros(sc.n_test) for s in sc.seeds[:2]})}
    return sub, jobs


def kinds(a) -> set[str]:  # type: ignore[no-untyped-def]
    return {f["kind"] for f in a.flags}


def test_honest_submission_has_no_flags_and_per_seed_pgr() -> None:
    from w2slab.integrity.audit import assess

    sc, other = make_scorer(), make_scorer(200, seed=5, name="toy2")
    rng = np.random.default_rng(4)
    sub, jobs = honest_world(sc, rng)
    jobs["gen:toy2"] = job({s: noisy_copy(other.labels, 0.2, rng) for s in other.seeds[:2]})
    a = assess(sc, sub, jobs, {"toy2": other}, [], [], 2, SECRET)
    assert a.flags == [] and not a.teacher_free
    assert len(a.checks["seeds"]["submitted_pgr"]) == 5 and a.checks["seeds"]["rerun_pgr"] == a.checks["seeds"]["submitted_pgr"]
    assert a.checks["reproducibility"]["ok"] and all(r["agreement"] == 1.0 for r in a.checks["reproducibility"]["per_seed"])
    assert a.checks["generalisation"]["toy2"]["pgr"] is not None and len(a.checks["generalisation"]["toy2"]["per_seed"]) == 2
    assert a.public["pgr_on_toy2"] == round(a.public["pgr_on_toy2"], 1)  # researchers only see coarse numbers


def test_audit_flags_fake_predictions() -> None:
    from w2slab.integrity.audit import assess

    sc = make_scorer()
    rng = np.random.default_rng(5)
    sub, jobs = honest_world(sc, rng)
    fake = {s: noisy_copy(sc.labels, 0.02, rng) for s in sc.seeds}  # much better than what the code produces
    a = assess(sc, fake, jobs, {}, [], [], 2, SECRET)
    assert "irreproducible" in kinds(a)
    # within tolerance (one row of 400 differs per seed): not flagged
    close = {s: v.copy() for s, v in sub.items()}
    for s in sc.seeds:
        close[s][0] = 1 - close[s][0]
    assert "irreproducible" not in kinds(assess(sc, close, jobs, {}, [], [], 2, SECRET))
    # code that fails on the kit is irreproducible too
    broken = dict(jobs, real={"error": "ValueError: boom"})
    assert "irreproducible" in kinds(assess(sc, sub, broken, {}, [], [], 2, SECRET))


def test_audit_flags_teacher_free_methods() -> None:
    from w2slab.integrity.audit import assess

    sc = make_scorer()
    rng = np.random.default_rng(6)
    good = {s: noisy_copy(sc.labels, 0.05, rng) for s in sc.seeds}  # a lexicon: same answers whatever the teacher
    jobs = {"real": job(good), "shuffled": job({s: good[s] for s in sc.seeds[:2]}), "constant": job({s: good[s] for s in sc.seeds[:2]})}
    a = assess(sc, good, jobs, {}, [], [], 2, SECRET)
    assert "teacher-free" in kinds(a) and a.teacher_free
    assert a.checks["teacher"]["shuffled"]["agreement_with_real"] == 1.0
    # the PGR survives a shuffled teacher although the predictions change: still teacher-free
    survive = {s: noisy_copy(sc.labels, 0.1, rng) for s in sc.seeds[:2]}
    a = assess(sc, good, dict(jobs, shuffled=job(survive), constant={"error": "x"}), {}, [], [], 2, SECRET)
    assert a.teacher_free and a.checks["teacher"]["shuffled"]["pgr"] > 0.1
    # majority answer: constant predictions
    const = {s: np.zeros(sc.n_test) for s in sc.seeds}
    a = assess(sc, const, {"real": job(const), "shuffled": job({s: const[s] for s in sc.seeds[:2]})}, {}, [], [], 2, SECRET)
    assert {"constant-predictions", "teacher-free", "seed-insensitive"} <= kinds(a)


def test_audit_flags_label_access_and_seed_cherry_picking() -> None:
    from w2slab.integrity.audit import assess

    sc = make_scorer()
    rng = np.random.default_rng(7)
    sub, jobs = honest_world(sc, rng)
    events = [{"kind": "missing-path", "detail": "/data/toy/test.jsonl"}, {"kind": "network", "detail": "socket.connect 127.0.0.1"}]
    a = assess(sc, sub, jobs, {}, events, [], 2, SECRET)
    assert kinds(a) == {"label-access"} and "/data/toy/test.jsonl" in a.flags[0]["message"]
    a = assess(sc, sub, jobs, {}, [], ["/secret/labels.jsonl"], 2, SECRET)
    assert kinds(a) == {"label-access"}
    assert kinds(assess(sc, sub, jobs, {}, [], ["/usr/share/zoneinfo/UTC"], 2, SECRET)) == set()  # system noise is not evidence
    # the best seed's predictions copied to every seed: the re-run disagrees and every seed is the same
    best = {s: sub[sc.seeds[0]].copy() for s in sc.seeds}
    assert {"irreproducible", "seed-insensitive"} <= kinds(assess(sc, best, jobs, {}, [], [], 2, SECRET))


# ---------------------------------------------------------------- what researchers see of an audit


def test_researchers_see_fixed_flag_texts_never_what_the_code_printed(db, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A failing method's error text (here carrying a 'leak') reaches the operator's view only: the
    researchers' API view and the public audit-bot thread show the flag kind, severity and a fixed text."""
    from types import SimpleNamespace

    from w2slab.grader.queries import audit_summary
    from w2slab.grader.db import Snapshot, Submission, SubmissionCheck, write_session
    from w2slab.integrity.audit import PUBLIC_TEXT, Assessment, AuditSettings, Auditor, thread_body

    monkeypatch.setenv("W2SLAB_HOME", str(tmp_path / "home"))
    engine, ids = db
    leak = "LEAK:0110100111010001:END Traceback (most recent call last)"
    a = Assessment()
    a.flag("irreproducible", "high", f"the submitted code could not be re-run on the kit: RuntimeError: {leak}")
    a.checks["reproducibility"] = {"per_seed": [{"seed": 11, "agreement": 0.1234, "ok": False}]}
    with write_session(engine) as s:
        s.add(Snapshot(sha256="c" * 64, uploader_id=ids["mallory"], size=1, unpacked_size=1, n_files=1))
        sub = Submission(researcher_id=ids["mallory"], testbed="toy", method_name="m", snapshot_sha256="c" * 64, seeds="[11]",
                         transfer_acc=0.5, weak_acc=0.5, ceiling_acc=0.9, per_seed="[]", predictions_sha256="d" * 64)
        s.add(sub)
        s.commit()
        s.refresh(sub)
        s.add(SubmissionCheck(submission_id=sub.id, predictions=b""))
        s.commit()
        sid = sub.id
    state = SimpleNamespace(engine=engine, secret=SECRET, scorers={})
    for weak, visible in ((set(), False), ({"messages"}, True)):
        Auditor(state, AuditSettings(weak=weak))._save(sub, "mallory", a, "done")
        with write_session(engine) as s:
            check = s.get(SubmissionCheck, sid)
            seen = json.dumps(audit_summary(check))
            full = json.dumps(audit_summary(check, full=True))
        body = thread_body(sub, "mallory", a)
        assert ("LEAK:" in seen) == visible and ("LEAK:" in body) == visible and "LEAK:" in full
        assert "0.1234" not in body and "irreproducible" in seen and '"high"' in seen
        if not visible:
            assert PUBLIC_TEXT["irreproducible"] in seen and "Traceback" not in seen


def test_one_researcher_never_holds_every_audit_worker(db, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Three slow submissions from mallory, then one from alice: with two workers alice's audit is
    claimed second, and mallory's others wait; with the share switched off (red team) the queue is FIFO."""
    from types import SimpleNamespace

    from w2slab.grader.db import Snapshot, Submission, SubmissionCheck, write_session
    from w2slab.integrity.audit import AuditSettings, Auditor

    monkeypatch.setenv("W2SLAB_HOME", str(tmp_path / "home"))
    engine, ids = db
    order = ["mallory", "mallory", "mallory", "alice"]
    sids = []
    with write_session(engine) as s:
        s.add(Snapshot(sha256="c" * 64, uploader_id=ids["mallory"], size=1, unpacked_size=1, n_files=1))
        for k, who in enumerate(order):
            sub = Submission(researcher_id=ids[who], testbed="toy", method_name="m", snapshot_sha256="c" * 64, seeds="[11]",
                             transfer_acc=0.5, weak_acc=0.5, ceiling_acc=0.9, per_seed="[]", predictions_sha256="d" * 64)
            s.add(sub)
            s.flush()
            s.add(SubmissionCheck(submission_id=sub.id, predictions=b"", created_at=1000.0 + k))
            sids.append(sub.id)
        s.commit()
    state = SimpleNamespace(engine=engine, secret=SECRET, scorers={})
    fair = Auditor(state, AuditSettings(workers=2))
    assert [fair.claim(), fair.claim(), fair.claim()] == [sids[0], sids[3], None]
    with write_session(engine) as s:
        for sid in sids:
            c = s.get(SubmissionCheck, sid)
            c.status = "queued"
            s.add(c)
        s.commit()
    fifo = Auditor(state, AuditSettings(workers=2, weak={"fairness"}))
    assert [fifo.claim(), fifo.claim()] == [sids[0], sids[1]]
