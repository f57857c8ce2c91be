"""Researchers on a Ray cluster: a real two-node Ray cluster on this machine (``ray start --head``
plus ``ray start --address``; node B advertises a GPU), a real ``w2slab research --ray`` launcher
that starts a real grader, offline researchers placed as actors with bubblewrap sandboxes on their
nodes. Each node has its own folder for shipped kits and researchers (``W2SLAB_RAY_DIR``), so
nothing reaches a node through the run's workdir: it travels through Ray's object store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import make_toy_testbed
from research_support import alive, launched, read_json
from test_grader_support import STRONG, WEAK

from w2slab.grader.db import make_engine
from w2slab.grader.queries import submissions
from w2slab.researchers.offline import FINALISTS
from w2slab.researchers.sandbox import find_bwrap

pytest.importorskip("ray")

sandboxed = find_bwrap() is not None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_start(args: list[str], env: dict[str, str], log: Path, groups: list[int]) -> None:
    """``ray start ...`` in a new session, whose id (= its process group: the node's daemons stay
    in it) goes into ``groups`` at once, so the finaliser stops exactly this cluster."""
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else shutil.which("ray") or "ray", "start", *args]
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        groups.append(proc.pid)
        code = proc.wait(240)
    if code != 0:
        raise RuntimeError(f"ray start failed ({code}):\n{log.read_text()[-3000:]}")


def _stop_cluster(groups: list[int], marker: str | None = None) -> None:
    """TERM then KILL the cluster's process groups, and any process still naming its temp dir."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for g in groups:
            try:
                os.killpg(g, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if sig == signal.SIGTERM:
            time.sleep(3)
    for pid in os.listdir("/proc") if marker else []:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine, one CPU each: A (resource ``node_a``) and B (``node_b``
    and one GPU, advertised only: Ray places by it, no device is needed)."""
    import ray

    base = Path(tempfile.mkdtemp(prefix="w2sray", dir="/tmp"))  # short: Ray's socket paths must fit
    # A plain ``ray.init()`` (tests/test_executors.py) turns on token auth for its own cluster and
    # leaves ~/.ray/auth_token behind; with that file present a node of this token-less cluster
    # cannot join its head. Point this cluster, its driver and the launcher at no token file.
    saved_env = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN_PATH=str(base / "no-auth-token"))
    log = base / "ray-start.log"
    groups: list[int] = []
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", "100000000",
              "--disable-usage-stats", "--include-log-monitor=false", "--min-worker-port", "0", "--max-worker-port", "0"]

    def ports(q: list[int]) -> list[str]:  # every port of a node its own: other Ray clusters may run here
        return ["--node-manager-port", str(q[0]), "--object-manager-port", str(q[1]), "--dashboard-agent-listen-port", str(q[2]),
                "--dashboard-agent-grpc-port", str(q[3]), "--metrics-export-port", str(q[4]), "--runtime-env-agent-port", str(q[5])]

    disks = {"node_a": base / "disk_a", "node_b": base / "disk_b"}

    def start_node(args: Callable[[int], list[str]], disk: Path) -> None:
        """A raylet waits a fixed 15 s for its dashboard agent's port file; on a heavily loaded
        machine the agent can miss that and the node fails to start: start that node afresh."""
        for attempt in range(4):
            mine: list[int] = []
            try:
                _ray_start(args(attempt), dict(os.environ, W2SLAB_RAY_DIR=str(disk)), log, mine)
                groups.extend(mine)
                return
            except RuntimeError:
                _stop_cluster(mine)
                if attempt == 3:
                    raise

    head: dict[str, int] = {}

    def head_args(attempt: int) -> list[str]:
        head["port"] = _free_ports(1)[0]
        return ["--head", "--port", str(head["port"]), "--temp-dir", str(base / f"ray{attempt}"), "--include-dashboard=false",
                "--num-gpus", "0", "--resources", json.dumps({"node_a": 1}), *common, *ports(_free_ports(6))]

    def worker_args(attempt: int) -> list[str]:
        return ["--address", f"127.0.0.1:{head['port']}", "--num-gpus", "1", "--resources", json.dumps({"node_b": 1}),
                *common, *ports(_free_ports(6))]

    try:
        start_node(head_args, disks["node_a"])
        start_node(worker_args, disks["node_b"])
        address = f"127.0.0.1:{head['port']}"
        ray.init(address=address, log_to_driver=False)
        try:
            deadline = time.monotonic() + 60
            while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            nodes = {k: n["NodeID"] for n in ray.nodes() if n["Alive"] for k in ("node_a", "node_b") if k in n["Resources"]}
        finally:
            ray.shutdown()
        assert set(nodes) == {"node_a", "node_b"}, nodes
        yield {"address": address, "nodes": nodes, "disks": disks, "base": base}
    finally:
        _stop_cluster(groups, str(base))
        shutil.rmtree(base, ignore_errors=True)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def research_cmd(toy: Path, workdir: Path, address: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "w2slab.researchers.cli", "research", "--testbed", str(toy), "--weak", WEAK,
           "--strong", STRONG, "--workdir", str(workdir), "--grace", "300", "--ray", address, *extra]
    return cmd + ([] if sandboxed else ["--unsafe-no-sandbox"])


def research(toy: Path, workdir: Path, address: str, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(research_cmd(toy, workdir, address, *extra), capture_output=True, text=True, timeout=timeout)
    (workdir.parent / f"{workdir.name}.log").write_text(done.stdout + done.stderr)
    return done


def events(transcript: Path, name: str) -> list[dict]:
    lines = [json.loads(x) for x in transcript.read_text().splitlines()]
    return [x for x in lines if x["type"] == "event" and x.get("event") == name]


@pytest.mark.slow
def test_two_researchers_land_on_two_nodes_stop_and_submit(cluster, tmp_path: Path) -> None:
    """Two researchers, one per node; their transcripts and accounting reach the local folder
    while they run; `research stop` reaches them on their nodes; they submit; status.json says
    where each ran."""
    from w2slab.researchers.ray_workers import run_key  # Ray is imported only where it is installed

    toy = make_toy_testbed(tmp_path / "toy-pairs", "pairwise")
    workdir = tmp_path / "work"
    names = ["offline-1", "offline-2"]
    with launched(research_cmd(toy, workdir, cluster["address"], "--researchers", "2", "--hours", "0.2",
                               "--max-experiments", "40"), tmp_path / "launcher.log", workdir) as proc:
        deadline = time.monotonic() + 600
        while not all(read_json(workdir / n / "usage.json").get("experiments", 0) >= 1 for n in names):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "launcher.log").read_text()[-3000:]
            time.sleep(1)
        running = read_json(workdir / "status.json")
        assert running["state"] == "running" and all(r["node"] for r in running["researchers"])
        stop = subprocess.run([sys.executable, "-m", "w2slab.researchers.cli", "research", "stop", "--workdir", str(workdir)],
                              capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert proc.wait(600) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    status = json.loads((workdir / "status.json").read_text())
    assert status["state"] == "finished"
    rows = status["researchers"]
    assert [r["name"] for r in rows] == names
    by_id = {v: k for k, v in cluster["nodes"].items()}
    placed_on = {}
    for r in rows:
        folder = workdir / r["name"]
        # where it ran: status.json and the transcript's `placed` event agree, on that node's own disk
        node = r["node"]
        assert node and node["node_id"] in by_id
        placed = events(folder / "transcript.jsonl", "placed")
        assert placed and placed[-1]["node_id"] == node["node_id"]
        disk = cluster["disks"][by_id[node["node_id"]]]
        assert Path(placed[-1]["config"]["workspace"]).is_relative_to(disk)
        assert Path(placed[-1]["config"]["kit_dir"]).is_relative_to(disk)
        placed_on[r["name"]] = by_id[node["node_id"]]
        # the worker's transcript, usage and notebook came back to the local folder
        assert events(folder / "transcript.jsonl", "process_start") and events(folder / "transcript.jsonl", "process_exit")
        lines = [json.loads(x) for x in (folder / "transcript.jsonl").read_text().splitlines()]
        assert any(x["type"] == "tool_call" and x["tool"] == "grader.evaluate" for x in lines)
        usage = json.loads((folder / "usage.json").read_text())
        assert usage["stop_reason"] == "stop requested"  # the local STOP file reached the node
        assert usage["experiments"] >= 1 and 1 <= usage["submissions"] == len(usage["final"]["candidates"]) <= FINALISTS
        assert r["experiments"] == usage["experiments"] and r["grader_queries"] >= 1 and r["outcome"] == "done"
        notebook = json.loads((folder / "workspace" / "notebook.json").read_text())
        assert len(notebook["experiments"]) == usage["experiments"]
        assert (folder / "process.log").is_file()
    assert sorted(placed_on.values()) == ["node_a", "node_b"], placed_on
    # the submissions are on the grader (each researcher's finalists)
    board = submissions(make_engine(f"sqlite:///{workdir / 'grader' / 'grader.db'}"), "toy-pairs")
    for r in rows:
        mine = sorted(b["id"] for b in board if b["researcher"] == r["name"])
        assert mine == sorted(c["submission_id"] for c in r["final"]["candidates"]) and r["final"]["submission_id"] in mine
    # the nodes' researcher folders were removed once synced back; the kit was shipped once per node
    for disk in cluster["disks"].values():
        assert [p.name for p in (disk / run_key(workdir)).iterdir()] == ["shared"]


def test_gpu_request_is_placed_on_the_gpu_node(cluster, tmp_path: Path) -> None:
    """Ray decides the node: a one-GPU researcher lands on B, its config's GPUs are the ones Ray
    assigned there, its folder and kit were shipped to B; a worker that crashes reports its exit
    code and its transcript comes back. More GPU researchers than the cluster has GPUs: one line."""
    import ray

    from w2slab.researchers.contract import ResearcherConfig
    from w2slab.researchers.ray_workers import RayWorker, run_key, shutdown

    toy = make_toy_testbed(tmp_path / "toy-pairs", "pairwise")
    refused = research(toy, tmp_path / "refused", cluster["address"], "--researchers", "2", "--gpus-per-researcher", "1",
                       timeout=180)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "cannot fit 2 researcher(s)" in refused.stderr, refused.stderr

    kit, folder = tmp_path / "kit", tmp_path / "work" / "gpu-1"
    kit.mkdir()
    (kit / "kit.json").write_text('{"seeds": [1]}')
    (folder / "workspace").mkdir(parents=True)
    (folder / "workspace" / "notes.md").write_text("from an earlier session\n")
    dead = f"http://127.0.0.1:{_free_ports(1)[0]}"  # no grader: the researcher crashes on its first call
    cfg = ResearcherConfig(name="gpu-1", token="t", grader_url=dead, testbed="toy-pairs", kit_dir=kit,
                           workspace=folder / "workspace", transcript=folder / "transcript.jsonl",
                           usage_path=folder / "usage.json", stop_file=tmp_path / "work" / "STOP", sandbox=sandboxed)
    cfg.save(folder / "config.json")
    try:
        worker = RayWorker(cfg, folder, num_cpus=1, num_gpus=1, address=cluster["address"])
        deadline = time.monotonic() + 300
        while (code := worker.poll()) is None:
            worker.sync()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert ray.cluster_resources().get("GPU") == 1
    finally:
        shutdown()
    assert code != 0
    assert worker.node["node_id"] == cluster["nodes"]["node_b"] and worker.node["gpus"] == [0]
    placed = events(folder / "transcript.jsonl", "placed")[-1]
    assert placed["config"]["gpus"] == [0] and placed["num_gpus"] == 1
    assert Path(placed["config"]["workspace"]).is_relative_to(cluster["disks"]["node_b"])
    assert events(folder / "transcript.jsonl", "process_start") and events(folder / "transcript.jsonl", "crash")
    shipped = list((cluster["disks"]["node_b"] / run_key(folder.parent)).glob("shared/*/kit/kit.json"))
    assert [p.read_text() for p in shipped] == ['{"seeds": [1]}']
    assert (folder / "workspace" / "notes.md").read_text() == "from an earlier session\n"


def test_terminate_and_a_lost_actor_leave_no_worker(cluster, tmp_path: Path) -> None:
    """terminate() stops the worker on its node (TERM to its group) and brings its folder back;
    an actor that dies (node lost, killed) takes its worker with it and reads as a crash."""
    import ray

    from w2slab.researchers.contract import ResearcherConfig
    from w2slab.researchers.ray_workers import RayWorker, shutdown

    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "kit.json").write_text("{}")
    silent = socket.socket()  # a "grader" that accepts connections and never answers: the researchers wait on it
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    workers = []
    try:
        for name in ("t-1", "t-2"):
            folder = tmp_path / "work" / name
            (folder / "workspace").mkdir(parents=True)
            cfg = ResearcherConfig(name=name, token="t", grader_url=f"http://127.0.0.1:{silent.getsockname()[1]}", testbed="toy-pairs", kit_dir=kit,
                                   workspace=folder / "workspace", transcript=folder / "transcript.jsonl",
                                   usage_path=folder / "usage.json", stop_file=tmp_path / "work" / "STOP")
            cfg.save(folder / "config.json")
            workers.append(RayWorker(cfg, folder, num_cpus=1, address=cluster["address"]))
        deadline = time.monotonic() + 300
        while not all(w.node for w in workers) or not all(events(w.cfg.transcript, "process_start") for w in workers):
            for w in workers:
                assert w.poll() is None
                w.sync()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        first, second = workers
        assert {first.node["node_id"], second.node["node_id"]} == set(cluster["nodes"].values())
        first.terminate(wait=5)
        assert first.poll() == -signal.SIGTERM and not alive(first.node["pid"])
        assert not Path(first.node["folder"]).exists()  # synced back, then removed from the node
        ray.kill(second.actor)
        end = time.monotonic() + 60
        while alive(second.node["pid"]):
            assert time.monotonic() < end, "the worker outlived its actor"
            time.sleep(0.5)
        assert second.poll() == 1
        assert "lost its Ray actor" in (tmp_path / "work" / "t-2" / "process.log").read_text()
    finally:
        for w in workers:
            w.terminate(wait=1)
        shutdown()
        silent.close()


def test_no_cluster_is_one_line(tmp_path: Path) -> None:
    toy = make_toy_testbed(tmp_path / "toy-pairs", "pairwise")
    port = _free_ports(1)[0]
    done = research(toy, tmp_path / "work", f"127.0.0.1:{port}", "--researchers", "1", timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"no Ray cluster reachable at 127.0.0.1:{port}" in done.stderr
