"""Load test for the grader: N concurrent clients evaluating, posting and searching on loopback
for a bounded time; prints throughput, latency p50/p95/p99 per operation and errors.

Each client keeps one HTTP/1.1 connection and speaks the protocol with asyncio streams
(:class:`Connection`): on a 2-core machine the load generator shares the CPU with the server, and
httpx's async client took half a core for 50 clients where this takes about a tenth, which
otherwise comes out of the server's share (``--client httpx`` measures with httpx instead).

By default it starts its own server (a generated toy testbed, a fresh SQLite file, huge budgets):

    .venv/bin/python benchmarks/grader_load.py --duration 20 --clients 50 --workers 2 --mix evaluate=1

``--compare REF`` measures the grader of git revision REF (its ``w2slab`` package extracted with
``git archive`` into a temporary folder, served by the same Python) and this working tree's, one
after the other, ``--rounds`` times, and prints both side by side (median and range over rounds).
``--package DIR`` serves the ``w2slab`` package found in DIR instead of this one. Or point it at a
running grader with ``--url`` and ``--admin-token`` (it adds researchers ``loadN``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from grader_bench import ROOT, STRONG, WEAK, WORDS, extract, make_testbed, package_env

from w2slab.grader.process import GraderProcess

def start_server(tmp: Path, workers: int, n_test: int, admin: str, package: Path | None = None) -> GraderProcess:
    """A grader on a fresh database; ``package``: a folder holding another ``w2slab`` to serve."""
    tb = make_testbed(tmp / "bench", n_test)
    env = package_env(package)
    db = tmp / f"bench-{secrets.token_hex(4)}.db"
    server = GraderProcess(f"bench={tb}", tmp, WEAK, STRONG, admin_token=admin, eval_per_hour=10**9, eval_total=10**9,
                           workers=workers, db_url=f"sqlite:///{db}", log=db.with_suffix(".log"), env=env,
                           cwd=package or ROOT)
    try:
        return server.wait_ready(300)
    except RuntimeError as e:
        sys.exit(str(e))


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: just enough of the protocol for the
    grader's JSON answers (``Content-Length`` bodies; it reconnects after an error)."""

    def __init__(self, url: str, token: str) -> None:
        u = httpx.URL(url)
        self.host, self.port = u.host, u.port or 80
        self.fixed = f"Host: {self.host}:{self.port}\r\nAuthorization: Bearer {token}\r\n"
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        typed = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else ""
        writer.write(f"{method} {target} HTTP/1.1\r\n{self.fixed}{typed}\r\n".encode() + body)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            length = int(next((v for k, v in fields.items() if k.lower() == "content-length"), "0"))
            return status, await reader.readexactly(length)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


class HttpxConnection:
    """The same interface on httpx's async client (``--client httpx``), one connection per client."""

    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
                                        timeout=30, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        resp = await self.client.request(method, target, content=body or None)
        return resp.status_code, resp.content

    async def close(self) -> None:
        await self.client.aclose()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000 if xs else float("nan")


async def run(url: str, admin: str, clients: int, duration: float, mix: dict[str, float], client_kind: str = "raw") -> dict[str, float]:
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
        c = Connection(url, tokens[i]) if client_kind == "raw" else HttpxConnection(url, tokens[i])
        try:
            while time.monotonic() < deadline:
                op = r.choices(ops, weights)[0]
                t0 = time.perf_counter()
                try:
                    if op == "evaluate":
                        status, text = await c.request("POST", "/api/evaluate", r.choice(bodies))
                    elif op == "post":
                        body = {"kind": r.choice(["insight", "hypothesis", "result"]), "title": f"{r.choice(terms)} run {i}",
                                "body": " ".join(r.choices(WORDS, k=30))}
                        status, text = await c.request("POST", "/api/posts", json.dumps(body).encode())
                    else:
                        query = httpx.QueryParams({"q": r.choice(terms), "limit": 20})
                        status, text = await c.request("GET", f"/api/posts/search?{query}")
                    ok = status < 300
                    if not ok and len(samples) < 5:
                        samples.append(f"{op}: {status} {text[:200]!r}")
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                    ok = False
                    if len(samples) < 5:
                        samples.append(f"{op}: {type(e).__name__} {e}")
                dt = time.perf_counter() - t0
                if ok:
                    lat[op].append(dt)
                else:
                    errors[op] += 1
        finally:
            await c.close()

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
    ev = lat.get("evaluate", [])
    return {"errors": sum(errors.values()), "eval_per_s": len(ev) / elapsed, "all_per_s": total / elapsed,
            "p50": pct(ev, 50), "p95": pct(ev, 95), "p99": pct(ev, 99)}


def cpu_ticks() -> tuple[int, int]:
    """(all, stolen) CPU ticks of this machine so far (Linux ``/proc/stat``; zeros elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields), fields[7] if len(fields) > 7 else 0


def measure(tmp: Path, args: argparse.Namespace, mix: dict[str, float], package: Path | None, label: str) -> dict[str, float]:
    admin = f"adm_{secrets.token_urlsafe(24)}"
    t0 = time.monotonic()
    server = start_server(tmp, args.workers, args.test_rows, admin, package)
    print(f"[{label}] server with {args.workers} worker(s), {args.test_rows} test rows, up in {time.monotonic() - t0:.1f} s")
    before = cpu_ticks()
    try:
        return asyncio.run(run(server.url, admin, args.clients, args.duration, mix, args.client))
    finally:
        after = cpu_ticks()
        if after[0] > before[0]:  # a virtual machine's host taking CPU time away shows up here
            print(f"CPU time stolen by the host during the run: {100 * (after[1] - before[1]) / (after[0] - before[0]):.1f}%")
        server.stop(30)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server started here")
    ap.add_argument("--test-rows", type=int, default=500, help="test rows of the generated testbed")
    ap.add_argument("--mix", default="evaluate=0.8,post=0.1,search=0.1", help="operation weights")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw",
                    help="raw: HTTP/1.1 on asyncio streams (light on the shared CPU); httpx: httpx's async client")
    ap.add_argument("--url", help="a running grader instead of starting one")
    ap.add_argument("--admin-token", default=os.environ.get("W2SLAB_ADMIN_TOKEN"))
    ap.add_argument("--package", type=Path, help="serve the w2slab package in this folder instead of this checkout's")
    ap.add_argument("--compare", metavar="REF", help="also measure git revision REF (e.g. HEAD), side by side")
    ap.add_argument("--rounds", type=int, default=1, help="with --compare: alternate old/new this many times")
    args = ap.parse_args()
    mix = {k: float(v) for k, v in (p.split("=") for p in args.mix.split(","))}
    if args.url:
        if not args.admin_token:
            sys.exit("--url needs --admin-token (or W2SLAB_ADMIN_TOKEN)")
        sys.exit(1 if asyncio.run(run(args.url, args.admin_token, args.clients, args.duration, mix, args.client))["errors"] else 0)
    with tempfile.TemporaryDirectory(prefix="grader-load-") as tmp:
        if not args.compare:
            result = measure(Path(tmp), args, mix, args.package, str(args.package or "this checkout"))
            sys.exit(1 if result["errors"] else 0)
        old = extract(args.compare, Path(tmp) / "old")
        variants = {args.compare: old, "working tree": None}
        results: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
        for i in range(args.rounds):
            for label, package in variants.items():
                print(f"\n=== round {i + 1}/{args.rounds}: {label} (load average {load_average()})")
                results[label].append(measure(Path(tmp), args, mix, package, label))
    print(f"\n{args.clients} clients, {args.workers} worker(s), {args.duration:.0f} s per run, mix {args.mix}, "
          f"{args.rounds} round(s); load average now {load_average()}")
    print(f"{'code':<14} {'evaluations/s median (range)':>30} {'p99 ms median (range)':>26} {'p50 ms':>8} {'errors':>7}")
    for label, rs in results.items():
        ev, p99 = [r["eval_per_s"] for r in rs], [r["p99"] for r in rs]
        print(f"{label:<14} {statistics.median(ev):>12.0f} ({min(ev):.0f}-{max(ev):.0f}){'':>6} "
              f"{statistics.median(p99):>10.0f} ({min(p99):.0f}-{max(p99):.0f}){'':>4} "
              f"{statistics.median(r['p50'] for r in rs):>8.1f} {sum(r['errors'] for r in rs):>7.0f}")
    sys.exit(1 if any(r["errors"] for rs in results.values() for r in rs) else 0)


if __name__ == "__main__":
    main()
