"""Each built-in method does what it claims; plug-ins load from files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from w2slab.engine.pipeline import Experiment, method_context, run_method
from w2slab.engine.stats import accuracy
from w2slab.methods import MethodContext, MethodError, bind_params, get_method
from w2slab.methods.builtin import aux_confidence_loss
from w2slab.models.base import soft_xent
from w2slab.testbeds import load_testbed

WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=glove-50,head=mlp,epochs=15"


@pytest.fixture
def setup(toy_pairwise: Path) -> tuple[Experiment, MethodContext, np.ndarray]:
    exp = Experiment.create(str(toy_pairwise), WEAK, STRONG)
    data = load_testbed(exp.testbed)
    return exp, method_context(exp, 1), data


def _with_weak(ctx: MethodContext, probs: np.ndarray) -> MethodContext:
    return MethodContext(ctx.train, probs, ctx.test, ctx.strong, ctx.seed, ctx.weak_test_probs)


def test_context_holds_no_labels(setup) -> None:
    _, ctx, _ = setup
    assert ctx.train.labels is None and ctx.test.labels is None
    assert all("label" not in r for r in ctx.train.rows + ctx.test.rows)


def test_naive_uses_hard_labels_soft_uses_probabilities(setup) -> None:
    _, ctx, data = setup
    naive, soft = get_method("naive"), get_method("soft")
    one_hot = np.eye(2)[ctx.weak_hard]
    np.testing.assert_allclose(naive(ctx), soft(_with_weak(ctx, one_hot)), atol=1e-6)
    # uninformative soft labels teach the soft student to be unsure; naive turns them into class 0
    flat = _with_weak(ctx, np.full((len(ctx.train), 2), 0.5))
    assert np.abs(soft(flat)[:, 1] - 0.5).max() < 0.1
    assert naive(flat)[:, 0].mean() > 0.9


def test_aux_conf_loss_mixes_in_thresholded_student_guesses() -> None:
    logits = torch.tensor([[0.0, 2.0], [0.0, 1.0], [0.0, -1.0], [0.0, -2.0]])
    weak = torch.tensor([[0.4, 0.6]] * 4)
    w = torch.ones(4)
    loss = aux_confidence_loss(weak_positive_rate=0.5, alpha_max=0.5, warmup=0.2)
    assert loss(logits, weak, w, 0.0) == pytest.approx(soft_xent(logits, weak, w, 0.0).item())  # warm-up start
    # after warm-up: target = 0.5 * weak + 0.5 * hard, hard = top half of P(class 1) -> [1, 1, 0, 0]
    hard = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    expected = soft_xent(logits, 0.5 * weak + 0.5 * hard, w, 1.0)
    assert loss(logits, weak, w, 0.5) == pytest.approx(expected.item())
    # the threshold follows the weak class balance: 25% positive -> only the top row is class 1
    loss25 = aux_confidence_loss(0.25, 1.0, 0.0)
    hard25 = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert loss25(logits, weak, w, 1.0) == pytest.approx(soft_xent(logits, hard25, w, 1.0).item())


def test_aux_conf_trusts_the_student_where_the_teacher_is_unsure(setup) -> None:
    _, ctx, _ = setup
    flat = _with_weak(ctx, np.full((len(ctx.train), 2), 0.5))  # a teacher with no opinion
    soft_probs = get_method("soft")(flat)
    aux_probs = get_method("aux-conf")(flat, alpha_max=0.75, warmup=0.2)
    # soft stays at 0.5; the auxiliary term pulls the student to its own confident, balanced guesses
    assert np.abs(aux_probs[:, 1] - 0.5).mean() > np.abs(soft_probs[:, 1] - 0.5).mean() + 0.1
    assert 0.2 < (aux_probs[:, 1] > 0.5).mean() < 0.8
    assert np.array_equal(get_method("aux-conf")(ctx, alpha_max=0.0) > 0.5, get_method("soft")(ctx) > 0.5)


def test_confident_drops_unsure_rows(setup) -> None:
    _, ctx, data = setup
    truth = data.train_unlabel.labels
    probs = np.eye(2)[truth] * 0.9 + 0.05  # confident and right ...
    unsure = np.arange(len(truth)) % 2 == 0
    probs[unsure] = np.where(np.eye(2)[1 - truth[unsure]] > 0, 0.6, 0.4)  # ... or unsure and wrong
    bad = _with_weak(ctx, probs)
    acc_conf = accuracy(get_method("confident")(bad, threshold=0.75), data.test.labels)
    acc_naive = accuracy(get_method("naive")(bad), data.test.labels)
    assert bad.notes["kept_fraction"] == pytest.approx(1 - unsure.mean())
    assert acc_conf > acc_naive + 0.1


def test_self_train_relabels_with_the_previous_student(setup) -> None:
    _, ctx, _ = setup
    np.testing.assert_allclose(get_method("self-train")(ctx, rounds=0), get_method("soft")(ctx), atol=1e-6)
    first = ctx.new_student().fit(ctx.train, ctx.weak_probs, seed=ctx.seed)
    pseudo = np.eye(2)[first.predict_proba(ctx.train).argmax(1)]
    mixed = 0.5 * ctx.weak_probs + 0.5 * pseudo
    expected = ctx.new_student().fit(ctx.train, mixed, seed=ctx.seed + 1).predict_proba(ctx.test)
    np.testing.assert_allclose(get_method("self-train")(ctx, rounds=1, teacher_weight=0.5), expected, atol=1e-6)


def test_unsupervised_never_reads_the_teacher(setup) -> None:
    _, ctx, data = setup
    blind = _with_weak(ctx, np.full((len(ctx.train), 2), np.nan))
    probs = get_method("unsupervised")(blind)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, get_method("unsupervised")(ctx))  # same with or without a teacher


def test_method_from_file_and_params(tmp_path: Path, toy_pairwise: Path) -> None:
    idea = tmp_path / "idea.py"
    idea.write_text(
        "import numpy as np\nfrom w2slab.methods import method\n\n"
        "@method('flip-idea')\ndef flip(ctx, scale: float = 1.0):\n"
        "    p = ctx.weak_test_probs[:, ::-1] ** scale\n"
        "    return p / p.sum(1, keepdims=True)\n"
    )
    exp = Experiment.create(str(toy_pairwise), WEAK, STRONG)
    out = run_method(exp, str(idea), {"scale": "2"}, 1)
    assert out["params"] == {"scale": 2.0}
    weak_acc = accuracy(method_context(exp, 1).weak_test_probs, load_testbed(exp.testbed).test.labels)
    assert out["transfer_acc"] == pytest.approx(1 - weak_acc)
    with pytest.raises(MethodError, match="unknown parameter 'nope'"):
        bind_params(get_method(str(idea)), {"nope": 1})
    with pytest.raises(MethodError, match="no method named 'x'"):
        get_method(f"{idea}:x")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(MethodError, match="failed to import: RuntimeError: boom"):
        get_method(str(broken))
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        get_method("nope")


def test_bad_method_output_is_rejected(tmp_path: Path, toy_pairwise: Path) -> None:
    idea = tmp_path / "nan.py"
    idea.write_text("import numpy as np\ndef run(ctx):\n    return np.full((len(ctx.test), 2), np.nan)\n")
    with pytest.raises(ValueError, match="NaN"):
        run_method(Experiment.create(str(toy_pairwise), WEAK, STRONG), str(idea), {}, 1)
