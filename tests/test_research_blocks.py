"""The offline researcher's W2S building blocks (w2slab/methods/blocks.py) on synthetic data with a
known structure, and the recipes that compose them on a toy testbed (fast: no server)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_toy_testbed
from test_grader_support import STRONG, WEAK

from w2slab.engine.kit import export_kit, predict
from w2slab.engine.pipeline import Experiment
from w2slab.models.base import BackendConfig
from w2slab.models.probe import ProbeBackend, principal_directions
from w2slab.methods.blocks import (agreement, calibrate_to_rate, choice_set, counterfactual_rows, crossfit_proba,
                                   exclusive_consistency, exclusive_scores, question_groups)
from w2slab.researchers.recipes import STARTERS, Mutator, Recipe, screening_recipes
from w2slab.testbeds import load_testbed
from w2slab.testbeds.format import Split

CHOICES = ["negative", "neutral", "positive"]


def _claims(n_questions: int, seed: int) -> tuple[Split, np.ndarray, np.ndarray]:
    """Claims with a known structure: each question has one true answer out of three; a row shows
    the true answer or a wrong one (half each). Returns the rows, labels and each row's true answer."""
    rng = np.random.default_rng(seed)
    answer = rng.integers(0, 3, n_questions)
    rows, labels = [], []
    for q in range(n_questions):
        truthful = rng.random() < 0.5
        shown = answer[q] if truthful else (answer[q] + rng.integers(1, 3)) % 3
        rows.append({"question": f"What is the sentiment of text {q}?", "choice": CHOICES[shown]})
        labels.append(int(truthful))
    return Split("correctness", rows, None, "synthetic"), np.asarray(labels), answer


def _student(answer: np.ndarray, seed: int):
    """A student that knows each answer's direction but has a per-question bias (it says 'true'
    to every choice of some questions, to none of others): the error exclusivity can fix."""
    rng = np.random.default_rng(seed)
    bias = rng.normal(0, 1.5, len(answer))
    noise = {}

    def proba(split: Split) -> np.ndarray:
        out = []
        for r in split.rows:
            q = int(r["question"].split("text ")[1].rstrip("?"))
            c = CHOICES.index(r["choice"])
            eps = noise.setdefault((q, c), rng.normal(0, 0.7))
            logit = 1.5 * (1 if c == answer[q] else -1) + bias[q] + eps
            out.append(1 / (1 + np.exp(-logit)))
        p1 = np.asarray(out)
        return np.stack([1 - p1, p1], 1)

    return proba


def test_exclusive_consistency_fixes_inconsistent_groups_and_raises_accuracy() -> None:
    split, labels, answer = _claims(2000, seed=1)
    proba = _student(answer, seed=2)
    raw = proba(split)
    choices = choice_set(split)
    assert choices == CHOICES
    # inconsistent before: many questions where the student calls two or three choices true, or none
    grid = proba(counterfactual_rows(split, choices))[:, 1].reshape(len(split), 3)
    n_true = (grid > 0.5).sum(1)
    assert ((n_true != 1).mean()) > 0.3
    fixed = exclusive_consistency(proba, split, choices, rate=float(labels.mean()))
    assert fixed is not None and fixed.shape == (len(split), 2)
    assert np.allclose(fixed.sum(1), 1) and ((fixed >= 0) & (fixed <= 1)).all()
    raw_acc = float((raw.argmax(1) == labels).mean())
    new_acc = float((fixed.argmax(1) == labels).mean())
    assert new_acc > raw_acc + 0.05, (raw_acc, new_acc)
    # consistent after: over each question's full choice set, the shares sum to one and at most one
    # choice clears a share of one half
    own = np.asarray([choices.index(r["choice"]) for r in split.rows])
    shares = np.stack([exclusive_scores(grid, np.full(len(split), j)) for j in range(3)], 1)
    assert np.allclose(shares.sum(1), 1)
    assert ((shares > 0.5).sum(1) <= 1).all()
    assert np.allclose(shares[np.arange(len(split)), own], exclusive_scores(grid, own))


def test_rows_sharing_a_question_are_pooled_and_sum_to_at_most_one() -> None:
    rows = [{"question": "q1", "choice": "a"}, {"question": "q1", "choice": "b"}, {"question": "q2", "choice": "a"}]
    split = Split("correctness", rows, None, "x")
    groups = question_groups(split)
    assert list(groups) == [0, 0, 1]
    # the student scores q1's two rows as both very likely true, inconsistently across its two copies
    p_true = np.asarray([[0.9, 0.8], [0.7, 0.9], [0.2, 0.6]])
    s = exclusive_scores(p_true, np.asarray([0, 1, 0]), groups)
    assert s[0] + s[1] == pytest.approx(1.0)
    assert s[2] == pytest.approx(0.2 / 0.8)


def test_no_consistency_without_a_closed_choice_set() -> None:
    pairs = Split("pairwise", [{"prompt": "p", "first": "a", "second": "b"}], None, "x")
    single = Split("correctness", [{"question": f"q{i}", "choice": "true"} for i in range(5)], None, "x")
    open_ended = Split("correctness", [{"question": f"q{i}", "choice": str(i)} for i in range(50)], None, "x")
    assert choice_set(pairs) == [] and choice_set(single) == [] and choice_set(open_ended) == []
    never = lambda s: (_ for _ in ()).throw(AssertionError("must not be called"))  # noqa: E731
    assert exclusive_consistency(never, single, [], 0.5) is None
    assert exclusive_consistency(never, pairs, ["a", "b"], 0.5) is None


def test_calibrate_to_rate_matches_the_class_balance() -> None:
    score = np.random.default_rng(0).random(1000)
    for rate in (0.2, 0.5, 0.7):
        p = calibrate_to_rate(score, rate)
        assert abs((p[:, 1] > 0.5).mean() - rate) < 0.01
        assert np.all(np.diff(p[np.argsort(score), 1]) >= 0)  # monotone in the score


def test_crossfit_scores_each_row_with_a_student_that_never_saw_it_and_finds_teacher_errors() -> None:
    rng = np.random.default_rng(3)
    n = 600
    y = rng.integers(0, 2, n)
    x = y[:, None] * 2.0 + rng.normal(0, 0.6, (n, 2))  # two separable clusters
    flipped = rng.random(n) < 0.2  # the teacher's errors
    teacher = np.where(flipped, 1 - y, y)
    t = np.eye(2)[teacher]
    seen: list[tuple[set[int], set[int]]] = []

    def knn(train: np.ndarray, held: np.ndarray, fold: int) -> np.ndarray:
        """A memorising student: 15 nearest neighbours' teacher labels (itself included when trained on)."""
        seen.append((set(train.tolist()), set(held.tolist())))
        d = ((x[held][:, None] - x[train][None]) ** 2).sum(-1)
        nn = train[np.argsort(d, 1)[:, :15]]
        p1 = teacher[nn].mean(1)
        return np.stack([1 - p1, p1], 1)

    oof = crossfit_proba(knn, n, folds=2, seed=0)
    assert len(seen) == 2 and all(not (a & b) for a, b in seen)
    assert set().union(*(b for _, b in seen)) == set(range(n))
    score = agreement(oof, t)
    # rows the out-of-fold student disagrees with are mostly teacher errors: keeping the 70% it
    # agrees with most removes most of them
    keep = np.argsort(-score, kind="stable")[: int(0.7 * n)]
    assert flipped[keep].mean() < 0.5 * flipped.mean()
    # an in-sample 1-NN student would agree with every teacher label (it memorises them)
    in_sample = np.eye(2)[teacher]
    assert agreement(in_sample, t).min() == 1.0


def test_screening_covers_every_applicable_block_and_mutations_respect_the_testbed() -> None:
    pairs, claims = Mutator(pairwise=True), Mutator(pairwise=False, closed_choices=True)
    fever_like = Mutator(pairwise=False, closed_choices=False)
    assert "consistency" not in pairs.applicable() and "symmetric" in pairs.applicable()
    assert "consistency" in claims.applicable() and "symmetric" not in claims.applicable()
    assert "consistency" not in fever_like.applicable()
    a = screening_recipes(Recipe(), claims.applicable(), start=1000)
    b = screening_recipes(Recipe(), claims.applicable(), start=1001)
    assert {blk for blk, _ in a} == set(claims.applicable()) & set(STARTERS)
    assert a[0][0] == "consistency"  # the structure the rows show comes first
    assert a[1][0] != b[1][0]  # then two researchers screen different blocks first
    assert all(r.key != Recipe().key for _, r in a)
    rng, tried = random.Random(0), {Recipe().key}
    for _ in range(40):
        got = fever_like.mutate(Recipe(), rng, tried)
        assert got is not None and got[1].consistency == "none" and not got[1].symmetric
        tried.add(got[1].key)


def test_recipe_keys_of_old_recipes_are_unchanged_and_new_blocks_cost_a_fit() -> None:
    assert Recipe().key == Recipe(consistency="none", consistency_mix=0.5).key
    assert "rank" not in Recipe().canonical() and Recipe(rank=32).key != Recipe().key
    assert Recipe(rank=32).family == "rank" and Recipe(rank=8).describe() == "rank=8"
    assert Recipe(consistency="both").cost == Recipe().cost + 1
    assert Recipe(filter="crossfit").cost == Recipe().cost + 1
    assert Recipe(filter="crossfit", keep_frac=0.5).key != Recipe(filter="crossfit", keep_frac=0.85).key
    assert "consistency=both" in Recipe(consistency="both").family


def test_rendered_recipes_with_the_new_blocks_run_on_a_toy_testbed(tmp_path: Path) -> None:
    toy = make_toy_testbed(tmp_path / "toy-claims", "correctness", sizes=(40, 160, 80))
    kit = export_kit(Experiment.create(str(toy), WEAK, STRONG), [1], tmp_path / "kit")
    plain = np.asarray(predict(kit, _render(Recipe(epochs=5), tmp_path), [1])["predictions"]["1"])
    for r in (Recipe(consistency="test", epochs=5), Recipe(consistency="both", consistency_mix=0.5, epochs=5),
              Recipe(filter="crossfit", keep_frac=0.7, epochs=5, consistency="test")):
        out = predict(kit, _render(r, tmp_path), [1])
        p = np.asarray(out["predictions"]["1"])
        assert p.shape == (80,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
        assert not np.allclose(p, plain)  # the block acts
    notes = predict(kit, _render(Recipe(consistency="both", epochs=5), tmp_path), [1])["notes"]["1"]
    assert 0 <= notes["consistency_changed"] <= 1


def test_low_rank_student_sees_only_the_top_principal_directions(tmp_path: Path) -> None:
    """The ``rank`` block: the probe head trains on the top-k principal directions of its
    standardised features (fitted without labels), so it cannot use a direction of low variance
    even when the targets follow it exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    basis = principal_directions(x - x.mean(0), 2)
    assert basis.shape == (6, 2) and torch.allclose(basis.T @ basis, torch.eye(2), atol=1e-5)
    assert basis[0, 0].abs() > 0.99 and basis[1, 1].abs() > 0.99  # the two high-variance axes, in order
    assert torch.equal(basis, principal_directions(x - x.mean(0), 2))  # deterministic, signs included
    cfg = BackendConfig(rank=3)
    assert cfg.cache_dict()["rank"] == 3 and "rank" not in BackendConfig().cache_dict()  # old cache keys stay valid
    assert "rank" not in BackendConfig(kind="lm", model="x", rank=3).cache_dict()  # the lm backend ignores it
    with pytest.raises(ValueError, match="rank is an option of the probe"):
        BackendConfig.parse("lm:model=x,rank=3")
    toy = make_toy_testbed(tmp_path / "toy-claims", "correctness", sizes=(40, 160, 80))
    kit = export_kit(Experiment.create(str(toy), WEAK, STRONG), [1], tmp_path / "kit")
    plain = np.asarray(predict(kit, _render(Recipe(epochs=5), tmp_path), [1])["predictions"]["1"])
    low = predict(kit, _render(Recipe(epochs=5, rank=8), tmp_path), [1])["predictions"]["1"]
    assert not np.allclose(low, plain) and low == predict(kit, _render(Recipe(epochs=5, rank=8), tmp_path), [1])["predictions"]["1"]
    student = ProbeBackend(BackendConfig.parse("model=glove-50,head=mlp,epochs=2,rank=4"))
    data = load_testbed(toy)
    student.fit(data.train_unlabel, np.asarray(data.train_unlabel.labels), seed=1)
    assert student.head is not None and student.head[0].in_features == 4
    with pytest.raises(ValueError, match="rank=100000"):
        ProbeBackend(BackendConfig.parse("model=glove-50,rank=100000")).fit(data.train_unlabel, np.asarray(data.train_unlabel.labels))


def _render(r: Recipe, folder: Path) -> str:
    path = folder / f"recipe_{r.key}.py"
    path.write_text(r.render())
    return str(path)


def _researcher(base: Path, kind: str, seed: int):
    from w2slab.researchers.contract import Budgets, ResearcherConfig
    from w2slab.researchers.offline import OfflineResearcher

    toy = make_toy_testbed(base / f"toy-{kind}", kind, sizes=(40, 120, 60))
    kit = base / f"kit-{kind}"
    if not kit.exists():
        export_kit(Experiment.create(str(toy), WEAK, STRONG), [1, 2, 3, 4, 5], kit)
    ws = base / f"r-{kind}-{seed}"
    cfg = ResearcherConfig(name="offline-t", token="t", grader_url="http://127.0.0.1:9", testbed="toy", kit_dir=kit,
                           workspace=ws / "workspace", direction="ensembles", direction_name="ensembles", budgets=Budgets(),
                           transcript=ws / "t.jsonl", usage_path=ws / "usage.json", stop_file=ws / "STOP",
                           dev_seeds=[1, 2, 3, 4, 5], seed=seed)
    return OfflineResearcher(cfg)


def test_researcher_screens_structure_first_then_lets_thompson_pick_the_other_blocks(tmp_path: Path) -> None:
    """On claims with a closed choice set the even-seed researcher tries consistency right after the
    naive recipe; the other blocks' starters are Thompson candidates, so a strong result is built
    on before every block has been screened. Pairwise rows never get the consistency block."""
    r = _researcher(tmp_path, "correctness", seed=1000)
    assert r.mutator.closed_choices and r.starters[0][0] == "consistency"
    assert {b for b, _ in r.screen} <= set(r.mutator.applicable()) and "consistency" not in {b for b, _ in r.screen}
    root = r.nb.node(Recipe(), origin="root")
    root["results"].update({"1": 0.0, "2": 0.0})
    for _, recipe in r.starters:  # the forced opening moves measured: consistency ahead of the rest
        node = r.nb.node(recipe, origin="starter", parent=Recipe().key)
        node["results"].update({"1": 0.24, "2": 0.26} if recipe.consistency != "none" else {"1": -0.05, "2": -0.04})
    kinds = []
    for _ in range(30):  # the grader stand-in: recipes with the consistency block score 0.25, others -0.1
        action = r.choose()
        assert action is not None
        kinds.append(action.origin if action.kind == "try" else action.kind)
        value = 0.25 if action.recipe.consistency != "none" else -0.1
        r.nb.node(action.recipe, origin=action.origin)["results"].update({str(s): value for s in action.seeds})
    assert "screen" in kinds  # unmeasured blocks still get screened
    builds = sum(k in ("mutation", "crossover", "confirm") for k in kinds)
    assert builds > kinds.count("screen")  # but most experiments build on (or confirm) the leader
    odd = _researcher(tmp_path, "correctness", seed=1001)
    assert odd.starters[0][0] != "consistency" and any(b == "consistency" for b, _ in odd.starters)
    pairs = _researcher(tmp_path, "pairwise", seed=1000)
    assert not pairs.mutator.closed_choices and pairs.starters[0][0] == "symmetric"
    assert all(rec.consistency == "none" for _, rec in pairs.starters + pairs.screen)
