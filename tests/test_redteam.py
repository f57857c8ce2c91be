"""The red-team suite end to end: scripted adversarial researchers against a real grader server
(subprocess, sandboxed audits) on a small secret testbed. Every attack must be caught (refused
or flagged), none may recover labels beyond chance (one-sided binomial p >= 0.01), the honest
control must stay clean; the flags show in the API, the CLI, the forum and (Playwright +
Debian chromium) on the dashboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from w2slab.integrity.redteam import RedTeam, table_rows

CHROMIUM = "/usr/bin/chromium"
SEED = 15  # fixed data and attackers (their starting vectors are balanced, see RedTeam._base)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):
    from w2slab.researchers.sandbox import find_bwrap

    if find_bwrap() is None:
        pytest.skip("no working bubblewrap: the audits need the sandbox")
    team = RedTeam(tmp_path_factory.mktemp("redteam"), seed=SEED, eval_budget=200, coord_budget=80, submit_probes=8).start()
    try:
        team.run()
        yield team
    finally:
        team.stop()


def probe_runs(workdir: Path, seed: int) -> dict:
    """The numbers and the dev answers of the two probing attacks (CLI defaults) on a fresh grader."""
    team = RedTeam(workdir, seed=seed).start()
    try:
        results = [team.attack_single_flip(), team.attack_coordinated()]
        return {"submission seeds": team.seeds, "results": [r.to_dict() for r in results],
                "answers": {name: c.answers for name, c in team.clients.items()}}
    finally:
        team.stop()


def test_same_seed_same_numbers(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every number the red team prints is reproducible from its seed: two graders started with the
    same seed (one after the other) give the probing attackers the same answers, so the boundary
    searches, query counts and recovered labels match. The grader's server secret keys the dev noise;
    were it drawn afresh per run, the answers would differ and, about one run in ten for seed 15, the
    coordinated probe's numbers too (72/144 against 70/138)."""
    a = probe_runs(tmp_path_factory.mktemp("same-seed-a"), SEED)
    b = probe_runs(tmp_path_factory.mktemp("same-seed-b"), SEED)
    assert a == b
    assert len(a["answers"]["mallory"]) == a["results"][0]["queries"] > 200  # the attack really ran


def by_name(rt: RedTeam) -> dict:
    return {r.name: r for r in rt.results}


def test_every_attack_caught_and_nothing_recovered(rt: RedTeam) -> None:
    table = "\n".join(" | ".join(row) for row in table_rows(rt.results))
    print(table)
    assert len(rt.results) >= 14
    for r in rt.results:
        assert r.p_value >= 0.01, f"{r.name} recovered labels beyond chance:\n{table}"
        assert r.caught == r.expect_caught, f"{r.name}: caught={r.caught}:\n{table}"
    res = by_name(rt)
    assert res["single-flip probe"].guessed >= 150 and res["coordinated probe"].guessed >= 100  # they really probed
    assert res["regression probe"].guessed >= 390 and res["regression probe"].queries == 200


def test_each_attack_is_caught_by_the_right_check(rt: RedTeam) -> None:
    res = by_name(rt)
    assert "probe-single-flips" in res["single-flip probe"].caught_by
    assert "probe-coordinated" in res["coordinated probe"].caught_by
    assert "probe-random-vectors" in res["regression probe"].caught_by
    assert {"constant-predictions", "teacher-free"} <= set(res["majority answer"].caught_by)
    assert "teacher-free" in res["lexicon, no teacher"].caught_by
    assert "irreproducible" in res["fake predictions"].caught_by
    assert "label-access" in res["label files"].caught_by
    assert "irreproducible" in res["seed cherry-picking"].caught_by
    assert "probe-submissions" in res["final-set probe"].caught_by and any("409" in x for x in rt.refused["sam"])
    assert res["path traversal"].caught and "accepted" not in res["path traversal"].notes
    assert "probe-submission-edits" in res["submission regression"].caught_by
    assert res["submission regression"].queries == 9 and res["submission regression"].guessed == 0  # the Ladder: no score moved
    assert any("409" in x for x in rt.refused["rufus"]) and res["refusal oracle"].p_value >= 0.01


def test_warm_sandbox_tamper_works_only_with_the_defence_off(rt: RedTeam) -> None:
    """The red team's attack on the warm sandbox: against a dumpable warm process (the defence
    off) the experiment opens its memory for writing; against the real one it cannot."""
    assert "not dumpable (PermissionError)" in by_name(rt)["warm sandbox tamper"].caught_by[0]
    rt.unhardened = True  # only this attack reads it after start: the warm process stays dumpable
    try:
        off = rt.attack_warm_tamper()
    finally:
        rt.unhardened = False
    assert not off.caught and "for writing: opened" in off.notes


def test_boards_threads_and_what_researchers_see(rt: RedTeam) -> None:
    board = rt.admin.http.get("/api/leaderboard", params={"testbed": "toy"}).json()
    ranked = {r["researcher"] for r in board["rows"]}
    apart = {r["researcher"] for r in board["teacher_free"]}
    assert {"tina", "connie"} <= apart and not {"tina", "connie"} & ranked and "henry" in ranked
    henry = next(r for r in board["rows"] if r["researcher"] == "henry")
    assert henry["audit"] == "done" and henry["flags"] == []
    # a researcher sees the flags and coarse numbers of an audit, never the evidence
    tina_id = rt.submissions["tina"][0]
    seen = rt.clients["henry"].http.get(f"/api/submissions/{tina_id}/audit").json()
    assert "teacher-free" in seen["flags"] and "checks" not in seen
    assert all(v is None or v == round(v, 1) for v in seen["public"].values())
    full = rt.admin.http.get(f"/api/admin/submissions/{tina_id}").json()["audit_detail"]
    assert full["checks"]["teacher"]["teacher_free"] and full["checks"]["reproducibility"]["ok"]
    assert "toy2" in full["checks"]["generalisation"] and len(full["checks"]["seeds"]["submitted_pgr"]) == 5
    # the audit thread, posted by the system account
    post = rt.clients["henry"].http.get(f"/api/posts/{seen['post_id']}").json()
    assert post["author"] == "audit-bot" and "teacher-free" in post["title"] and post["submission_ids"] == [tina_id]
    # the label-reader's code found nothing in the sandbox and its attempts are the evidence
    lara = rt.admin.http.get(f"/api/admin/submissions/{rt.submissions['lara'][0]}").json()["audit_detail"]["checks"]
    attempts = json.dumps(lara["label_access"])
    assert str(rt.toy / "test.jsonl") in attempts and "network" in attempts
    assert "found" not in json.dumps(lara.get("notes", {}))


def test_flags_in_the_cli(rt: RedTeam) -> None:
    env = dict(os.environ, W2SLAB_HOME=str(rt.home), COLUMNS="200")
    res = subprocess.run([sys.executable, "-m", "w2slab.grader.cli", "audit", "--flags", "--db", f"sqlite:///{rt.workdir / 'grader.db'}"],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    for word in ("probe-single-flips", "probe-coordinated", "teacher-free", "label-access", "mallory", "lara"):
        assert word in res.stdout
    res = subprocess.run([sys.executable, "-m", "w2slab.integrity.cli", "flags", "--json", "-r", "tina",
                          "--db", f"sqlite:///{rt.workdir / 'grader.db'}"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert res.returncode == 0 and {f["kind"] for f in json.loads(res.stdout)} >= {"teacher-free"}


def test_dashboard_shows_the_flags_of_a_hacked_submission(rt: RedTeam) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found")
    from playwright.sync_api import sync_playwright

    fred = rt.submissions["fred"][0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            # open on loopback, without the admin login: what the API shows a researcher, no exact numbers
            page.goto(f"{rt.url}/submissions/{fred}")
            assert "operator view" not in page.inner_text("body")
            page.goto(f"{rt.url}/login?next=/leaderboard?testbed=toy")
            page.fill("input[name=token]", rt.admin_token)
            page.click("button[type=submit]")
            page.goto(f"{rt.url}/submissions/{fred}")
            assert "operator view: exact board PGR" in page.inner_text("body")
            page.goto(f"{rt.url}/leaderboard?testbed=toy")
            assert "lexicon" in page.inner_text("#teacher-free") and "lexicon" not in page.inner_text("#leaderboard")
            page.click(f"#leaderboard tr[data-submission='{fred}'] a")  # the faked submission's page
            assert page.url.endswith(f"/submissions/{fred}")
            flags = page.locator("#audit-flags tr[data-flag]")
            assert "irreproducible" in flags.all_inner_texts()[0] or "irreproducible" in page.inner_text("#audit-flags")
            assert "does not give the submitted predictions" in page.inner_text("#audit-flags")
            assert "no" in page.inner_text("#seeds")  # per-seed reproducibility and PGR
            assert "toy2" in page.inner_text("#generalisation")
            page.goto(f"{rt.url}/researchers")
            row = page.inner_text("tr[data-researcher='mallory']")
            assert "probe-single-flips" in row
            assert page.locator("#flags tr[data-flag='label-access']").count() >= 1
        finally:
            browser.close()


# ---------------------------------------------------------------- the audit attacks (issue 9)


def test_audit_attacks_fail_against_the_hardened_audits(rt: RedTeam) -> None:
    """With every defence on (the suite above): nothing comes back from the audit, the erased
    evidence is still there (decoys, recorded outside), the limits hold, nobody is starved."""
    res = by_name(rt)
    ex = res["audit exfiltration"]
    assert ex.guessed == 0 and ex.leaked_tokens == 0 and ex.caught and ex.ok, ex.notes
    assert res["cheat with leaked labels"].caught_by == ["nothing leaked to cheat with"]
    assert res["evidence erase"].caught_by == ["label-access"] and "decoys opened: 0" not in res["evidence erase"].notes
    hog = res["sandbox resource abuse"]
    assert hog.caught_by == ["resource-limits"] and not hog.escaped, hog.notes
    assert not res["audit starvation"].escaped and res["audit starvation"].ok, res["audit starvation"].notes
    removed = rt.audit_attacks.removed  # the planted demo layout is cleaned up
    assert removed is not None and removed.parent == REPO / "runs" and not removed.exists()


@pytest.fixture(scope="module")
def weak(tmp_path_factory: pytest.TempPathFactory):
    """The same audit attacks against a grader with every audit defence switched off."""
    from w2slab.integrity.redteam_audit import run_audit_attacks, weak_audit
    from w2slab.researchers.sandbox import find_bwrap

    if find_bwrap() is None:
        pytest.skip("no working bubblewrap: the audits need the sandbox")
    with weak_audit("all"):
        team = RedTeam(tmp_path_factory.mktemp("redteam-weak"), seed=SEED, test_rows=200).start()
    try:
        run_audit_attacks(team, ["exfiltration", "evidence_erase", "resources", "cheat"])
        yield team
    finally:
        team.stop()


def test_audit_attacks_succeed_with_the_defences_off(weak: RedTeam) -> None:
    res = by_name(weak)
    print("\n".join(" | ".join(row) for row in table_rows(weak.results)))
    ex = res["audit exfiltration"]  # the repository root, .git packs and runs/ are readable; messages reach researchers
    # (a fresh clone's pack also holds older versions of the built-in label files, read as well: not all match today's)
    assert ex.p_value < 1e-6 and ex.guessed >= 200 + 1000 and ex.correct >= 0.75 * ex.guessed and ex.leaked_tokens >= 2, ex.notes
    assert not ex.ok and "served testbed: 200 labels back" in ex.notes
    cheat = res["cheat with leaked labels"]  # reproducible and teacher-dependent: no flag, labels on the board
    assert cheat.p_value < 1e-6 and not cheat.caught and not cheat.ok
    assert not res["evidence erase"].caught  # the in-process evidence list was cleared and there are no decoys
    assert res["sandbox resource abuse"].escaped  # 300 MB written, 300 processes


@pytest.mark.slow
def test_audit_starvation_with_the_share_off(tmp_path_factory: pytest.TempPathFactory) -> None:
    from w2slab.integrity.redteam_audit import run_audit_attacks, weak_audit
    from w2slab.researchers.sandbox import find_bwrap

    if find_bwrap() is None:
        pytest.skip("no working bubblewrap: the audits need the sandbox")
    with weak_audit("fairness"):
        team = RedTeam(tmp_path_factory.mktemp("redteam-starve"), seed=SEED, test_rows=200).start()
    team.audit_sleep_seconds = 20
    try:
        (r,) = run_audit_attacks(team, ["starvation"])
    finally:
        team.stop()
    print(r.notes)
    assert r.escaped and not r.ok, r.notes
