"""The ``lm`` backend's CUDA paths on the tiny random Qwen3 (bf16 autocast, fused AdamW, OOM fallback).

Marked ``gpu``; every test skips without CUDA. Run on a GPU machine with
``python -m pytest -q -m gpu tests/test_lm_gpu.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below loads from local paths

import numpy as np
import pytest
import torch
from tiny_lm import keyword_split, make_tiny_lm

from w2slab.models.base import BackendConfig
from w2slab.models.lm import LMBackend
from w2slab.testbeds.format import Split

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cuda_config(path: str, **kw) -> BackendConfig:
    base = {
        "kind": "lm", "model": path, "lr": 2e-2, "epochs": 5, "batch_size": 16, "lora_r": 8, "lora_alpha": 16,
        "weight_decay": 0.0, "grad_checkpointing": False, "device": "cuda",
    }
    return BackendConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory) -> str:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_qwen3_gpu"))


@pytest.fixture(scope="module")
def data() -> Split:
    return keyword_split()


@pytest.fixture(scope="module")
def fitted(lm_path, data) -> LMBackend:
    return LMBackend(cuda_config(lm_path)).fit(data, data.labels, seed=0)


def test_bf16_base_fp32_adapters_and_loss_decreases(fitted, data):
    q = fitted._lm.model.layers[0].self_attn.q_proj
    assert q.base_layer.weight.dtype == torch.bfloat16 and q.base_layer.weight.is_cuda
    lora = [p for p in fitted.model.parameters() if p.requires_grad]
    assert lora and all(p.is_cuda and p.dtype == torch.float32 for p in lora)
    per_epoch = np.asarray(fitted.history).reshape(5, -1).mean(1)
    assert np.isfinite(per_epoch).all() and per_epoch[-1] < per_epoch[0] - 0.2
    assert (fitted.predict_proba(data).argmax(1) == data.labels).mean() >= 0.8


def test_predictions_are_float32_distributions(fitted, data):
    p = fitted.predict_proba(data)
    assert p.shape == (len(data), 2) and p.dtype == np.float32 and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    assert ((p >= 0) & (p <= 1)).all()
    logits, feats = fitted.logits(data), fitted.features(data)
    assert logits.dtype == feats.dtype == np.float32 and feats.shape == (len(data), fitted._lm.config.hidden_size)


def test_fused_adamw_on_cuda_parameters(fitted):
    opt = fitted._opt
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["fused"] is True
    params = [p for g in opt.param_groups for p in g["params"]]
    assert params and all(p.is_cuda and p.dtype == torch.float32 for p in params)
    assert all(opt.state[p]["exp_avg"].is_cuda for p in params)  # it has stepped


def test_attention_gets_no_mask_and_runs_causal(fitted, data, monkeypatch):
    """SDPA sees no mask and ``is_causal=True`` on CUDA: the path with flash kernels."""
    seen, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("attn_mask"), kwargs.get("is_causal"), args[0].dtype))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    fitted.logits(data.subset(range(4)))
    assert seen and all(m is None and c is True and dt == torch.bfloat16 for m, c, dt in seen)


def test_real_cuda_out_of_memory_falls_back(lm_path, data, monkeypatch):
    """A real allocator OOM (an impossible allocation) in the first two steps: checkpointing, then half batches."""
    sub = data.subset(range(32))
    real, calls = LMBackend._label_logits, []

    def flaky(self, *args):
        calls.append(len(args[0]))
        if len(calls) <= 2:
            torch.empty(1 << 46, dtype=torch.uint8, device="cuda")  # 64 TiB: torch.OutOfMemoryError
        return real(self, *args)

    monkeypatch.setattr(LMBackend, "_label_logits", flaky)
    backend = LMBackend(cuda_config(lm_path, epochs=2, batch_size=16))
    with pytest.warns(RuntimeWarning, match="out of memory"):
        backend.fit(sub, sub.labels)
    monkeypatch.undo()
    assert backend.micro_batch == 8 and calls[:3] == [16, 16, 8]
    assert all(layer.gradient_checkpointing for layer in backend._lm.model.layers)
    assert len(backend.history) == 4 and np.isfinite(backend.history).all()
    reference = LMBackend(cuda_config(lm_path, epochs=2, batch_size=16)).fit(sub, sub.labels)
    np.testing.assert_allclose(backend.predict_proba(sub), reference.predict_proba(sub), atol=0.05)
    assert torch.cuda.memory_allocated() < 2**30  # the failed steps left nothing behind


def test_compiled_fit_matches_eager(lm_path, data):
    """Regional torch.compile of the decoder layers: same training and predictions as eager (bf16 noise)."""
    sub = data.subset(range(16))  # one batch: one shape, few compilations
    eager = LMBackend(cuda_config(lm_path, epochs=3)).fit(sub, sub.labels)
    compiled = LMBackend(cuda_config(lm_path, epochs=3), compile=True).fit(sub, sub.labels)
    np.testing.assert_allclose(compiled.history, eager.history, atol=0.05)
    np.testing.assert_allclose(compiled.predict_proba(sub), eager.predict_proba(sub), atol=0.05)
