"""The ``lm`` backend on a tiny random Qwen3 model saved to disk (offline, CPU)."""

from __future__ import annotations

import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below loads from local paths

import itertools

import numpy as np
import pytest
import torch
from tiny_lm import FILLER, keyword_split, make_tiny_lm

from w2slab.models.base import BackendConfig, soft_xent
from w2slab.models.factory import make_backend
from w2slab.models.lm import (
    LMBackend,
    label_token_id,
    length_grouped_batches,
    row_text,
    sorted_batches,
)
from w2slab.testbeds.format import Split

torch.set_num_threads(2)


def correctness_split(n: int = 6) -> Split:
    rows = [{"question": f"is the sky {c} ?", "choice": ("yes", "no")[i % 2]} for i, c in enumerate(FILLER[:n])]
    return Split("correctness", rows, np.array([i % 2 for i in range(n)]))


def config(path: str, **kw) -> BackendConfig:
    base = {
        "kind": "lm", "model": path, "lr": 2e-2, "epochs": 5, "batch_size": 16, "lora_r": 8, "lora_alpha": 16,
        "weight_decay": 0.0, "grad_checkpointing": False, "device": "cpu",
    }
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
    assert progress[0] == 0.0 and all(0 <= a < b < 1 for a, b in itertools.pairwise(progress))
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


def coupled_loss(logits, targets, weights, progress):
    """Soft cross-entropy plus a term that couples the rows (the batch's mean P(B) pulled to 0.5)."""
    p_b = torch.softmax(logits, -1)[:, 1].mean()
    return soft_xent(logits, targets, weights, progress) + (p_b - 0.5) ** 2


def test_micro_batches_give_the_same_fit(lm_path, data):
    """Splitting a batch into micro-batches (the out-of-memory fallback) leaves the gradient unchanged."""
    sub = data.subset(range(24))
    whole = LMBackend(config(lm_path, epochs=2, batch_size=8)).fit(sub, sub.labels, loss=coupled_loss)
    split = LMBackend(config(lm_path, epochs=2, batch_size=8))
    split.micro_batch = 3  # uneven: 3 + 3 + 2
    split.fit(sub, sub.labels, loss=coupled_loss)
    np.testing.assert_allclose(split.history, whole.history, atol=1e-5)
    np.testing.assert_allclose(split.predict_proba(sub), whole.predict_proba(sub), atol=1e-5)


def test_out_of_memory_turns_on_checkpointing_then_halves_the_micro_batch(lm_path, data, monkeypatch):
    sub = data.subset(range(24))
    reference = LMBackend(config(lm_path, epochs=2, batch_size=8)).fit(sub, sub.labels)
    real, calls = LMBackend._label_logits, []

    def flaky(self, *args):
        calls.append(len(args[0]))
        if len(calls) <= 2:  # the first two forwards run out of memory
            raise torch.cuda.OutOfMemoryError("simulated CUDA out of memory")
        return real(self, *args)

    monkeypatch.setattr(LMBackend, "_label_logits", flaky)
    backend = LMBackend(config(lm_path, epochs=2, batch_size=8, grad_checkpointing=False))
    with pytest.warns(RuntimeWarning, match="out of memory") as caught:
        backend.fit(sub, sub.labels)
    assert [str(w.message).rsplit("with ", 1)[1] for w in caught] == [
        "activation checkpointing on", "micro-batches of 4 rows"]
    assert backend.micro_batch == 4 and calls[:3] == [8, 8, 4]
    assert all(layer.gradient_checkpointing for layer in backend._lm.model.layers)
    assert len(backend.history) == len(reference.history)  # same batches and optimiser steps
    np.testing.assert_allclose(backend.history, reference.history, atol=1e-5)
    np.testing.assert_allclose(backend.predict_proba(sub), reference.predict_proba(sub), atol=1e-5)


def test_out_of_memory_at_one_row_is_raised(lm_path, data, monkeypatch):
    def oom(self, *args):
        raise torch.cuda.OutOfMemoryError("simulated CUDA out of memory")

    monkeypatch.setattr(LMBackend, "_label_logits", oom)
    backend = LMBackend(config(lm_path, epochs=1, batch_size=2))
    with pytest.warns(RuntimeWarning), pytest.raises(torch.cuda.OutOfMemoryError):
        backend.fit(data.subset(range(4)), data.labels[:4])
    assert backend.micro_batch == 1


def test_attention_gets_no_mask_and_runs_causal(fitted, data, monkeypatch):
    """SDPA sees no mask and ``is_causal=True``: the path that has flash kernels."""
    seen, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    fitted.logits(data.subset(range(4)))
    assert seen and all(mask is None and causal is True for mask, causal in seen)
