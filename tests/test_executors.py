"""Executors: the local process pool and Ray give the same results as running in-process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from w2slab.engine.pipeline import Experiment, Job, execute
from w2slab.executors import _init_worker, run_jobs

WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=bow,head=linear,epochs=10"


def _jobs(testbed: Path) -> list[Job]:
    exp = Experiment.create(str(testbed), WEAK, STRONG)
    return [Job("weak", exp, s) for s in (1, 2)] + [Job("method", exp, s, "soft") for s in (1, 2)]


def test_local_pool_matches_in_process(toy_pairwise: Path) -> None:
    jobs = _jobs(toy_pairwise)
    done: list[str] = []
    pooled = run_jobs(jobs, "local", workers=2, on_done=lambda job, res: done.append(job.label))
    direct = [execute(j) for j in jobs]
    assert sorted(done) == sorted(j.label for j in jobs)
    for a, b in zip(pooled, direct):
        key = "train_probs" if "train_probs" in a else "test_probs"
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def test_gpu_workers_get_one_device_each(monkeypatch) -> None:
    import multiprocessing as mp

    counter = mp.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        _init_worker(counter, 2, 1)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "0"]


def test_ray_executor_runs_the_same_jobs(toy_pairwise: Path) -> None:
    ray = pytest.importorskip("ray")
    jobs = _jobs(toy_pairwise)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        results = run_jobs(jobs, "ray")
        resources = ray.cluster_resources()
    finally:
        ray.shutdown()
    assert resources.get("CPU") == 2
    direct = [execute(j) for j in jobs]
    np.testing.assert_allclose(results[0]["train_probs"], direct[0]["train_probs"], atol=1e-6)
    assert results[3]["transfer_acc"] == pytest.approx(direct[3]["transfer_acc"])
