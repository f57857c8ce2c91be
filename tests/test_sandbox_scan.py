"""What a sandbox can read: a scanner runs inside the real audit sandbox and the real researcher
sandbox and reads every readable file it may hold a secret in (git objects and packs inflated,
zip/npz members opened), looking for the served testbed's test and train labels (rows, label
sequences in several encodings, the label files' sha256) and the tokens (admin token, researcher
token, server secret). The world is laid out as the demo's was: work folder, grader home and
tokens under the repository's ``runs/``, the labels also committed to a git repository there.

The needles are drawn fresh per test, so no file older than the test can hold them: the scanner
lists every file but reads those changed since the test began (``st_ctime``, which no program can
set back) and everything under any ``.git``. With the pre-hardening view (repository root bound,
no automatic masks) the same scan finds the planted labels, in the pack too: the test can fail."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from w2slab.integrity.audit import AuditSettings, audit_sandbox_spec
from w2slab.integrity.redteam import STRONG, WEAK, make_testbed
from w2slab.researchers.contract import ResearcherConfig
from w2slab.researchers.prepare import sandbox_masks
from w2slab.researchers.sandbox import PACKAGE_DIR, SandboxSpec, find_bwrap, run_in_sandbox
from w2slab.testbeds.format import read_jsonl

pytestmark = pytest.mark.skipif(find_bwrap() is None, reason="no working bubblewrap here")

REPO = PACKAGE_DIR.parent

SCANNER = r'''
import json, os, sys, zipfile, zlib, io

needles = {k: bytes.fromhex(v) for k, v in json.loads(sys.stdin.read()).items()}
t0 = float(sys.argv[1])
SKIP = ("/proc", "/sys", "/dev")
stats = {"files": 0, "read": 0, "bytes": 0, "git_dirs": [], "fifos": 0}
hits = []


def inflate_pack(data):
    if data[:4] != b"PACK":
        return
    n, pos = int.from_bytes(data[8:12], "big"), 12
    for _ in range(n):
        c = data[pos]; typ = (c >> 4) & 7; pos += 1
        while c & 0x80:
            c = data[pos]; pos += 1
        if typ == 6:
            c = data[pos]; pos += 1
            while c & 0x80:
                c = data[pos]; pos += 1
        elif typ == 7:
            pos += 20
        d = zlib.decompressobj()
        out = d.decompress(data[pos:])
        pos = len(data) - len(d.unused_data)
        yield out


def blobs(path, data):
    yield data
    if "/.git/" in path:
        if path.endswith(".pack"):
            yield from inflate_pack(data)
        else:
            try:
                yield zlib.decompress(data)
            except zlib.error:
                pass
    if data[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for name in z.namelist():
                    yield z.read(name)
        except Exception:
            pass


for root, dirs, names in os.walk("/"):
    if root.startswith(SKIP):
        dirs[:] = []
        continue
    if ".git" in dirs:
        stats["git_dirs"].append(os.path.join(root, ".git"))
    for name in names:
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not (st.st_mode & 0o170000 == 0o100000):
            stats["fifos"] += (st.st_mode & 0o170000 == 0o010000)
            continue
        stats["files"] += 1
        if st.st_ctime < t0 and "/.git/" not in path:
            continue
        try:
            with open(path, "rb") as f:
                data = f.read(256 << 20)
        except OSError:
            continue
        stats["read"] += 1
        stats["bytes"] += len(data)
        for blob in blobs(path, data):
            for key, needle in needles.items():
                if needle in blob:
                    hits.append([path, key])
print(json.dumps({"stats": stats, "hits": hits}))
'''


def label_bits(path: Path) -> list[int]:
    return [1 if v in ("B", True, 1) else 0 for v in read_jsonl(path).labels]


def needles(toy: Path, tokens: dict[str, str]) -> dict[str, bytes]:
    """Every form in which the labels or tokens could be stored."""
    out: dict[str, bytes] = {}
    for split in ("test", "train_label"):
        path = toy / f"{split}.jsonl"
        data = path.read_bytes()
        out[f"{split}: sha256 hex"] = hashlib.sha256(data).hexdigest().encode()
        out[f"{split}: sha256 raw"] = hashlib.sha256(data).digest()
        for i, line in enumerate(data.splitlines()):
            out[f"{split}: row {i}"] = line
        bits = label_bits(path)[:48]
        out[f"{split}: 0/1 string"] = "".join(map(str, bits)).encode()
        out[f"{split}: A/B string"] = "".join("AB"[b] for b in bits).encode()
        out[f"{split}: json list"] = json.dumps(bits).encode()
        out[f"{split}: json bools"] = json.dumps([bool(b) for b in bits]).encode()
        for dtype in ("uint8", "int64", "float32", "float64"):
            out[f"{split}: {dtype} array"] = np.asarray(bits, dtype=dtype).tobytes()
    for name, token in tokens.items():
        out[f"token: {name}"] = token.encode()
    return out


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """The demo's layout, inside the repository (``runs/`` is git-ignored); removed afterwards."""
    t0 = time.time() - 1
    runs_existed = (REPO / "runs").exists()
    base = REPO / "runs" / f".scan-{secrets.token_hex(6)}"
    home = base / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("W2SLAB_HOME", str(home))
    try:
        toy = make_testbed(base / "data" / "toy", "pairwise", (40, 120, 160), secrets.randbelow(2**31))
        tokens = {"admin": "adm_" + secrets.token_urlsafe(24), "researcher": "w2s_" + secrets.token_urlsafe(32),
                  "server secret": "sec_" + secrets.token_hex(32)}
        (home / "grader").mkdir(parents=True)
        (home / "grader" / "admin_token").write_text(tokens["admin"] + "\n")
        (home / "grader" / "server_secret").write_text(tokens["server secret"] + "\n")
        (base / "alice").mkdir()
        (base / "alice" / "config.json").write_text(json.dumps({"name": "alice", "token": tokens["researcher"]}))
        (base / "grader").mkdir()
        (base / "grader" / "admin_token").write_text(tokens["admin"] + "\n")  # the launcher's own grader folder
        (home / "cache").mkdir()
        np.savez_compressed(home / "cache" / "labels.npz", y=np.asarray(label_bits(toy / "test.jsonl"), dtype="int64"))
        repo = base / "labels-repo"  # labels committed and packed, like the built-in testbeds in .git
        shutil.copytree(toy, repo)
        git("init", "-q", cwd=repo)
        git("add", ".", cwd=repo)
        git("commit", "-qm", "data", cwd=repo)
        git("gc", "-q", cwd=repo)
        for p in repo.glob("*.jsonl"):
            p.unlink()
        from w2slab.engine.kit import export_kit
        from w2slab.engine.pipeline import Experiment

        kit = base / "kit"
        export_kit(Experiment.create(str(toy), WEAK, STRONG), [1, 2], kit)
        audit_kits = home / "integrity" / "kits"
        shutil.copytree(kit, audit_kits / "toy-0123" / "a1b2c3d4e5f6")
        yield SimpleNamespace(base=base, home=home, toy=toy, tokens=tokens, kit=kit, audit_kits=audit_kits, t0=t0,
                              needles=needles(toy, tokens))
    finally:
        mp.undo()
        shutil.rmtree(base, ignore_errors=True)
        if not runs_existed:
            with contextlib.suppress(OSError):
                (REPO / "runs").rmdir()  # only if empty


def scan(spec: SandboxSpec, w: SimpleNamespace) -> dict:
    needles = json.dumps({k: v.hex() for k, v in w.needles.items()})
    r = run_in_sandbox(spec, [sys.executable, "-c", SCANNER, str(w.t0)], stdin=needles)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def audit_spec(w: SimpleNamespace, ws: Path, settings: AuditSettings | None = None) -> SandboxSpec:
    scorer = SimpleNamespace(name="toy", experiment=SimpleNamespace(testbed=str(w.toy)))
    (ws / "code").mkdir(parents=True, exist_ok=True)
    (ws / "code" / "method.py").write_text("# the researcher's code\n")
    return audit_sandbox_spec(ws, w.audit_kits, None, [scorer], settings or AuditSettings())


def researcher_spec(w: SimpleNamespace) -> SandboxSpec:
    cfg = ResearcherConfig(name="alice", token=w.tokens["researcher"], grader_url="http://127.0.0.1:1", testbed="toy",
                           kit_dir=w.kit, workspace=w.base / "alice" / "workspace", direction="", masked=sandbox_masks(w.toy))
    cfg.workspace.mkdir(parents=True, exist_ok=True)
    return cfg.sandbox_spec(wall_seconds=300)


def test_audit_sandbox_holds_no_label_and_no_token(world: SimpleNamespace) -> None:
    out = scan(audit_spec(world, world.home / "integrity" / "work" / "sub1-scan"), world)
    assert out["hits"] == [], out["hits"][:20]
    assert out["stats"]["git_dirs"] == []
    assert out["stats"]["read"] >= 4 and out["stats"]["files"] > 1000  # it read the kit; it saw the interpreter
    assert out["stats"]["fifos"] >= 2  # the decoy label files (never opened by the scan)


def test_researcher_sandbox_holds_no_label_and_no_token(world: SimpleNamespace) -> None:
    out = scan(researcher_spec(world), world)
    assert out["hits"] == [], out["hits"][:20]
    assert out["stats"]["git_dirs"] == []
    assert out["stats"]["read"] >= 4 and out["stats"]["files"] > 1000


def test_the_pre_hardening_view_leaks_and_the_scan_sees_it(world: SimpleNamespace) -> None:
    """Control: the old audit view (repository root bound, labels masked by a list) exposes the
    demo layout; the scan finds the labels in plain files and inside the git pack, and the tokens."""
    weak = AuditSettings(weak={"view", "evidence"})
    out = scan(audit_spec(world, world.home / "integrity" / "work" / "sub2-scan", weak), world)
    found = {key.split(":")[0] for _, key in out["hits"]}
    assert {"test", "token"} <= found, out["hits"][:20]
    assert any("/labels-repo/.git/objects/pack/" in path and key.startswith("test: row") for path, key in out["hits"])
    assert any(key == "token: admin" for _, key in out["hits"])
    assert str(REPO / ".git") in out["stats"]["git_dirs"]
