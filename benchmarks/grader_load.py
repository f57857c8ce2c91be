"""Load test for the grader: N concurrent httpx async clients evaluating, posting and searching
on loopback for a bounded time; prints throughput, latency p50/p95/p99 per operation and errors.

By default it starts its own server (a generated toy testbed, a fresh SQLite file, huge budgets):

    .venv/bin/python benchmarks/grader_load.py --duration 20 --clients 50 --workers 1

or point it at a running grader with ``--url`` and ``--admin-token`` (it adds researchers ``loadN``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

WEAK = "model=bow,head=linear,n_train=30,epochs=10"
STRONG = "model=glove-50,head=mlp,epochs=10"
WORDS = "good great bad awful movie plot actor story fun boring weak strong student teacher label noise".split()


def make_testbed(folder: Path, n_test: int) -> Path:
    """A small deterministic pairwise testbed (same bytes each run, so baselines come from the cache)."""
    from w2slab.testbeds.format import write_jsonl

    rng = random.Random(7)
    for split, n in (("train_label", 60), ("train_unlabel", 240), ("test", n_test)):
        rows = []
        for _ in range(n):
            pos = rng.random() < 0.5
            good, bad = " ".join(rng.choices(WORDS[:2] + WORDS[4:8], k=7)), " ".join(rng.choices(WORDS[2:8], k=7))
            rows.append({"prompt": "Which is more positive?", "first": good if pos else bad,
                         "second": bad if pos else good, "label": "A" if pos else "B"})
        write_jsonl(folder / f"{split}.jsonl", rows)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, workers: int, n_test: int, admin: str) -> tuple[subprocess.Popen, str]:
    tb = make_testbed(tmp / "bench", n_test)
    port = free_port()
    cmd = [sys.executable, "-m", "w2slab.grader.cli", "serve", "-t", f"bench={tb}", "--weak", WEAK, "--strong", STRONG,
           "--port", str(port), "--workers", str(workers), "--db", f"sqlite:///{tmp / 'bench.db'}",
           "--eval-per-hour", "1000000000", "--eval-total", "1000000000", "--baseline-workers", "1"]
    env = {**os.environ, "W2SLAB_ADMIN_TOKEN": admin}
    proc = subprocess.Popen(cmd, env=env, stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited:\n{(tmp / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("server did not start")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000 if xs else float("nan")


async def run(url: str, admin: str, clients: int, duration: float, mix: dict[str, float]) -> int:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as a:
        tokens = []
        for i in range(clients):
            r = await a.post("/api/admin/researchers", json={"name": f"load{i}-{secrets.token_hex(3)}"})
            r.raise_for_status()
            tokens.append(r.json()["token"])
        tb = (await a.get("/api/testbeds")).json()[0]
    n, name = tb["test_rows"], tb["name"]
    rng = np.random.default_rng(0)
    bodies = [json.dumps({"testbed": name, "predictions": [round(float(x), 4) for x in rng.random(n)]}).encode()
              for _ in range(16)]
    terms = ["confidence", "noise", "teacher", "student labels", "entropy", "weak"]
    lat: dict[str, list[float]] = {k: [] for k in mix}
    errors: dict[str, int] = {k: 0 for k in mix}
    samples: list[str] = []
    ops, weights = list(mix), list(mix.values())
    deadline = time.monotonic() + duration

    async def client(i: int) -> None:
        r = random.Random(i)
        headers = {"Authorization": f"Bearer {tokens[i]}", "content-type": "application/json"}
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) as c:
            while time.monotonic() < deadline:
                op = r.choices(ops, weights)[0]
                t0 = time.perf_counter()
                try:
                    if op == "evaluate":
                        resp = await c.post("/api/evaluate", content=r.choice(bodies))
                    elif op == "post":
                        body = {"kind": r.choice(["insight", "hypothesis", "result"]), "title": f"{r.choice(terms)} run {i}",
                                "body": " ".join(r.choices(WORDS, k=30))}
                        resp = await c.post("/api/posts", content=json.dumps(body).encode())
                    else:
                        resp = await c.get("/api/posts/search", params={"q": r.choice(terms), "limit": 20})
                    ok = resp.status_code < 300
                    if not ok and len(samples) < 5:
                        samples.append(f"{op}: {resp.status_code} {resp.text[:200]}")
                except httpx.HTTPError as e:
                    ok = False
                    if len(samples) < 5:
                        samples.append(f"{op}: {type(e).__name__} {e}")
                dt = time.perf_counter() - t0
                if ok:
                    lat[op].append(dt)
                else:
                    errors[op] += 1

    start = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - start
    total = sum(map(len, lat.values()))
    print(f"{clients} clients, {elapsed:.1f} s, {total} ok requests = {total / elapsed:.0f} req/s, errors {sum(errors.values())}")
    print(f"{'operation':<10} {'count':>7} {'per s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    everything = [x for v in lat.values() for x in v]
    for op in ops + ["all"]:
        xs = everything if op == "all" else lat[op]
        err = sum(errors.values()) if op == "all" else errors[op]
        print(f"{op:<10} {len(xs):>7} {len(xs) / elapsed:>7.0f} {pct(xs, 50):>8.1f} {pct(xs, 95):>8.1f} {pct(xs, 99):>8.1f} {err:>7}")
    for s in samples:
        print("  error sample:", s)
    return sum(errors.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server started here")
    ap.add_argument("--test-rows", type=int, default=500, help="test rows of the generated testbed")
    ap.add_argument("--mix", default="evaluate=0.8,post=0.1,search=0.1", help="operation weights")
    ap.add_argument("--url", help="a running grader instead of starting one")
    ap.add_argument("--admin-token", default=os.environ.get("W2SLAB_ADMIN_TOKEN"))
    args = ap.parse_args()
    mix = {k: float(v) for k, v in (p.split("=") for p in args.mix.split(","))}
    proc = None
    with tempfile.TemporaryDirectory(prefix="grader-load-") as tmp:
        if args.url:
            if not args.admin_token:
                sys.exit("--url needs --admin-token (or W2SLAB_ADMIN_TOKEN)")
            url, admin = args.url, args.admin_token
        else:
            admin = f"adm_{secrets.token_urlsafe(24)}"
            t0 = time.monotonic()
            proc, url = start_server(Path(tmp), args.workers, args.test_rows, admin)
            print(f"server with {args.workers} worker(s), {args.test_rows} test rows, up in {time.monotonic() - t0:.1f} s")
        try:
            errors = asyncio.run(run(url, admin, args.clients, args.duration, mix))
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
