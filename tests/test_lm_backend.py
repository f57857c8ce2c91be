"""The ``lm`` backend on a tiny random Qwen3 model saved to disk (offline, CPU)."""

from __future__ import annotations

import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below loads from local paths

import numpy as np
import pytest
import torch

from tiny_lm import make_tiny_lm
from w2slab.models.base import BackendConfig, make_backend
from w2slab.models.lm import (
    LMBackend,
    label_token_id,
    length_grouped_batches,
    row_text,
    sorted_batches,
)
from w2slab.testbeds.format import Split

torch.set_num_threads(2)

FILLER = "the a is cat dog bird fish red blue green big small sky sea tree rock sun moon".split()


def keyword_split(n: int = 64, seed: int = 0) -> Split:
    """Pairwise rows whose label is set by a keyword in the prompt: alpha -> A, beta -> B."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for i in range(n):
        lab = i % 2
        words = list(rng.choice(FILLER, rng.integers(2, 14)))
        words.insert(int(rng.integers(0, len(words) + 1)), ("alpha", "beta")[lab])
        rows.append(
            {
                "prompt": " ".join(words),
                "first": " ".join(rng.choice(FILLER, rng.integers(1, 5))),
                "second": " ".join(rng.choice(FILLER, rng.integers(1, 5))),
            }
        )
        labels.append(lab)
    return Split("pairwise", rows, np.array(labels))


def correctness_split(n: int = 6) -> Split:
    rows = [{"question": f"is the sky {c} ?", "choice": ("yes", "no")[i % 2]} for i, c in enumerate(FILLER[:n])]
    return Split("correctness", rows, np.array([i % 2 for i in range(n)]))


def config(path: str, **kw) -> BackendConfig:
    base = dict(
        kind="lm", model=path, lr=2e-2, epochs=5, batch_size=16, lora_r=8, lora_alpha=16,
        weight_decay=0.0, grad_checkpointing=False, device="cpu",
    )
    return BackendConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory) -> str:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="module")
def data() -> Split:
    return keyword_split()


@pytest.fixture(scope="module")
def fitted(lm_path, data) -> LMBackend:
    backend = make_backend(config(lm_path))
    assert isinstance(backend, LMBackend)
    return backend.fit(data, data.labels, seed=0)


def test_fit_learns_keyword_task(fitted, data):
    acc = (fitted.predict_proba(data).argmax(1) == data.labels).mean()
    assert acc >= 0.9
    per_epoch = np.asarray(fitted.history).reshape(5, -1).mean(1)
    assert per_epoch[-1] < per_epoch[0] - 0.2


def test_predict_proba_is_a_distribution(fitted, data, lm_path):
    p = fitted.predict_proba(data)
    assert p.shape == (len(data), 2) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    assert (p >= 0).all()
    zero_shot = LMBackend(config(lm_path)).predict_proba(correctness_split())  # works before fit
    assert zero_shot.shape == (6, 2)
    np.testing.assert_allclose(zero_shot.sum(1), 1.0, atol=1e-6)


def test_label_logits_match_full_forward(fitted, data):
    """The cheap last-token x two-row head equals the full LM's logits (LoRA included)."""
    tok = fitted.tokenizer
    ids = [label_token_id(tok, " A"), label_token_id(tok, " B")]
    sub = data.subset(range(5))
    cheap, feats = fitted.logits(sub), fitted.features(sub)
    assert feats.shape == (5, fitted.model.config.hidden_size) and feats.dtype == np.float32
    with torch.no_grad():
        for i, row in enumerate(sub.rows):
            text = f"Question: {row['prompt']}\nAnswer A: {row['first']}\nAnswer B: {row['second']}\nLabel:"
            assert row_text("pairwise", row)[0] == text
            x = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
            out = fitted.model(input_ids=x, output_hidden_states=True)
            np.testing.assert_allclose(cheap[i], out.logits[0, -1, ids].numpy(), atol=1e-5)
            np.testing.assert_allclose(feats[i], out.hidden_states[-1][0, -1].numpy(), atol=1e-5)
    assert np.abs(cheap[:, 0] - cheap[:, 1]).max() > 1e-3  # the fitted model is not trivially flat


def test_batch_composition_does_not_change_predictions(fitted, data):
    data = data.subset(range(24))
    cfg = fitted.config
    try:
        fitted.config = replace(cfg, batch_size=1)
        one = fitted.predict_proba(data)
        fitted.config = replace(cfg, batch_size=8)
        eight = fitted.predict_proba(data)
    finally:
        fitted.config = cfg
    np.testing.assert_allclose(one, eight, atol=1e-4)


def test_zero_weights_leave_the_model_unchanged(lm_path, data):
    before = LMBackend(config(lm_path)).predict_proba(data)
    backend = LMBackend(config(lm_path, epochs=2, weight_decay=0.1)).fit(data, data.labels, np.zeros(len(data)))
    lora_b = [p for n, p in backend.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)
    np.testing.assert_allclose(backend.predict_proba(data), before, atol=1e-6)


def test_custom_loss_sees_weights_and_progress(lm_path, data):
    calls = []
    weights = np.linspace(0.5, 1.5, len(data)).astype(np.float32)

    def always_b(logits, targets, w, progress):
        calls.append((tuple(logits.shape), tuple(targets.shape), w.detach().cpu().numpy(), progress))
        return -torch.log_softmax(logits, -1)[:, 1].mean()

    backend = LMBackend(config(lm_path, epochs=3)).fit(data, data.labels, weights, loss=always_b)
    assert all(s[1] == 2 and t == s for s, t, _, _ in calls)
    progress = [c[3] for c in calls]
    assert progress[0] == 0.0 and all(0 <= a < b < 1 for a, b in zip(progress, progress[1:]))
    seen = np.sort(np.concatenate([c[2] for c in calls[: len(calls) // 3]]))  # one epoch
    np.testing.assert_allclose(seen, np.sort(weights), atol=1e-7)
    assert (backend.predict_proba(data).argmax(1) == 1).all()  # the custom loss was optimised


def test_seeded_and_checkpointing_invariant(lm_path, data):
    sub = data.subset(range(24))

    def run(seed, ckpt, b=None):
        b = b or LMBackend(config(lm_path, epochs=2, batch_size=8, grad_checkpointing=ckpt))
        return b.fit(sub, sub.labels, seed=seed).predict_proba(sub), b.history, b

    p0, h0, first = run(0, False)
    p1, _, _ = run(0, False)
    p2, h2, _ = run(0, True)
    p3, _, _ = run(1, False, first)  # refitting replaces the previous adapters
    p4, _, _ = run(0, False, first)
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(p0, p4)
    np.testing.assert_allclose(p0, p2, atol=1e-5)
    np.testing.assert_allclose(h0, h2, atol=1e-5)
    assert np.abs(p0 - p3).max() > 1e-6


def test_n_train_caps_rows(lm_path, data):
    b = LMBackend(config(lm_path, epochs=2, batch_size=4, n_train=10)).fit(data, data.labels)
    assert len(b.history) == 2 * 3  # ceil(10 / 4) batches per epoch


def test_label_token_must_be_single_token(tmp_path, lm_path):
    tok = LMBackend(config(lm_path))._ensure_tokenizer()
    assert tok.pad_token == tok.eos_token  # no pad token in the tokenizer: eos is used
    with pytest.raises(ValueError, match="single known token"):
        label_token_id(tok, " A B")
    broken = make_tiny_lm(tmp_path / "no_true", drop_tokens=(" True",))
    with pytest.raises(ValueError, match="' True'"):
        LMBackend(config(broken)).predict_proba(correctness_split())


def test_truncation_keeps_the_label_suffix(lm_path):
    backend = LMBackend(config(lm_path, max_length=24))
    long_q = " ".join(FILLER * 3) + " alpha"
    split = Split("correctness", [{"question": long_q, "choice": "yes"}])
    (ids,) = backend.encode(split)
    tok = backend.tokenizer
    tail = tok(" alpha\nAnswer: yes\nLabel:", add_special_tokens=False)["input_ids"]
    head = tok("Question:", add_special_tokens=False)["input_ids"]
    assert len(ids) == 24 and ids[-len(tail) :] == tail and ids[: len(head)] == head


def test_length_grouped_batches_cover_rows_and_limit_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, 1000).tolist()
    batches = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    again = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(0))
    assert batches == again

    def waste(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs) / sum(lengths) - 1

    random_batches = [list(range(i, min(i + 16, 1000))) for i in range(0, 1000, 16)]
    assert waste(batches) < 0.1 < waste(random_batches)
    assert waste(sorted_batches(lengths, 16)) < 0.02
