"""The grader end to end: a real ``w2slab serve`` subprocess on loopback with a real SQLite
file, driven over HTTP with httpx."""

from __future__ import annotations

import json
import re
import stat
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_toy_testbed, offline_page
from test_grader_support import STRONG, WEAK, GraderServer, cli, odd_member, targz

EVAL_PER_HOUR = 8


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_testbed(tmp_path_factory.mktemp("grader") / "toy", "pairwise")


@pytest.fixture(scope="module")
def server(toy: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = GraderServer(toy, tmp_path_factory.mktemp("db") / "grader.db", "--eval-per-hour", str(EVAL_PER_HOUR),
                       "--max-archive-mb", "0.05", "--max-unpacked-mb", "0.5").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def scorer(server: GraderServer, toy: Path):
    """The server's scorer rebuilt in-process from the same cache and secret: the expected answers."""
    from w2slab.grader.auth import load_server_secret
    from w2slab.grader.scoring import load_scorer

    return load_scorer(f"toy={toy}", WEAK, STRONG, [1, 2, 3, 4, 5], load_server_secret(), 5)


@pytest.fixture(scope="module")
def alice(server: GraderServer):
    with server.add_researcher("alice") as c:
        yield c


@pytest.fixture(scope="module")
def bob(server: GraderServer):
    with server.add_researcher("bob") as c:
        yield c


def labels(toy: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (toy / "test.jsonl").read_text().splitlines()]
    return np.array([1 if r["label"] == "B" else 0 for r in rows])


def audit_rows(server: GraderServer) -> list[dict]:
    with server.client(server.admin_token()) as admin:
        return admin.get("/api/admin/audit", params={"limit": 10_000}).json()


def upload(client, data: bytes, **params):  # type: ignore[no-untyped-def]
    return client.post("/api/snapshots", content=data, params=params, headers={"content-type": "application/gzip"})


# ---------------------------------------------------------------- identity


def test_tokens_and_roles(server: GraderServer, alice, toy: Path) -> None:
    import os

    admin_file = Path(os.environ["W2SLAB_HOME"]) / "grader" / "admin_token"
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    with server.client() as anon:
        r = anon.post("/api/evaluate", json={"testbed": "toy", "predictions": []})
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = anon.post("/api/evaluate", content=b"{not json", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "invalid token" in r.json()["detail"]
    with server.client(server.admin_token()) as admin:
        r = admin.post("/api/evaluate", json={"testbed": "toy", "predictions": [0.5] * 120})
        assert r.status_code == 403 and "researcher token" in r.json()["detail"]
    r = alice.get("/api/admin/audit")
    assert r.status_code == 403 and "admin token" in r.json()["detail"]
    assert alice.post("/api/admin/researchers", json={"name": "mallory"}).status_code == 403
    me = alice.get("/api/me").json()
    assert me["name"] == "alice" and "token" not in json.dumps(me)
    # the CLI adds a researcher whose token works against the running server at once
    res = cli("researcher", "add", "dora", "--db", server.db_url)
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    assert token.startswith("w2s_") and len(token) > 40 and "shown once" in res.stderr
    with server.client(token) as dora:
        assert dora.get("/api/me").json()["name"] == "dora"
    res = cli("researcher", "add", "dora", "--db", server.db_url)
    assert res.returncode == 2 and "already exists" in res.stderr
    listing = cli("researcher", "list", "--db", server.db_url)
    assert "dora" in listing.stdout and "alice" in listing.stdout and token not in listing.stdout
    with server.client(server.admin_token()) as admin:
        people = admin.get("/api/admin/researchers").json()
    assert {"alice", "dora"} <= {p["name"] for p in people}
    assert all("hash" not in json.dumps(p) and "token" not in p for p in people)


# ---------------------------------------------------------------- evaluation


def test_evaluate_scores_dev_half_only(server: GraderServer, bob, alice, toy: Path, scorer) -> None:
    y = labels(toy)
    r = bob.post("/api/evaluate", json={"testbed": "toy", "predictions": y.astype(float).tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"pgr", "transfer_acc", "improved", "ladder", "ladder_pgr"}  # nothing else about labels
    assert body["transfer_acc"] == 1.0 and body["improved"] is True
    assert body["ladder"] == 0.08  # the Ladder's default margin: one sampling error of 40 dev rows
    assert body["ladder_pgr"] == round(0.08 / (scorer.ceiling_dev - scorer.weak_dev), 2)  # the same in PGR
    want = (1.0 - scorer.weak_dev) / (scorer.ceiling_dev - scorer.weak_dev)
    assert body["pgr"] == round(want, 2)
    # the board and sealed thirds never count: flipping every one of their predictions changes nothing
    flipped = y.copy()
    others = np.concatenate([scorer.board, scorer.sealed])
    flipped[others] = 1 - flipped[others]
    as_labels = ["B" if v else "A" for v in flipped]
    r2 = bob.post("/api/evaluate", json={"testbed": "toy", "predictions": as_labels}).json()
    assert (r2["pgr"], r2["transfer_acc"]) == (body["pgr"], body["transfer_acc"])
    # booleans are labels too; through the Ladder a worse vector only learns it is not better
    wrong = [bool(v) for v in 1 - y]
    r3 = bob.post("/api/evaluate", json={"testbed": "toy", "predictions": wrong})
    assert r3.json()["transfer_acc"] == 1.0 and r3.json()["improved"] is False and "not better" in r3.json()["note"]
    assert int(r3.headers["x-budget-hour-left"]) == EVAL_PER_HOUR - 3
    first = alice.post("/api/evaluate", json={"testbed": "toy", "predictions": wrong}).json()  # alice's own ladder
    assert first["transfer_acc"] == 0.0 and first["improved"] is True
    seeded = bob.post("/api/evaluate", json={"testbed": "toy", "predictions": wrong, "seed": 7}).json()  # one ladder per seed
    assert seeded["transfer_acc"] == 0.0 and seeded["improved"] is True
    assert len(scorer.dev) == 40 and len(set(scorer.dev) & set(others)) == 0
    tb = alice.get("/api/testbeds").json()[0]
    assert (tb["dev_rows"], tb["board_rows"], tb["sealed_rows"]) == (40, 40, 40)
    w, c = scorer.baseline(scorer.sealed)
    d = (scorer.weak_correct[:, scorer.sealed] != scorer.ceiling_correct[:, scorer.sealed]).mean()
    assert tb["sealed_mde_pgr"] == round((1.959964 + 0.841621) * np.sqrt(d / 40) / (c - w), 2)


def test_hourly_budget_gives_429_with_retry_after(server: GraderServer) -> None:
    with server.add_researcher("carol") as carol:
        assert carol.post("/api/evaluate", json={"testbed": "toy", "predictions": [0.5]}).status_code == 422  # free
        for i in range(EVAL_PER_HOUR):
            r = carol.post("/api/evaluate", json={"testbed": "toy", "predictions": [0.3] * 120})
            assert r.status_code == 200, (i, r.text)
        r = carol.post("/api/evaluate", json={"testbed": "toy", "predictions": [0.3] * 120})
        assert r.status_code == 429
        wait = int(r.headers["retry-after"])
        assert 3500 < wait <= 3600 and f"retry in {wait} s" in r.json()["detail"]
        assert carol.get("/api/me").json()["usage"]["evaluations_total"] == EVAL_PER_HOUR
    assert sum(a["researcher"] == "carol" for a in audit_rows(server)) == EVAL_PER_HOUR


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b'{"testbed": "toy", "predictions": [0.5,', 422, "not valid JSON"),
        (b'[1, 2]', 422, "valid dictionary"),
        ({"testbed": "toy", "predictions": [0.5] * 119}, 422, "expected 120 test rows"),
        ({"testbed": "toy", "predictions": [0.5] * 240}, 422, "expected 120 test rows"),
        ({"testbed": "toy", "predictions": [0.5] * 119 + [1.5]}, 422, "predictions[119]: 1.5 is outside [0, 1]"),
        ({"testbed": "toy", "predictions": [0.5] * 119 + ["C"]}, 422, "predictions[119]: label must be \"A\" or \"B\""),
        ({"testbed": "toy", "predictions": [[0.5, 0.5]] * 120}, 422, "predictions[0]: expected a number"),
        ({"testbed": "toy", "predictions": "AB"}, 422, "predictions: Input should be a valid list"),
        ({"testbed": "toy"}, 422, "predictions: Field required"),
        ({"testbed": "toy", "predictions": [0.5] * 120, "labels": [1]}, 422, "labels: Extra inputs are not permitted"),
        ({"testbed": "train", "predictions": [0.5] * 120}, 404, "unknown testbed 'train'; this server scores: toy"),
    ],
)
def test_malformed_evaluations_are_refused_and_not_recorded(server: GraderServer, alice, body, status, message) -> None:
    before = len(audit_rows(server))
    if isinstance(body, bytes):
        r = alice.post("/api/evaluate", content=body, headers={"content-type": "application/json"})
    else:
        r = alice.post("/api/evaluate", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert len(audit_rows(server)) == before


def test_nan_and_infinity_are_refused(server: GraderServer, alice) -> None:
    for bad in (b"NaN", b"Infinity", b"-Infinity"):
        preds = b",".join([b"0.5"] * 60 + [bad] + [b"0.5"] * 59)
        r = alice.post("/api/evaluate", content=b'{"testbed":"toy","predictions":[' + preds + b"]}",
                       headers={"content-type": "application/json"})
        assert r.status_code == 422 and "predictions[60]" in r.json()["detail"] and "NaN and infinity" in r.json()["detail"]


# ---------------------------------------------------------------- submissions


def test_submit_scores_board_third_and_fills_leaderboard(server: GraderServer, alice, toy: Path, scorer) -> None:
    from w2slab.engine.stats import correct_matrix, pgr_interval

    seeds = alice.get("/api/seeds", params={"testbed": "toy"}).json()["seeds"]
    assert seeds == scorer.seeds and len(seeds) >= 5 and seeds != [1, 2, 3, 4, 5]
    snap = upload(alice, targz([("method/m.py", b"def m(): pass\n")])).json()["sha256"]
    y, rng = labels(toy), np.random.default_rng(0)
    preds = {}
    for s in seeds:  # noisy copies of the truth: different accuracy per seed
        noisy = np.where(rng.random(len(y)) < 0.15, 1 - y, y).astype(float)
        preds[str(s)] = noisy.tolist()
    before = alice.get("/api/leaderboard", params={"testbed": "toy"}).json()["rows"]

    bad = dict(preds)
    bad.pop(str(seeds[0]))
    r = alice.post("/api/submit", json={"testbed": "toy", "method_name": "noisy", "snapshot_sha256": snap, "predictions": bad})
    assert r.status_code == 422 and f"missing seeds [{seeds[0]}]" in r.json()["detail"]
    r = alice.post("/api/submit", json={"testbed": "toy", "method_name": "noisy", "snapshot_sha256": "ab" * 32, "predictions": preds})
    assert r.status_code == 422 and "not in the code store" in r.json()["detail"]
    assert alice.get("/api/leaderboard", params={"testbed": "toy"}).json()["rows"] == before

    r = alice.post("/api/submit", json={"testbed": "toy", "method_name": "noisy", "snapshot_sha256": snap, "predictions": preds})
    assert r.status_code == 201, r.text
    sub = r.json()
    rows = scorer.board
    want = pgr_interval(correct_matrix([np.array(preds[str(s)]) for s in seeds], y)[:, rows], scorer.weak_correct[:, rows],
                        scorer.ceiling_correct[:, rows], seed=int(scorer.fingerprint[:8], 16))
    assert sub["split"] == "board" and sub["improved"] is True and sub["ladder"] == round(0.5 / np.sqrt(len(rows)), 2)
    assert sub["pgr"] == round(want.pgr, 2) and sub["transfer_acc"] == round(want.transfer_acc, 2)  # 2 decimals only
    assert sub["pgr_ci"] == [round(want.lo, 2), round(want.hi, 2)] and sub["pgr_ci"][0] < sub["pgr"] < sub["pgr_ci"][1]
    # the interval includes test-row noise: wider than the seeds-only spread of these near-identical seeds
    assert want.hi - want.lo > 2 * np.std(want.per_seed_pgr)
    board = alice.get("/api/leaderboard", params={"testbed": "toy"}).json()
    row = next(x for x in board["rows"] if x["id"] == sub["id"])
    assert row["researcher"] == "alice" and row["method_name"] == "noisy" and row["pgr"] == sub["pgr"]
    assert row["snapshot_sha256"] == snap and row["n_seeds"] == len(seeds)
    assert [x["pgr"] for x in board["rows"]] == sorted((x["pgr"] for x in board["rows"]), reverse=True)
    audit = [a for a in audit_rows(server) if a["kind"] == "submit"]
    assert audit[0]["score"]["submission_id"] == sub["id"] and len(audit[0]["predictions_sha256"]) == 64


def test_board_ladder_final_pick_and_sealed_holdout(server: GraderServer, toy: Path, scorer) -> None:
    """Submissions show the Ladder's board answer; each researcher's pick is scored once on the sealed third."""
    y, rng = labels(toy), np.random.default_rng(1)
    with server.add_researcher("dave") as dave, server.add_researcher("erin") as erin, server.client(server.admin_token()) as admin:
        seeds = dave.get("/api/seeds", params={"testbed": "toy"}).json()["seeds"]
        snap = upload(dave, targz([("m.py", b"def m(): pass\n")])).json()["sha256"]

        def submit(client, preds):  # type: ignore[no-untyped-def]
            return client.post("/api/submit", json={"testbed": "toy", "method_name": "m", "snapshot_sha256": snap,
                                                    "predictions": {str(s): v.astype(float).tolist() for s, v in preds.items()}})

        good = {s: np.where(rng.random(len(y)) < 0.1, 1 - y, y) for s in seeds}
        first = submit(dave, good).json()
        assert first["improved"] is True
        worse = {s: v.copy() for s, v in good.items()}
        for s in seeds:  # 12 board rows made wrong: a real change, far from a near-duplicate
            worse[s][scorer.board[:12]] = 1 - y[scorer.board[:12]]
        second = submit(dave, worse).json()
        assert second["improved"] is False and "not better" in second["note"]
        assert (second["pgr"], second["pgr_ci"], second["transfer_acc"]) == (first["pgr"], first["pgr_ci"], first["transfer_acc"])
        # a near-duplicate is refused by naming the earlier submission only (no row counts: no oracle)
        probe = {s: v.copy() for s, v in good.items()}
        probe[seeds[0]][0] = 1 - probe[seeds[0]][0]
        r = submit(dave, probe)
        assert r.status_code == 409 and f"near-duplicate of submission #{first['id']}" in r.json()["detail"]
        assert not any(ch.isdigit() for ch in r.json()["detail"].replace(f"#{first['id']}", ""))
        # picks: own submissions only, changeable until sealed
        assert dave.post("/api/final", json={"testbed": "toy", "submission_id": 10**6}).status_code == 404
        assert dave.post("/api/final", json={"testbed": "toy", "submission_id": second["id"]}).json()["status"] == "picked"
        erin_preds = {s: np.where(rng.random(len(y)) < 0.3, 1 - y, y) for s in seeds}
        other = submit(erin, erin_preds).json()
        assert erin.post("/api/final", json={"testbed": "toy", "submission_id": first["id"]}).status_code == 404
        assert dave.get("/api/sealed", params={"testbed": "toy"}).json()["rows"] == []  # nothing before the seal
        assert dave.post("/api/admin/seal", json={"testbed": "toy"}).status_code == 403
        sealed = admin.post("/api/admin/seal", json={"testbed": "toy"}).json()
        mine = {r["researcher"]: r for r in sealed["rows"]}
        assert mine["dave"]["submission_id"] == second["id"] and mine["dave"]["chosen_by"] == "researcher"
        assert mine["erin"]["submission_id"] == other["id"] and mine["erin"]["chosen_by"] == "board"
        want = scorer.score(worse, scorer.sealed)
        assert mine["dave"]["pgr"] == round(want.pgr, 3) and mine["dave"]["n_rows"] == len(scorer.sealed) == 40
        assert mine["dave"]["pgr_ci"][0] < mine["dave"]["pgr"] < mine["dave"]["pgr_ci"][1]
        again = admin.post("/api/admin/seal", json={"testbed": "toy"}).json()  # scored once: the same numbers
        assert {r["researcher"]: r["sealed_at"] for r in again["rows"]} == {r["researcher"]: r["sealed_at"] for r in sealed["rows"]}
        r = dave.post("/api/final", json={"testbed": "toy", "submission_id": first["id"]})
        assert r.status_code == 409 and "already sealed" in r.json()["detail"]
        public = erin.get("/api/sealed", params={"testbed": "toy", "vs": second["id"]}).json()
        row = next(r for r in public["rows"] if r["researcher"] == "erin")
        diff = scorer.compare(erin_preds, worse, scorer.sealed)  # paired: the same rows and seeds
        assert row["vs"] == {"submission_id": second["id"], "diff": round(diff.diff, 2), "ci": [round(diff.lo, 2), round(diff.hi, 2)]}
        assert row["pgr"] == round(row["pgr"], 2)  # researchers see 2 decimals
        assert erin.get("/api/sealed", params={"testbed": "toy", "vs": first["id"]}).status_code == 404  # not a sealed pick
        board = erin.get("/api/leaderboard", params={"testbed": "toy"}).json()
        assert "winner's curse" in board["note"] and {r["researcher"] for r in board["sealed"]} >= {"dave", "erin"}
        assert all("board_exact" not in r for r in board["rows"])
        full = admin.get(f"/api/admin/submissions/{second['id']}").json()  # the operator sees the real (worse) board score
        assert full["improved"] is False and full["board_exact"]["transfer_acc"] < first["transfer_acc"]


# ---------------------------------------------------------------- forum


def test_forum_posts_comments_votes_search(server: GraderServer, alice, bob) -> None:
    r = alice.post("/api/posts", json={"kind": "hypothesis", "title": "Auxiliary confidence loss",
                                       "body": "Students **overfit** weak errors; thresholding should help.",
                                       "metrics": {"pgr": 0.31, "seeds": 5}})
    assert r.status_code == 201, r.text
    post = r.json()
    assert bob.post(f"/api/posts/{post['id']}/comments", json={"body": "Tried it: PGR 0.28"}).status_code == 201
    assert bob.post(f"/api/posts/{post['id']}/vote", json={"value": 1}).json()["score"] == 1
    assert bob.post(f"/api/posts/{post['id']}/vote", json={"value": 1}).json()["score"] == 1  # one vote each
    assert bob.post(f"/api/posts/{post['id']}/vote", json={"value": -1}).json()["score"] == -1  # changed, not added
    r = alice.post(f"/api/posts/{post['id']}/vote", json={"value": 1})
    assert r.status_code == 403 and "own post" in r.json()["detail"]
    full = bob.get(f"/api/posts/{post['id']}").json()
    assert full["score"] == -1 and full["comments"][0]["author"] == "bob" and full["metrics"]["pgr"] == 0.31
    hits = bob.get("/api/posts/search", params={"q": "overfitting threshold"}).json()  # stemmed words
    assert [h["id"] for h in hits] == [post["id"]]
    assert bob.get("/api/posts/search", params={"q": 'weak" OR *'}).status_code == 200  # FTS syntax is inert
    assert post["id"] in [p["id"] for p in bob.get("/api/posts", params={"kind": "hypothesis"}).json()]
    for body, message in [({"kind": "rant", "title": "x"}, "kind: Input should be"),
                          ({"kind": "insight", "title": ""}, "title: String should have at least 1 character"),
                          ({"kind": "insight", "title": "x", "submission_ids": [99999]}, "no submission 99999"),
                          ({"kind": "insight", "title": "x", "snapshot_shas": ["0" * 64]}, "not in the code store")]:
        r = bob.post("/api/posts", json=body)
        assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert bob.post("/api/posts/99999/comments", json={"body": "hi"}).status_code == 404


# ---------------------------------------------------------------- code store


def test_snapshot_upload_download_and_lineage(server: GraderServer, alice, bob) -> None:
    data = targz([("w2s/method.py", b"print('v1')\n"), ("w2s/README.md", b"# v1\n")])
    r = upload(alice, data, note="first")
    assert r.status_code == 201 and r.json()["created"] and r.json()["n_files"] == 2
    sha = r.json()["sha256"]
    again = upload(bob, data)
    assert again.status_code == 200 and not again.json()["created"] and again.json()["uploader"] == "alice"
    child = upload(bob, targz([("w2s/method.py", b"print('v2')\n")]), parent=sha).json()
    assert child["parent_sha256"] == sha and child["uploader"] == "bob"
    got = bob.get(f"/api/snapshots/{sha}")
    assert got.status_code == 200 and got.content == data
    assert bob.get(f"/api/snapshots/{'f' * 64}").status_code == 404
    assert bob.get("/api/snapshots/not-a-sha").status_code == 422


def _bomb(tar: tarfile.TarFile) -> None:
    import io

    info = tarfile.TarInfo("zeros.bin")
    info.size = 600 * 1024  # over the server's 0.5 MB unpacked cap, compresses to ~1 KB
    tar.addfile(info, io.BytesIO(bytes(info.size)))


@pytest.mark.parametrize(
    "data, status, message",
    [
        (targz([("../evil.py", b"x")]), 422, "path leaving the archive root"),
        (targz([("ok/../../evil.py", b"x")]), 422, "path leaving the archive root"),
        (targz([("/etc/cron.d/evil", b"x")]), 422, "absolute path"),
        (targz([("a.py", b"x")], odd_member("link", tarfile.SYMTYPE, "/etc/passwd")), 422, "links are not allowed"),
        (targz([("a.py", b"x")], odd_member("hard", tarfile.LNKTYPE, "a.py")), 422, "links are not allowed"),
        (targz([], odd_member("dev", tarfile.CHRTYPE)), 422, "special file"),
        (targz(tweak=_bomb), 413, "unpacks to more than"),
        (targz([(f"f{i}", b"") for i in range(10)]) + bytes(60 * 1024), 413, "limit is 52428 bytes"),
        (b"PK\x03\x04 a zip file", 422, "not a gzip file"),
        (b"\x1f\x8b\x08\x00garbage", 422, "not a valid tar.gz"),
        (targz([]), 422, "empty archive"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "bomb", "oversize", "zip",
         "garbage", "empty"],
)
def test_bad_archives_are_refused_and_nothing_stored(server: GraderServer, bob, data: bytes, status: int, message: str) -> None:
    import os

    store = Path(os.environ["W2SLAB_HOME"]) / "grader" / "snapshots"
    files_before = sorted(store.rglob("*")) if store.exists() else []
    rows_before = bob.get("/api/snapshots").json()
    r = upload(bob, data)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert (sorted(store.rglob("*")) if store.exists() else []) == files_before
    assert bob.get("/api/snapshots").json() == rows_before


# ---------------------------------------------------------------- audit


def test_audit_log_api_and_cli(server: GraderServer, alice) -> None:
    preds = [0.9] * 120
    r = alice.post("/api/evaluate", json={"testbed": "toy", "predictions": preds})
    audit_id = int(r.headers["x-audit-id"])
    row = next(a for a in audit_rows(server) if a["id"] == audit_id)
    assert row["researcher"] == "alice" and row["kind"] == "evaluate" and row["score"] == r.json()
    assert abs(row["created_at"] - time.time()) < 60 and len(row["predictions_sha256"]) == 64
    res = cli("audit", "--db", server.db_url, "--json", "-r", "alice", "-n", "5")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[0])["id"] == audit_id
    assert "alice" in cli("audit", "--db", server.db_url).stdout


# ---------------------------------------------------------------- crash safety


def test_sigkill_under_load_keeps_every_acknowledged_write(toy: Path, tmp_path: Path) -> None:
    srv = GraderServer(toy, tmp_path / "crash.db", "--eval-per-hour", "100000", "--submit-per-hour", "100000", workers=2)
    srv.start()
    try:
        clients = [srv.add_researcher(f"r{i}") for i in range(6)]
        snap = upload(clients[0], targz([("seed.py", b"0")])).json()["sha256"]
        seeds = clients[0].get("/api/seeds", params={"testbed": "toy"}).json()["seeds"]
        acked: dict[str, list] = {"audit": [], "post": [], "snapshot": [], "submission": []}
        lock, stop = threading.Lock(), threading.Event()

        def work(i: int, c) -> None:  # type: ignore[no-untyped-def]
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 4 == 0:
                        data = targz([(f"r{i}/{n}.py", f"{i}-{n}".encode())])
                        r = upload(c, data)
                        if r.status_code == 201:
                            with lock:
                                acked["snapshot"].append((r.json()["sha256"], data))
                    elif n % 4 == 1:
                        r = c.post("/api/posts", json={"kind": "insight", "title": f"note {i}-{n}", "body": "crash test"})
                        if r.status_code == 201:
                            with lock:
                                acked["post"].append(r.json()["id"])
                    elif n % 9 == 2:
                        r = c.post("/api/submit", json={"testbed": "toy", "method_name": f"m{i}", "snapshot_sha256": snap,
                                                        "predictions": {str(s): [0.7] * 120 for s in seeds}})
                        if r.status_code == 201:
                            with lock:
                                acked["submission"].append(r.json()["id"])
                    else:
                        r = c.post("/api/evaluate", json={"testbed": "toy", "predictions": [0.6] * 120})
                        if r.status_code == 200:
                            with lock:
                                acked["audit"].append(int(r.headers["x-audit-id"]))
                except Exception:  # the server died mid-request: nothing was acknowledged
                    if stop.is_set() or srv.proc.poll() is not None:
                        return

        threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(map(len, acked.values())) < 200:
            time.sleep(0.05)
        srv.kill()
        stop.set()
        for t in threads:
            t.join(30)
        for c in clients:
            c.close()
        counts = {k: len(v) for k, v in acked.items()}
        print("acknowledged before SIGKILL:", counts)
        assert counts["audit"] > 20 and counts["post"] > 5 and counts["snapshot"] > 5, counts

        srv.start(workers=1)
        with srv.client(srv.admin_token()) as admin:
            audit_ids = {a["id"] for a in admin.get("/api/admin/audit", params={"limit": 10_000}).json()}
            assert set(acked["audit"]) <= audit_ids
            for pid in acked["post"]:
                assert admin.get(f"/api/posts/{pid}").status_code == 200
            for sha, data in acked["snapshot"]:
                assert admin.get(f"/api/snapshots/{sha}").content == data
            board = {r["id"] for r in admin.get("/api/leaderboard", params={"testbed": "toy"}).json()["rows"]}
            assert set(acked["submission"]) <= board
        import sqlite3

        with sqlite3.connect(srv.db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        srv.stop()


def test_schema_from_migration_matches_models(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from w2slab.grader.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name.startswith("post_fts"))] == []


def test_serve_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    res = cli("serve", "-t", "/no/such/testbed", "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert res.returncode == 2 and "unknown testbed '/no/such/testbed'" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("page, title", [("/docs", "Swagger UI"), ("/redoc", "ReDoc")])
def test_api_docs_load_offline_from_installed_assets(server: GraderServer, page: str, title: str) -> None:
    """/docs and /redoc reference only the grader's own URLs (no CDN, no web fonts), every asset
    they name is served, and in a browser that may reach nothing else the API's title renders."""
    with server.client() as c:
        r = c.get(page)
        assert r.status_code == 200 and title in r.text
        refs = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", r.text)
        assert refs and not [u for u in refs if "://" in u or u.startswith("//")], refs
        for ref in refs:
            asset = c.get(ref)
            assert asset.status_code == 200 and len(asset.content) > 100, (ref, asset.status_code)
        assert c.get("/docs-assets/../app.py").status_code == 404
    with offline_page(server.url) as pg:
        pg.goto(server.url + page, timeout=90_000)  # 1-2 MB of JavaScript: slow on a busy machine
        pg.wait_for_selector(".swagger-ui .info .title" if page == "/docs" else ".api-info h1", timeout=90_000)
        assert "w2slab grader" in pg.content()
