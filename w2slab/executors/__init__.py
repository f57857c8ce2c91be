"""Run pipeline jobs in parallel: a local process pool (default) or Ray tasks.

GPU jobs get one GPU each: locally through ``CUDA_VISIBLE_DEVICES`` per worker
process, on Ray through ``num_gpus=1`` (Ray sets the variable itself).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from w2slab.engine.pipeline import Job, execute

OnDone = Callable[[Job, dict[str, Any]], None]
_GPU_COUNTER: Any = None


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _init_worker(counter: Any, n_gpus: int, threads: int) -> None:
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    if n_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % n_gpus)
    import torch

    torch.set_num_threads(threads)


def run_local(jobs: Sequence[Job], workers: int | None = None, on_done: OnDone | None = None) -> list[dict[str, Any]]:
    """Run jobs on a process pool (in-process when one worker suffices); results in job order."""
    n_gpus = gpu_count() if any(j.uses_gpu for j in jobs) else 0
    cpus = os.cpu_count() or 1
    workers = workers or (n_gpus or min(cpus, 8))
    workers = max(1, min(workers, len(jobs)))
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = execute(job)
            if on_done:
                on_done(job, results[i])
        return results  # type: ignore[return-value]
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    threads = max(1, cpus // workers)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(counter, n_gpus, threads)) as pool:
        futures = {pool.submit(execute, job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_done:
                on_done(jobs[i], results[i])
    return results  # type: ignore[return-value]


def run_ray(jobs: Sequence[Job], address: str | None = None, on_done: OnDone | None = None) -> list[dict[str, Any]]:
    """Run jobs as Ray tasks (``num_gpus=1`` for GPU jobs); starts a local Ray if none is given."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray executor needs Ray: pip install 'w2slab[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    task = ray.remote(execute)
    refs = [task.options(num_cpus=1, num_gpus=1 if j.uses_gpu else 0).remote(j) for j in jobs]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        i = index[done[0]]
        results[i] = ray.get(done[0])
        if on_done:
            on_done(jobs[i], results[i])
    return results  # type: ignore[return-value]


def run_jobs(jobs: Sequence[Job], executor: str = "local", workers: int | None = None, on_done: OnDone | None = None) -> list[dict[str, Any]]:
    if executor == "local":
        return run_local(jobs, workers, on_done)
    if executor == "ray":
        return run_ray(jobs, os.environ.get("W2SLAB_RAY_ADDRESS"), on_done)
    raise ValueError(f"unknown executor '{executor}' (known: local, ray)")
