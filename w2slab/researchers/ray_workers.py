"""Researchers as Ray actors: ``w2slab research --ray ADDRESS`` (or ``auto``).

:class:`RayWorker` is the supervisor's handle (a :class:`~w2slab.researchers.contract.WorkerHandle`)
on one researcher placed on a Ray cluster. It creates an actor (:class:`ResearcherHost`) with the
researcher's CPU/GPU request and ``scheduling_strategy="SPREAD"``; the actor materialises the
researcher on its node and runs the same worker process as a local run
(``python -m w2slab.researchers.worker CONFIG``), so the bubblewrap sandbox runs on that node.

What travels through Ray's object store (nothing assumes a shared disk):

- the kit and the shared embeddings, as tar bytes put once per run (``ray.put``; every actor
  gets the same object reference and each node extracts them once, under
  ``$W2SLAB_RAY_DIR`` or ``<tmp>/w2slab-ray``, ``<run key>/shared/<digest>/``);
- the researcher's own folder (transcript, usage, notebook/workspace: a restart or
  ``--resume`` continues where it was), shipped when the worker starts;
- back, on :meth:`RayWorker.sync`: new transcript and process.log bytes (from an offset),
  usage.json when it changed, changed workspace files (throttled; all of it once the worker ends).

The config's paths are rewritten to the node-local folder; GPUs that Ray assigned
(``ray.get_gpu_ids()``) become the config's ``gpus``. The grader stays one service that the
researchers reach by its URL. The supervisor's stop file reaches the worker on the next sync.
Where each researcher runs is recorded in its transcript (event ``placed``: node id, hostname,
address, node folder, GPUs) and in :attr:`RayWorker.node`.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from w2slab.processes import stop_group
from w2slab.researchers.contract import ResearcherConfig, Transcript, atomic_write

ROOT_ENV = "W2SLAB_RAY_DIR"  # node-local folder for researchers and shipped kits (default <tmp>/w2slab-ray)
OWN_SKIP = {"config.json", "process.log"}  # not shipped with the researcher's folder
POLL_EVERY = 0.5  # seconds between asking the node whether the worker still runs
SYNC_EVERY = 1.0  # seconds between syncs of transcript, usage and log
WORKSPACE_EVERY = 5.0  # seconds between workspace syncs while the worker runs
BATCH_BYTES = 32 << 20  # at most this much per pull (the rest comes with the next one)
PLACE_TIMEOUT = 900.0  # a researcher not started on a node by then counts as crashed

# The worker runs under this watchdog (its process-group leader): SIGTERM is forwarded by the
# group signal itself; when the actor dies (killed, node or driver lost) the watchdog's parent
# changes and it takes the whole group down, so no researcher outlives its actor.
_WATCHDOG = """
import os, signal, subprocess, sys, time
parent = os.getppid()
signal.signal(signal.SIGTERM, lambda *a: None)
child = subprocess.Popen(sys.argv[1:])
while child.poll() is None:
    if os.getppid() != parent:
        os.killpg(0, signal.SIGTERM)
        time.sleep(5)
        os.killpg(0, signal.SIGKILL)
    time.sleep(0.5)
code = child.returncode
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


# ============================================================== connecting


def connect(address: str) -> dict[str, float]:
    """Join the Ray cluster at ``address`` (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``);
    returns its total resources. A cluster that cannot be reached is a one-line RuntimeError."""
    if not ray.is_initialized():
        host, sep, port = address.rpartition(":")
        if address != "auto" and "://" not in address and sep and port.isdigit():
            try:  # fail fast (ray.init would retry for a minute)
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
            except OSError as e:
                raise RuntimeError(f"no Ray cluster reachable at {address} ({e.strerror or e}); start one with "
                                   "`ray start --head` or pass its address to --ray") from None
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RuntimeError(f"no Ray cluster reachable at {address}: {first}") from None
    return dict(ray.cluster_resources())


def shutdown() -> None:
    """Leave the cluster (the kits put in the object store are released)."""
    _SHIPPED.clear()
    if ray.is_initialized():
        ray.shutdown()


def placeable(num_cpus: float, num_gpus: float, resources: dict[str, float] | None = None) -> int:
    """How many researchers with this request fit on the cluster's live nodes at once
    (each actor must fit on one node)."""
    want = {"CPU": num_cpus, "GPU": num_gpus, **(resources or {})}
    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources") or {}
        fits = [math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in want.items() if v > 0]
        total += min(fits) if fits else 1 << 20
    return total


def check_cluster(address: str, researchers: int, num_cpus: float, num_gpus: float,
                  resources: dict[str, float] | None = None) -> dict[str, Any]:
    """Connect, and refuse (one-line RuntimeError) a request the cluster cannot fit: ``researchers``
    actors of ``num_cpus`` CPUs, ``num_gpus`` GPUs and ``resources`` each. Returns
    ``{"nodes": N, "resources": {...}}``."""
    total = connect(address)
    fit = placeable(num_cpus, num_gpus, resources)
    if fit < researchers:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        have = "; ".join(f"{n.get('NodeManagerAddress')}: {_fmt_res(n.get('Resources') or {})}" for n in nodes)
        want = _fmt_res({"CPU": num_cpus, "GPU": num_gpus, **(resources or {})})
        raise RuntimeError(f"the Ray cluster at {address} cannot fit {researchers} researcher(s) of {want} each "
                           f"(it fits {fit}; its nodes: {have or 'none'})")
    return {"nodes": len([n for n in ray.nodes() if n.get("Alive")]), "resources": total}


def _fmt_res(res: dict[str, float]) -> str:
    keys = ["CPU", "GPU"] + sorted(k for k in res if k not in ("CPU", "GPU") and not k.startswith(("node:", "memory",
                                                                                                    "object_store")))
    return ", ".join(f"{res.get(k, 0):g} {k}" for k in keys if k in res and (res[k] or k in ("CPU", "GPU")))


# ============================================================== shipping folders


def tar_folder(folder: Path, skip: set[str] = frozenset()) -> bytes:
    """The folder's regular files and folders as uncompressed tar bytes (top-level names in
    ``skip`` left out; symbolic links never followed nor packed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            rel_root = Path(root).relative_to(folder)
            for d in dirs:
                p = Path(root) / d
                if not p.is_symlink() and not (rel_root == Path(".") and d in skip):
                    tar.add(p, arcname=str(rel_root / d), recursive=False)
            dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink() and not (rel_root == Path(".") and d in skip)]
            for f in sorted(files):
                p = Path(root) / f
                if (rel_root == Path(".") and f in skip) or p.is_symlink() or not p.is_file():
                    continue
                tar.add(p, arcname=str(rel_root / f), recursive=False)
    return buf.getvalue()


def untar(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")


_SHIPPED: dict[tuple[str, tuple], tuple[str, Any]] = {}  # (folder, listing) -> (digest, ObjectRef of its tar)


def _listing(folder: Path) -> tuple:
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return tuple(out)


def ship_shared(folder: Path) -> tuple[str, Any]:
    """(digest, object ref) of ``folder``'s tar bytes, put into the object store once per run and
    shared by every actor (a changed folder is put again)."""
    key = (str(folder), _listing(folder))
    if key not in _SHIPPED:
        data = tar_folder(folder)
        _SHIPPED[key] = (hashlib.sha256(data).hexdigest()[:16], ray.put(data))
    return _SHIPPED[key]


# ============================================================== the actor (on the node)


@ray.remote(max_restarts=0)
class ResearcherHost:
    """Runs one researcher on the node Ray placed it on."""

    def __init__(self, run_key: str, name: str) -> None:
        self.name = name
        self.root = Path(os.environ.get(ROOT_ENV) or Path(tempfile.gettempdir()) / "w2slab-ray") / run_key
        self.folder = self.root / name
        self.proc: subprocess.Popen | None = None
        self.sent: dict[str, tuple[int, int]] = {}  # workspace file -> (size, mtime_ns) the driver has
        self.cfg: dict[str, Any] = {}

    def _shared(self, digest: str, ref_box: list, name: str) -> Path:
        """The shipped folder ``name`` with this digest, extracted once per node (file lock)."""
        base = self.root / "shared" / digest
        dest = base / name
        base.mkdir(parents=True, exist_ok=True)
        with open(base / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not dest.is_dir():
                tmp = base / f".{name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                untar(ray.get(ref_box[0]), tmp)
                tmp.replace(dest)
        return dest

    def start(self, cfg: dict[str, Any], own: bytes, local_folder: str, shared: dict[str, tuple[str, list]],
              env: dict[str, str], threads: int, want_gpus: bool) -> dict[str, Any]:
        """Materialise the folder, rewrite the config's paths, start the worker; returns where."""
        shutil.rmtree(self.folder, ignore_errors=True)
        untar(own, self.folder)
        (self.folder / "workspace").mkdir(parents=True, exist_ok=True)
        cfg = dict(cfg)
        for key, (digest, box) in shared.items():
            cfg[key] = str(self._shared(digest, box, Path(cfg[key]).name))
        local = Path(local_folder)
        for key in ("workspace", "transcript", "usage_path"):
            rel = Path(cfg[key]).relative_to(local)  # the launcher keeps these in the researcher's folder
            cfg[key] = str(self.folder / rel)
        cfg["stop_file"] = str(self.folder / "STOP")
        from w2slab.researchers.sandbox import label_paths  # this node's copies of label data (masked too)

        cfg["masked"] = list(dict.fromkeys(list(cfg.get("masked") or []) + [str(p) for p in label_paths()]))
        gpus = [int(g) for g in ray.get_gpu_ids()] if want_gpus else []
        if want_gpus:
            cfg["gpus"] = gpus
        self.cfg = cfg
        path = self.folder / "config.json"
        atomic_write(path, json.dumps(cfg, indent=1) + "\n", mode=0o600)
        ws = Path(cfg["workspace"])
        self.sent = {str(p.relative_to(ws)): (st.st_size, st.st_mtime_ns)
                     for p, st in _files(ws)}
        transcript_bytes = _size(Path(cfg["transcript"]))
        full_env = dict(os.environ, **env, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        with open(self.folder / "process.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-S", "-c", _WATCHDOG, sys.executable, "-m",
                                          "w2slab.researchers.worker", str(path)],
                                         stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True,
                                         cwd=str(ws))
        ctx = ray.get_runtime_context()
        return {"transcript_bytes": transcript_bytes, "node_id": ctx.get_node_id(), "hostname": socket.gethostname(),
                "address": ray.util.get_node_ip_address(), "folder": str(self.folder), "pid": self.proc.pid,
                "gpus": gpus, "config": {k: cfg[k] for k in ("kit_dir", "workspace", "shared_embeddings", "gpus")
                                         if k in cfg}}

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def request_stop(self) -> None:
        (self.folder / "STOP").touch()

    def pull(self, t_off: int, l_off: int, usage_sig: tuple | None, workspace: bool) -> dict[str, Any]:
        """What changed since the driver's offsets: transcript lines (whole lines only), log bytes,
        usage.json (when its signature changed), workspace files. ``code`` is read first, so a
        pull that reports an exit holds everything the worker wrote."""
        out: dict[str, Any] = {"code": self.poll()}
        budget = BATCH_BYTES
        out["transcript"], out["t_off"] = _read_from(Path(self.cfg["transcript"]), t_off, budget, whole_lines=True)
        budget -= len(out["transcript"])
        out["log"], out["l_off"] = _read_from(self.folder / "process.log", l_off, max(budget, 1 << 16))
        usage = Path(self.cfg["usage_path"])
        out["usage"], out["usage_sig"] = None, usage_sig
        try:
            st = usage.stat()
            sig = (st.st_size, st.st_mtime_ns)
            if sig != (tuple(usage_sig) if usage_sig else None):
                out["usage"], out["usage_sig"] = usage.read_bytes(), sig
        except OSError:
            pass
        out["files"], out["deleted"], out["more"] = {}, [], False
        if workspace:
            out["files"], out["deleted"], out["more"] = self._workspace_changes(budget - len(out["log"]))
        return out

    def _workspace_changes(self, budget: int) -> tuple[dict[str, bytes], list[str], bool]:
        ws = Path(self.cfg["workspace"])
        now: dict[str, tuple[int, int]] = {}
        files: dict[str, bytes] = {}
        more = False
        for p, st in _files(ws):
            rel = str(p.relative_to(ws))
            sig = (st.st_size, st.st_mtime_ns)
            now[rel] = sig
            if self.sent.get(rel) == sig:
                continue
            if files and st.st_size > budget:
                more = True
                now[rel] = self.sent.get(rel, (-1, -1))  # next time
                continue
            try:
                files[rel] = p.read_bytes()
            except OSError:
                continue
            budget -= len(files[rel])
        deleted = [rel for rel in self.sent if rel not in now]
        self.sent = now
        return files, deleted, more

    def terminate(self, wait: float) -> int | None:
        if self.proc is None:
            return self.poll()
        return stop_group(self.proc, wait)

    def cleanup(self) -> None:
        """Remove this researcher's node folder (everything was synced back)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _files(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Regular files under ``root`` (symbolic links are neither followed nor sent)."""
    out = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(dirpath, d))]
        for n in names:
            p = Path(dirpath) / n
            try:
                st = p.lstat()
            except OSError:
                continue
            if not p.is_symlink() and p.is_file():
                out.append((p, st))
    return out


def _read_from(path: Path, offset: int, limit: int, whole_lines: bool = False) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except OSError:
        return b"", offset
    if whole_lines and len(data) < limit:  # a line longer than a whole batch goes as it is
        end = data.rfind(b"\n")
        data = data[: end + 1] if end >= 0 else b""
    return data, offset + len(data)


# ============================================================== the supervisor's handle


def run_key(workdir: Path) -> str:
    """Names this run on the nodes: the same workdir on the same driver host gets the same
    node folders (a restart or ``--resume`` lands in the same place on a node)."""
    return hashlib.sha256(f"{socket.gethostname()}:{Path(workdir).absolute()}".encode()).hexdigest()[:12]


class RayWorker:
    """A researcher running as a Ray actor on some node of the cluster (see the module docstring).

    ``folder`` is the researcher's local folder (it holds ``config.json`` written by the
    launcher); ``num_cpus``/``num_gpus``/``resources`` the actor's request; ``address`` the
    cluster (joined on first use). Construction ships the folder and starts the worker without
    waiting for the placement; :meth:`poll` reports a failed or timed-out placement as a crash."""

    def __init__(self, cfg: ResearcherConfig, folder: Path, num_cpus: float = 1, num_gpus: float = 0,
                 address: str = "auto", resources: dict[str, float] | None = None,
                 place_timeout: float = PLACE_TIMEOUT) -> None:
        connect(address)
        self.name = cfg.name
        self.cfg = cfg
        self.folder = Path(folder)
        self.pid: int | None = None  # the worker's pid is on another machine
        self.node: dict[str, Any] | None = None
        (self.folder / "process.log").touch()  # filled from the node's log by sync()
        self.request = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": dict(resources or {})}
        self.actor: Any = None
        self._started_at = time.monotonic()
        self._place_timeout = place_timeout
        self._code: int | None = None
        self._done = False  # exit seen, final sync done, actor released
        self._stop_sent = False
        self._t_off = self._l_off = 0
        self._usage_sig: tuple | None = None
        self._last_sync = self._last_ws = self._last_poll = 0.0
        if placeable(num_cpus, num_gpus, resources) < 1:  # e.g. a restart after the only fitting node was lost
            self._fail(f"no live node of the Ray cluster has {_fmt_res({'CPU': num_cpus, 'GPU': num_gpus, **(resources or {})})}")
            return
        shared = {}
        for key in ("kit_dir", "shared_embeddings"):
            p = getattr(cfg, key)
            if p is not None:
                digest, ref = ship_shared(Path(p))
                shared[key] = (digest, [ref])  # boxed: the actor fetches it only when its node lacks it
        env = {}
        if cfg.api_key_env and os.environ.get(cfg.api_key_env):
            env[cfg.api_key_env] = os.environ[cfg.api_key_env]  # the LLM backends' key, for this worker only
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "scheduling_strategy": "SPREAD"}
        if resources:
            options["resources"] = dict(resources)
        self.actor = ResearcherHost.options(**options).remote(run_key(self.folder.parent), cfg.name)
        cfg_dict = json.loads((self.folder / "config.json").read_text()) if (self.folder / "config.json").is_file() \
            else cfg.to_dict()
        own = tar_folder(self.folder, skip=OWN_SKIP)
        self._start_ref = self.actor.start.remote(cfg_dict, own, str(self.folder), shared, env, int(cfg.threads or 1),
                                                  num_gpus > 0)

    # ---- placement
    def _placed(self) -> bool:
        """True once the worker runs on its node; records where (``node``, transcript ``placed``)."""
        if self.node is not None:
            return True
        ready, _ = ray.wait([self._start_ref], timeout=0)
        if not ready:
            if time.monotonic() - self._started_at > self._place_timeout:
                self._fail(f"not placed on the Ray cluster within {self._place_timeout:.0f} s (request: {self.request})")
            return False
        try:
            info = ray.get(self._start_ref)
        except RayError as e:
            self._fail(f"could not start on its Ray node: {_first_line(e)}")
            return False
        self.node = {k: info[k] for k in ("node_id", "hostname", "address", "folder", "pid", "gpus")}
        self._t_off = info["transcript_bytes"]  # the node's copy began as ours: only what follows is new
        Transcript(self.cfg.transcript, self.name).event("placed", **self.node, config=info["config"], **self.request)
        return True

    def _fail(self, why: str) -> None:
        self._note(why)
        Transcript(self.cfg.transcript, self.name).event("placement_failed", reason=why)
        self._code = 1
        self._release()

    # ---- the WorkerHandle protocol
    def poll(self) -> int | None:
        if self._done:
            return self._code
        if not self._placed():
            return self._code if self._done else None
        if time.monotonic() - self._last_poll < POLL_EVERY:
            return None
        self._last_poll = time.monotonic()
        try:
            code = ray.get(self.actor.poll.remote(), timeout=60)
        except GetTimeoutError:
            return None
        except RayActorError as e:  # the node or the actor died: a crash (the supervisor may restart it)
            self._lost(e)
            return self._code
        if code is not None:
            self._code = code
            self._finish()
        return self._code if self._done else None

    def sync(self) -> None:
        if self._done or not self._placed():
            return
        if not self._stop_sent and Path(self.cfg.stop_file).exists():
            self._stop_sent = True
            self.actor.request_stop.remote()
        now = time.monotonic()
        if now - self._last_sync < SYNC_EVERY:
            return
        self._last_sync = now
        try:
            self._pull(workspace=now - self._last_ws >= WORKSPACE_EVERY)
        except RayActorError as e:
            self._lost(e)
        except GetTimeoutError:
            pass

    def terminate(self, wait: float = 10.0) -> None:
        if self._done:
            return
        if not self._placed():
            if not self._done:
                self._code = -signal.SIGTERM
                self._release()
            return
        try:
            code = ray.get(self.actor.terminate.remote(wait), timeout=wait + 30)
            self._code = -signal.SIGTERM if code is None else code
        except (RayActorError, GetTimeoutError) as e:
            self._code = -signal.SIGKILL
            self._note(f"terminate: {_first_line(e)}")
        self._finish()

    # ---- internals
    def _pull(self, workspace: bool, timeout: float = 120.0) -> dict[str, Any]:
        got = ray.get(self.actor.pull.remote(self._t_off, self._l_off, self._usage_sig, workspace), timeout=timeout)
        if got["transcript"]:
            with open(self.cfg.transcript, "ab") as f:
                f.write(got["transcript"])
        if got["log"]:
            with open(self.folder / "process.log", "ab") as f:
                f.write(got["log"])
        self._t_off, self._l_off = got["t_off"], got["l_off"]
        if got["usage"] is not None:
            atomic_write(Path(self.cfg.usage_path), got["usage"].decode("utf-8", "replace"))
            self._usage_sig = got["usage_sig"]
        if workspace:
            self._last_ws = time.monotonic()
            self._apply_workspace(got["files"], got["deleted"])
        return got

    def _apply_workspace(self, files: dict[str, bytes], deleted: list[str]) -> None:
        ws = Path(self.cfg.workspace).absolute()
        for rel, data in files.items():
            dest = _inside(ws, rel)
            if dest is None:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.ray.tmp")
            tmp.write_bytes(data)
            tmp.replace(dest)
        for rel in deleted:
            dest = _inside(ws, rel)
            if dest is not None and dest.is_file() and not dest.is_symlink():
                dest.unlink()

    def _finish(self) -> None:
        """The worker ended: bring everything back, then release the node's CPUs/GPUs."""
        try:
            for _ in range(1000):
                got = self._pull(workspace=True)
                if not (got["transcript"] or got["log"] or got["files"] or got["more"]):
                    break
            ray.get(self.actor.cleanup.remote(), timeout=60)
        except (RayActorError, GetTimeoutError) as e:
            self._note(f"final sync: {_first_line(e)}")
        self._release()

    def _lost(self, e: BaseException) -> None:
        self._note(f"lost its Ray actor ({_first_line(e)}): counted as a crash")
        self._code = 1 if self._code is None else self._code
        self._release()

    def _note(self, why: str) -> None:
        with open(self.folder / "process.log", "a") as log:
            log.write(f"ray: {self.name}: {why}\n")

    def _release(self) -> None:
        self._done = True
        if self.actor is None:
            return
        try:
            ray.kill(self.actor, no_restart=True)
        except (RayError, ValueError):
            pass


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` when it stays inside ``root`` (no ``..``, no absolute names)."""
    dest = Path(os.path.normpath(root / rel))
    return dest if root in dest.parents else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"
