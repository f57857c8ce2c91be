"""The red-team suite: scripted adversarial researchers against a real grader.

:class:`RedTeam` generates two small secret toy testbeds (a pairwise one and a correctness one,
drawn from a random seed so their labels cannot be regenerated from public code), starts a real
``w2slab serve`` subprocess on loopback with its own ``W2SLAB_HOME``, and runs one researcher per
attack, each with an ordinary researcher token and budget:

===================  ==========================================================================
single-flip probe    sit at a rounding boundary, then flip one row at a time (whole budget)
coordinated probe    three accounts share a base vector, split and overlap the rows, average
regression probe     Blum & Hardt's boosting attack: fresh random vectors, labels from correlations
majority answer      submit "A" for every row (the most common answer): teacher-free
lexicon, no teacher  a hand-written sentiment lexicon, never reads the weak labels: teacher-free
fake predictions     upload a naive method, submit better predictions it did not produce
label files          the submitted code looks for label files, caches and the grader's database
                     at their real paths, lists folders and calls the grader over the network
path traversal       snapshots with ``..``, absolute paths, symlinks and hard links
seed cherry-picking  run many seeds, keep the best on dev, submit it for every required seed
final-set probe      resubmit the same predictions with one row flipped, read the board score
submission regression  reproducible edits of one submission (one row flipped in every seed, score-
                     neutral swaps as padding) read board labels off exact scores
refusal oracle       single-row edits of one submission: is the refusal (409 vs 201) telling
                     which rows the board scores?
warm sandbox tamper  an experiment in an offline researcher's warm sandbox opens the warm
                     process's memory for writing (it could then change every later run)
honest control       the naive method, submitted properly: must NOT be flagged
===================  ==========================================================================

For each: labels recovered beyond chance (the attacker's guesses for the rows it probed against
the truth; a one-sided binomial test against 0.5) and whether a refusal or a flag caught it.
``unhardened=True`` runs the same attacks with the dev noise, the answer reuse, the submission
near-duplicate refusal and the audits switched off (and the warm sandbox's process dumpable), to
show what they stop.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from w2slab.grader.process import GraderProcess
from w2slab.integrity import redteam_audit
from w2slab.integrity.attacks import HONEST, AttackResult, binom_p
from w2slab.researchers.sandbox import SandboxSpec, WarmSandbox, find_bwrap, python_binds

WEAK = "model=glove-50,head=linear,n_train=30,epochs=30,lr=0.01"
STRONG = "model=glove-50,head=mlp,epochs=10"
POSITIVE = ["good", "great", "excellent", "happy", "love", "wonderful", "nice", "fun", "superb", "delightful"]
NEGATIVE = ["bad", "awful", "terrible", "sad", "hate", "boring", "ugly", "poor", "dreadful", "dull"]
FILLER = ["the", "movie", "was", "and", "plot", "actor", "really", "quite", "story", "food", "day", "music", "book", "place"]


WARM_TAMPER = '''
import os

from w2slab.methods import method


@method("warm-tamper")
def tamper(ctx):
    """Honest predictions, after trying to open the parent (the warm process) memory for writing."""
    try:
        open(f"/proc/{os.getppid()}/mem", "r+b").close()
        ctx.notes["tamper"] = "opened"
    except OSError as e:
        ctx.notes["tamper"] = type(e).__name__
    return ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)
'''


# ---------------------------------------------------------------- data


def _text(rng: random.Random, positive: bool) -> str:
    words = rng.choices(FILLER, k=6) + rng.choices(POSITIVE if positive else NEGATIVE, k=rng.randint(1, 2))
    words += rng.choices(NEGATIVE if positive else POSITIVE, k=rng.randint(0, 1))
    rng.shuffle(words)
    return " ".join(words)


def make_testbed(folder: Path, kind: str, sizes: tuple[int, int, int], seed: int) -> Path:
    """A small sentiment testbed in the reference format (labels from a secret seed)."""
    from w2slab.testbeds.format import write_jsonl

    rng = random.Random(seed)
    for split, n in zip(("train_label", "train_unlabel", "test"), sizes):
        rows = []
        for i in range(n):
            pos = rng.random() < 0.5
            if kind == "pairwise":
                rows.append({"prompt": "Which review is more positive?", "first": _text(rng, pos), "second": _text(rng, not pos),
                             "label": "A" if pos else "B", "subset": "toy", "id": i})
            else:
                claim = rng.random() < 0.5
                rows.append({"question": f"What is the sentiment of: {_text(rng, pos)}",
                             "choice": "positive" if claim else "negative", "label": claim == pos, "subset": "toy"})
        write_jsonl(folder / f"{split}.jsonl", rows)
    return folder


def true_labels(folder: Path) -> np.ndarray:
    from w2slab.testbeds.format import read_jsonl

    return np.asarray(read_jsonl(folder / "test.jsonl").labels)


# ---------------------------------------------------------------- attack code (what the attackers upload)

EDITED = '''
from w2slab.methods import method

EDITS = {edits!r}


@method("honest-edited")
def edited(ctx):
    """The naive method, then fixed edits of some rows per seed (reproducible)."""
    p = ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)
    for row, cls in EDITS.get(ctx.seed, {{}}).items():
        p[row] = [1.0 - cls, float(cls)]
    return p
'''

CONSTANT = '''
import numpy as np
from w2slab.methods import method


@method("majority")
def majority(ctx):
    """The most common answer ("A") for every row; never looks at the teacher."""
    return np.tile([1.0, 0.0], (len(ctx.test), 1))
'''

LEXICON = '''
import re

import numpy as np
from w2slab.methods import method

POS = {pos}
NEG = {neg}


def score(text):
    words = re.findall(r"[a-z']+", text.lower())
    return sum(w in POS for w in words) - sum(w in NEG for w in words)


@method("lexicon")
def lexicon(ctx):
    """A sentiment lexicon: no weak labels needed."""
    p1 = []
    for r in ctx.test.rows:
        if "first" in r:
            d = score(r["first"]) - score(r["second"])
            p1.append(0.5 if d == 0 else (0.0 if d > 0 else 1.0))
        else:
            s = score(r["question"])
            p1.append(0.5 if s == 0 else (1.0 if (s > 0) == (r["choice"] == "positive") else 0.0))
    p1 = np.asarray(p1)
    return np.stack([1 - p1, p1], 1)
'''.replace("{pos}", repr(set(POSITIVE))).replace("{neg}", repr(set(NEGATIVE)))

READER = '''
import glob
import json
import os
import socket

import numpy as np
from w2slab.methods import method

FILES = {files}
GLOBS = {globs}
DIRS = {dirs}
GRADER = ("127.0.0.1", {port})


def labels_from(path, n):
    if path.endswith(".npz"):
        with np.load(path) as z:
            if "test_probs" in z and len(z["test_probs"]) == n:
                return [int(x) for x in z["test_probs"].argmax(1)]
        return None
    out = []
    with open(path) as f:
        for line in f:
            lab = json.loads(line).get("label")
            if lab is None:
                return None
            out.append(1 if lab in ("B", True, 1) else 0)
    return out if len(out) == n else None


@method("reader")
def reader(ctx):
    """Look for the answers instead of learning them."""
    n, found, where = len(ctx.test), None, None
    for d in DIRS:
        try:
            os.listdir(d)
        except OSError:
            pass
    candidates = list(FILES)
    for pattern in GLOBS:
        try:
            candidates += glob.glob(pattern, recursive=True)
        except OSError:
            pass
    candidates += ["../../../../" + p.lstrip("/") for p in FILES]
    for path in candidates:
        try:
            got = labels_from(path, n)
        except Exception:
            got = None
        if got is not None:
            found, where = got, path
            break
    try:
        socket.create_connection(GRADER, timeout=1).close()
    except OSError:
        pass
    if found is not None:
        ctx.notes["found"] = "".join(str(x) for x in found)
        ctx.notes["where"] = where
    p1 = np.asarray(found, dtype=float) if found is not None else np.full(n, 0.5)
    return np.stack([1 - p1, p1], 1)
'''


def targz(members: list[tuple[str, bytes]], tweak: Any = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if tweak:
            tweak(tar)
    return buf.getvalue()


def _link(name: str, kind: bytes, target: str) -> Any:
    def tweak(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)
    return tweak


# ---------------------------------------------------------------- the harness


@contextlib.contextmanager
def _home(home: Path) -> Iterator[None]:
    old = os.environ.get("W2SLAB_HOME")
    os.environ["W2SLAB_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("W2SLAB_HOME", None)
        else:
            os.environ["W2SLAB_HOME"] = old


class Client:
    """A researcher's HTTP client that counts its scored queries."""

    def __init__(self, url: str, token: str, name: str) -> None:
        import httpx

        self.name = name
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.queries = 0
        self.answers: list[float] = []  # every dev answer, in order

    def ask(self, testbed: str, p1: np.ndarray, seed: int | None = None) -> float:
        body: dict[str, Any] = {"testbed": testbed, "predictions": [float(x) for x in p1]}
        if seed is not None:
            body["seed"] = seed
        r = self.http.post("/api/evaluate", json=body)
        r.raise_for_status()
        self.queries += 1
        self.answers.append(float(r.json()["transfer_acc"]))
        return self.answers[-1]

    def upload(self, data: bytes) -> Any:
        return self.http.post("/api/snapshots", content=data, headers={"content-type": "application/gzip"})

    def submit(self, testbed: str, method: str, sha: str, preds: dict[int, np.ndarray]) -> Any:
        self.queries += 1
        return self.http.post("/api/submit", json={"testbed": testbed, "method_name": method, "snapshot_sha256": sha,
                                                    "predictions": {str(s): [float(x) for x in v] for s, v in preds.items()}})

    def close(self) -> None:
        self.http.close()


class RedTeam:
    """Start a grader on secret toy testbeds, run every attack, report."""

    def __init__(self, workdir: Path | None = None, test_rows: int = 400, eval_budget: int = 250, coord_budget: int = 100,
                 unhardened: bool = False, seed: int | None = None, audit_timeout: float = 300.0, quiet: bool = True,
                 final_probes: int = 4, audit_workers: int = 2, ladder: bool = True, board_ladder: bool = True,
                 submit_probes: int = 36, dup_rows: str = "all", audits: bool = True) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="w2slab-redteam-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.home = self.workdir / "home"
        self.test_rows, self.eval_budget, self.coord_budget = test_rows, eval_budget, coord_budget
        self.unhardened, self.audit_timeout, self.quiet, self.final_probes = unhardened, audit_timeout, quiet, final_probes
        self.audit_workers, self.ladder = audit_workers, ladder
        self.board_ladder, self.submit_probes, self.dup_rows, self.audits = board_ladder, submit_probes, dup_rows, audits
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.rng = np.random.default_rng(self.seed)
        self.grader: GraderProcess | None = None
        self.port = 0
        self.clients: dict[str, Client] = {}
        self.results: list[AttackResult] = []
        self.submissions: dict[str, list[int]] = {}  # researcher -> submission ids
        self.refused: dict[str, list[str]] = {}

    # ---- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> RedTeam:
        secret = random.Random(self.seed)
        self.toy = make_testbed(self.workdir / "data" / "toy", "pairwise", (60, 240, self.test_rows), secret.randrange(2**31))
        self.toy2 = make_testbed(self.workdir / "data" / "toy2", "correctness", (60, 240, 200), secret.randrange(2**31))
        self.truth = true_labels(self.toy)
        self._write_server_secret()
        extra = ["--eval-per-hour", str(self.eval_budget + 50), "--eval-total", str(self.eval_budget + 50),
                 "--submit-per-hour", "200", "--submit-total", "200", "--audit-workers", str(self.audit_workers),
                 "--dev-ladder-seeds", str(self.LADDER_SEEDS)]
        if self.unhardened:
            extra += ["--dev-noise", "0", "--dev-reuse-radius", "0", "--dev-ladder", "0", "--submit-dup-radius", "0", "--no-audits",
                      "--board-ladder", "0"]
        elif not self.ladder:
            extra += ["--dev-ladder", "0"]
        if not self.board_ladder and not self.unhardened:
            extra += ["--board-ladder", "0"]
        if not self.audits and not self.unhardened:
            extra += ["--no-audits"]
        if self.dup_rows != "all":
            extra += ["--dup-rows", self.dup_rows]
        env = dict(os.environ, W2SLAB_HOME=str(self.home), OMP_NUM_THREADS="1")
        env.pop("W2SLAB_ADMIN_TOKEN", None)
        self.grader = GraderProcess([f"toy={self.toy}", f"toy2={self.toy2}"], self.workdir, WEAK, STRONG, env=env, extra=extra)
        self.port, self.log = self.grader.port, self.grader.log
        self.grader.wait_ready(timeout, interval=0.2)
        self.admin_token = (self.home / "grader" / "admin_token").read_text().strip()
        self.admin = Client(self.url, self.admin_token, "admin")
        self.seeds = self.admin.http.get("/api/seeds", params={"testbed": "toy"}).json()["seeds"]
        return self

    def server_secret(self) -> str:
        """The throwaway grader's server secret, fixed by the red team's seed. It keys the dev
        noise (and the submission seeds, and the audits' noisy numbers), so a secret drawn afresh
        per run, as a real grader does on first start, would give every run other rounded answers,
        other boundary searches and other query counts: the same seed must print the same numbers.
        The attackers never use it; like the toy labels, it is only as secret as the seed."""
        return "sec_" + hashlib.sha256(f"w2slab-redteam-server-secret:{self.seed}".encode()).hexdigest()

    def _write_server_secret(self) -> None:
        path = self.home / "grader" / "server_secret"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.server_secret() + "\n")
        path.chmod(0o600)

    def stop(self) -> None:
        for c in self.clients.values():
            c.close()
        if getattr(self, "admin", None):
            self.admin.close()
        if self.grader is not None:
            self.grader.stop(20)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def researcher(self, name: str) -> Client:
        r = self.admin.http.post("/api/admin/researchers", json={"name": name})
        r.raise_for_status()
        self.clients[name] = Client(self.url, r.json()["token"], name)
        return self.clients[name]

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    # ---- the attacker's own computing (a kit, like any researcher's)

    EXTRA_SEEDS: ClassVar[list[int]] = list(range(900, 906))
    LADDER_SEEDS: ClassVar[int] = 5  # the grader's default --dev-ladder-seeds
    SELF_JUDGED: ClassVar[frozenset[str]] = frozenset({"path traversal", "warm sandbox tamper"})  # not judged by flags

    def kit(self) -> Path:
        """The attackers' researcher kit of the toy testbed (no labels), exported once."""
        from w2slab.engine.kit import export_kit
        from w2slab.engine.pipeline import Experiment

        kit = self.workdir / "kit"
        if not (kit / "kit.json").is_file():
            with _home(self.home):
                export_kit(Experiment.create(str(self.toy), WEAK, STRONG), sorted(set(self.seeds) | set(self.EXTRA_SEEDS)), kit)
        return kit

    def kit_predictions(self, code: str, seeds: list[int]) -> dict[int, np.ndarray]:
        """Run a method file on the researcher kit (no labels) on the attacker's side (cached)."""
        from w2slab.engine.kit import predict

        cache = self.__dict__.setdefault("_pred_cache", {})
        missing = [s for s in seeds if (code, s) not in cache]
        if missing:
            kit = self.kit()
            with _home(self.home):
                path = self.workdir / "methods" / f"m{len(cache)}.py"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(code)
                out = predict(kit, str(path), missing)
            cache.update({(code, int(s)): np.asarray(v) for s, v in out["predictions"].items()})
        return {s: cache[(code, s)].copy() for s in seeds}

    def snapshot(self, client: Client, code: str) -> str:
        r = client.upload(targz([("method.py", code.encode()), ("README.md", b"my method\n")]))
        r.raise_for_status()
        return r.json()["sha256"]

    def submit(self, client: Client, method: str, code: str, preds: dict[int, np.ndarray]) -> Any:
        r = client.submit("toy", method, self.snapshot(client, code), preds)
        if r.status_code == 201:
            self.submissions.setdefault(client.name, []).append(r.json()["id"])
        else:
            self.refused.setdefault(client.name, []).append(f"{r.status_code}: {r.json().get('detail', '')[:120]}")
        return r

    # ---- attacks

    def _score(self, res: AttackResult, rows: list[int], guesses: list[int]) -> AttackResult:
        res.guessed = len(rows)
        res.correct = int(sum(int(self.truth[i] == g) for i, g in zip(rows, guesses)))
        res.p_value = binom_p(res.correct, res.guessed)
        return res

    def _base(self, targets: list[int]) -> np.ndarray:
        """The attacker's random starting vector, drawn *balanced*: on the rows it will probe,
        exactly one of each pair of positions (k, k+3) in every block of 6 agrees with the truth
        (so every third of them, and all of them, are exactly half right). A guess that carries no
        information from the grader then scores exactly 50% instead of the base's luck (+-3
        percentage points), which keeps the test at p >= 0.01 meaningful. The scripted attackers do
        not use this structure."""
        n = len(self.truth)
        base = self.rng.integers(0, 2, n).astype(float)
        for start in range(0, len(targets) - 5, 6):
            block = targets[start:start + 6]
            for j in range(3):
                a, b = (block[j], block[j + 3]) if self.rng.integers(2) else (block[j + 3], block[j])
                base[a], base[b] = float(self.truth[a]), float(1 - self.truth[b])
        return base

    def _boundary(self, c: Client, base: np.ndarray, pool: list[int]) -> tuple[np.ndarray, float, int]:
        """Flip pool rows one by one until the rounded answer moves: the vector just before the
        move sits at a rounding boundary. Returns it, its answer and the direction of the move."""
        v, a = base.copy(), c.ask("toy", base)
        for i in pool:
            w = v.copy()
            w[i] = 1 - w[i]
            b = c.ask("toy", w)
            if b != a:
                return v, a, (1 if b > a else -1)
            v, a = w, b
        return v, a, 1

    @staticmethod
    def _guess(base_i: int, diff: float, direction: int) -> int:
        """A rise means the flipped label is right; a fall means the base label is; no change at a
        boundary below (above) the base means the flip did not fix (break) the row."""
        if diff > 0:
            return 1 - base_i
        if diff < 0:
            return base_i
        return base_i if direction > 0 else 1 - base_i

    def attack_single_flip(self) -> AttackResult:
        res = AttackResult("single-flip probe", ["mallory"], "boundary search, then one row flipped per query (whole budget)")
        c = self.researcher("mallory")
        n = len(self.truth)
        order = [int(i) for i in self.rng.permutation(n)]
        pool, targets = order[:30], order[30:]
        base = self._base(targets)
        v, a, direction = self._boundary(c, base, pool)
        rows, guesses = [], []
        budget = self.eval_budget - c.queries
        for i in targets[: max(0, budget - budget % 6)]:
            w = v.copy()
            w[i] = 1 - w[i]
            rows.append(i)
            guesses.append(self._guess(int(v[i]), c.ask("toy", w) - a, direction))
        res.queries = c.queries
        return self._score(res, rows, guesses)

    def attack_coordinated(self) -> AttackResult:
        names = ["eve-1", "eve-2", "eve-3"]
        res = AttackResult("coordinated probe", names, "3 accounts: shared boundary base; every row flipped by 2 accounts, answers averaged")
        cs = [self.researcher(nm) for nm in names]
        n = len(self.truth)
        order = [int(i) for i in self.rng.permutation(n)]
        base = self._base(order[30:])
        v, a, direction = self._boundary(cs[0], base, order[:30])
        base_answers = [a] + [c.ask("toy", v) for c in cs[1:]]
        per_account = self.coord_budget - 1
        budget_rows = (per_account * len(cs) - cs[0].queries + 1) // 2
        targets = order[30: 30 + max(0, budget_rows - budget_rows % 6)]
        diffs: dict[int, list[float]] = {i: [] for i in targets}
        for k, i in enumerate(targets):
            for j in (k % 3, (k + 1) % 3):
                if cs[j].queries >= self.coord_budget:
                    continue
                w = v.copy()
                w[i] = 1 - w[i]
                diffs[i].append(cs[j].ask("toy", w) - base_answers[j])
        rows = [i for i in targets if diffs[i]]
        guesses = [self._guess(int(v[i]), float(np.mean(diffs[i])), direction) for i in rows]
        res.queries = sum(c.queries for c in cs)
        return self._score(res, rows, guesses)

    def attack_regression(self) -> AttackResult:
        """The boosting attack on leaderboards (Blum & Hardt 2015): every query is a fresh random
        vector (each row flipped with probability 1/2 from a base), so no two are close and answer
        reuse never applies; each answer carries a little information about every scored row, and
        a row's label is read off the correlation between its flips and the answers. It spreads its
        queries over every Ladder the grader allows (one per seed) to get the most answers through."""
        res = AttackResult("regression probe", ["rex"], "fresh random vectors (half the rows flipped each), labels read off "
                                                        "the correlation of answers and flips (whole budget)")
        c = self.researcher("rex")
        n = len(self.truth)
        targets = [int(i) for i in self.rng.permutation(n)]
        base = self._base(targets)
        flips, answers = [], []
        for k in range(self.eval_budget):
            f = self.rng.random(n) < 0.5
            flips.append(f)
            answers.append(c.ask("toy", np.where(f, 1 - base, base), seed=k % self.LADDER_SEEDS))
        F, a = np.asarray(flips, dtype=float), np.asarray(answers)
        corr = (F - F.mean(0)).T @ (a - a.mean())  # > 0: flipping the row raises the score, the base label is wrong
        rows = targets[: len(targets) - len(targets) % 6]
        res.queries = c.queries
        return self._score(res, rows, [int(1 - base[i]) if corr[i] > 0 else int(base[i]) for i in rows])

    def attack_majority(self) -> AttackResult:
        res = AttackResult("majority answer", ["connie"], "\"A\" for every row (the most common answer), teacher never used")
        c = self.researcher("connie")
        self.submit(c, "majority", CONSTANT, {s: np.zeros(len(self.truth)) for s in self.seeds})
        res.queries = c.queries
        return res

    def attack_lexicon(self) -> AttackResult:
        res = AttackResult("lexicon, no teacher", ["tina"], "hand-written sentiment lexicon; never reads the weak labels")
        c = self.researcher("tina")
        preds = self.kit_predictions(LEXICON, self.seeds)
        self.submit(c, "lexicon", LEXICON, preds)
        res.queries = c.queries
        return res

    def attack_fake(self) -> AttackResult:
        res = AttackResult("fake predictions", ["fred"], "uploads a naive method, submits the lexicon's (better) predictions")
        c = self.researcher("fred")
        fake = self.kit_predictions(LEXICON, self.seeds)
        self.submit(c, "naive (claimed)", HONEST, fake)
        res.queries = c.queries
        return res

    def attack_label_files(self) -> AttackResult:
        res = AttackResult("label files", ["lara"], "code reads test.jsonl, the engine cache, built-in data and the DB at their real "
                                                    "paths, lists folders, calls the grader")
        from w2slab.testbeds import DATA_DIR

        c = self.researcher("lara")
        files = [str(self.toy / "test.jsonl"), str(self.toy / "train_unlabel.jsonl"), str(self.home / "grader" / "grader.db")]
        globs = [str(DATA_DIR / "*" / "test.jsonl"), str(self.home / "cache" / "**" / "*.npz"), str(self.workdir / "**" / "test.jsonl")]
        dirs = [str(self.toy), str(DATA_DIR), str(self.home), str(self.home / "grader"), str(self.home / "cache"), "/root", "/home"]
        code = (READER.replace("{files}", repr(files)).replace("{globs}", repr(globs)).replace("{dirs}", repr(dirs))
                .replace("{port}", str(self.port)))
        honest = self.kit_predictions(HONEST, self.seeds)
        self.submit(c, "reader", code, honest)
        res.queries = c.queries
        return res

    def attack_traversal(self) -> AttackResult:
        res = AttackResult("path traversal", ["pat"], "snapshots with ../, absolute paths, symlinks, hard links")
        c = self.researcher("pat")
        bad = {
            "dotdot": targz([("../evil.py", b"x = 1\n")]),
            "nested-dotdot": targz([("ok/../../evil.py", b"x = 1\n")]),
            "absolute": targz([(str(self.workdir / "evil.py"), b"x = 1\n")]),
            "symlink": targz([("method.py", HONEST.encode())], _link("data", tarfile.SYMTYPE, str(self.toy))),
            "hardlink": targz([("method.py", HONEST.encode())], _link("labels.jsonl", tarfile.LNKTYPE, str(self.toy / "test.jsonl"))),
        }
        refused = []
        for what, data in bad.items():
            r = c.upload(data)
            if r.status_code >= 400:
                refused.append(what)
            else:
                res.notes += f"{what} accepted! "
        res.caught = len(refused) == len(bad) and not (self.workdir / "evil.py").exists()
        res.caught_by = [f"refused: {', '.join(refused)}"] if refused else []
        res.queries = len(bad)
        return res

    def attack_cherry_pick(self) -> AttackResult:
        res = AttackResult("seed cherry-picking", ["cherry"], "6 extra seeds evaluated on dev; the best one's predictions submitted for every seed")
        c = self.researcher("cherry")
        seeds = sorted(set(self.seeds) | set(self.EXTRA_SEEDS))
        preds = self.kit_predictions(HONEST, seeds)
        scores = {s: c.ask("toy", preds[s]) for s in seeds}
        best = max(scores, key=lambda s: scores[s])
        self.submit(c, "naive (lucky seed)", HONEST, {s: preds[best] for s in self.seeds})
        res.queries = c.queries
        return res

    def attack_final_probe(self) -> AttackResult:
        res = AttackResult("final-set probe", ["sam"], "resubmits its predictions with one row flipped, reads the final PGR")
        c = self.researcher("sam")
        preds = self.kit_predictions(HONEST, self.seeds)
        r = self.submit(c, "naive", HONEST, preds)
        base_pgr = r.json().get("pgr") if r.status_code == 201 else None
        rows, guesses = [], []
        for i in [int(x) for x in self.rng.permutation(len(self.truth))[: self.final_probes]]:
            p = {s: v.copy() for s, v in preds.items()}
            first = self.seeds[0]
            p[first][i] = 1.0 - float(p[first][i] > 0.5)
            rr = self.submit(c, "naive", HONEST, p)
            if rr.status_code == 201 and base_pgr is not None and rr.json().get("pgr") is not None:
                diff = rr.json()["pgr"] - base_pgr
                if diff != 0:
                    rows.append(i)
                    guesses.append(int(p[first][i] > 0.5) if diff > 0 else int(preds[first][i] > 0.5))
        res.queries = c.queries
        return self._score(res, rows, guesses)

    def attack_submission_regression(self) -> AttackResult:
        """Read board labels off submission scores: one submission of the honest method, then
        ``submit_probes`` reproducible edits of it (the snapshot's code applies them, so the audit
        re-runs agree), each flipping one row in every seed, padded with swaps between seeds that
        disagree (score unchanged) to clear the near-duplicate radius. With exact board scores a
        flip of a board row moves the score by exactly its seeds' count, up or down by the label."""
        res = AttackResult("submission regression", ["regina"], f"{self.submit_probes} reproducible edits of one submission "
                                                                 "(one row flipped in every seed, swaps as padding)")
        c = self.researcher("regina")
        preds = self.kit_predictions(HONEST, self.seeds)
        hard = {s: (v > 0.5).astype(int) for s, v in preds.items()}
        agree = np.all([hard[s] == hard[self.seeds[0]] for s in self.seeds], axis=0)
        split = [int(i) for i in np.flatnonzero(~agree)]
        targets = [int(i) for i in self.rng.permutation(np.flatnonzero(agree))[: self.submit_probes]]
        radius = max(2, math.ceil(0.005 * len(self.truth) * len(self.seeds)))  # the grader's published default
        n_swaps = max(0, (radius - len(self.seeds)) // 2 + 1)
        base = self.submit(c, "honest", EDITED.format(edits={}), preds)
        if base.status_code != 201:
            return res
        base_acc = base.json()["transfer_acc"]
        rows, guesses = [], []
        for i in targets:
            edits: dict[int, dict[int, int]] = {s: {i: int(1 - hard[s][i])} for s in self.seeds}
            for j in self.rng.choice(split, size=min(n_swaps, len(split)), replace=False) if split else []:
                a = next(s for s in self.seeds if hard[s][j] != hard[self.seeds[0]][j])
                edits[self.seeds[0]][int(j)], edits[a][int(j)] = int(hard[a][j]), int(hard[self.seeds[0]][j])
            p = {s: v.copy() for s, v in preds.items()}
            for s, e in edits.items():
                for row, cls in e.items():
                    p[s][row] = float(cls)
            r = self.submit(c, "honest", EDITED.format(edits=edits), p)
            if r.status_code == 201 and r.json().get("transfer_acc") is not None and r.json()["transfer_acc"] != base_acc:
                rows.append(i)
                guesses.append(int(1 - hard[self.seeds[0]][i]) if r.json()["transfer_acc"] > base_acc else int(hard[self.seeds[0]][i]))
        res.queries = c.queries
        return self._score(res, rows, guesses)

    def attack_refusal_oracle(self) -> AttackResult:
        """Read which rows the board scores from refusals, without spending budget: a submission
        one prediction away from an earlier one is refused as a near-duplicate when the check
        compares scored rows only (a board row changes the distance, any other row does not).
        Scored as board membership guessed against its base rate (a third of the rows)."""
        res = AttackResult("refusal oracle", ["rufus"], f"{self.final_probes * 4} single-row edits of one submission, "
                                                        "board membership read off 409 vs 201")
        c = self.researcher("rufus")
        preds = self.kit_predictions(HONEST, self.seeds)
        first = self.submit(c, "honest", HONEST, preds)
        if first.status_code != 201:
            return res
        board_guess, rows = [], [int(i) for i in self.rng.permutation(len(self.truth))[: self.final_probes * 4]]
        for i in rows:
            p = {s: v.copy() for s, v in preds.items()}
            p[self.seeds[0]][i] = 1.0 - float(p[self.seeds[0]][i] > 0.5)
            r = c.submit("toy", "honest", self.snapshot(c, HONEST), p)
            if r.status_code == 201:
                self.submissions.setdefault(c.name, []).append(r.json()["id"])
            else:
                self.refused.setdefault(c.name, []).append(f"{r.status_code}: {r.json().get('detail', '')[:120]}")
            board_guess.append(r.status_code == 409)
        member = self.board_members()
        res.guessed = len(rows)
        res.correct = int(sum(g == (i in member) for i, g in zip(rows, board_guess)))
        res.p_value = binom_p(res.correct, res.guessed, chance=max(len(member), len(self.truth) - len(member)) / len(self.truth))
        res.queries = c.queries
        return res

    def attack_warm_tamper(self) -> AttackResult:
        """Open the warm sandbox process's memory for writing from inside an experiment: the
        experiment is its child, so with a dumpable parent it could rewrite what every later run
        of that researcher computes. Caught when the open fails (the warm process is not dumpable)."""
        res = AttackResult("warm sandbox tamper", ["ivy"], "an experiment opens its warm sandbox process's memory "
                                                          "(/proc/<parent>/mem) for writing")
        if find_bwrap() is None:
            res.caught, res.caught_by = True, ["no bubblewrap here: experiments run cold, no warm process"]
            return res
        kit, ws = self.kit(), self.workdir / "warm-ivy"
        ws.mkdir(parents=True, exist_ok=True)
        (ws / "method.py").write_text(WARM_TAMPER)
        spec = SandboxSpec(workspace=ws, readonly=[*python_binds(), kit], wall_seconds=300, env={"OMP_NUM_THREADS": "1"})
        with WarmSandbox(spec, kit=kit, harden=not self.unhardened) as warm:
            run = warm.run(["predict", "--kit", str(kit), "-m", str(ws / "method.py"), "-o", str(ws / "out.json"),
                            "--seeds", str(self.seeds[0])])
        if run is None or not (ws / "out.json").is_file():
            res.notes = f"the run did not finish: {(run.stderr if run else 'no warm process started')[-200:]}"
            return res
        got = json.loads((ws / "out.json").read_text())["notes"][str(self.seeds[0])]["tamper"]
        res.notes = f"opening the warm process's memory for writing: {got}. "
        if got != "opened":
            res.caught, res.caught_by = True, [f"the warm process is not dumpable ({got})"]
        return res

    def board_members(self) -> set[int]:
        """The board third of the toy testbed (the red team's own knowledge, to score the attack)."""
        from w2slab.grader.scoring import split_rows
        from w2slab.testbeds import testbed_fingerprint

        return {int(i) for i in split_rows(len(self.truth), testbed_fingerprint(self.toy))[1]}

    def control(self) -> AttackResult:
        res = AttackResult("honest control", ["henry"], "the naive method, submitted properly", expect_caught=False)
        c = self.researcher("henry")
        self.submit(c, "naive", HONEST, self.kit_predictions(HONEST, self.seeds))
        res.queries = c.queries
        return res

    # ---- verdicts

    def wait_for_audits(self) -> None:
        ids = [i for v in self.submissions.values() for i in v]
        deadline = time.monotonic() + self.audit_timeout
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                st = self.admin.http.get(f"/api/submissions/{i}/audit").json().get("status")
                if st not in ("auditing", "queued", "running"):
                    pending.discard(i)
            if pending:
                time.sleep(0.5)
        if pending:
            raise RuntimeError(f"audits of submissions {sorted(pending)} did not finish in {self.audit_timeout} s")

    def verdicts(self) -> None:
        flags = self.admin.http.get("/api/admin/flags").json()
        for res in self.results:
            mine = [f for f in flags if f["researcher"] in res.researchers and f["severity"] == "high"]
            refused = [x for nm in res.researchers for x in self.refused.get(nm, []) if x.startswith("409")]
            if res.name not in self.SELF_JUDGED:
                res.caught_by = sorted({f["kind"] for f in mine}) + ([f"refused x{len(refused)}"] if refused else [])
                res.caught = bool(res.caught_by)
            if res.name == "label files":
                self._score_label_files(res)
        self.flags = flags

    def _score_label_files(self, res: AttackResult) -> None:
        """What the reader code found inside the audit sandbox (from the audit's evidence)."""
        for sid in self.submissions.get("lara", []):
            d = self.admin.http.get(f"/api/admin/submissions/{sid}").json()
            notes = (d.get("audit_detail", {}).get("checks", {}) or {}).get("notes", {})
            found = ""
            for text in notes.values():
                try:
                    for per_seed in json.loads(text).values():
                        found = found or per_seed.get("found", "")
                except (ValueError, AttributeError):
                    continue
            if found:
                guesses = [int(x) for x in found[: len(self.truth)]]
                self._score(res, list(range(len(guesses))), guesses)
                res.notes += "the code found labels inside the sandbox! "

    def run(self) -> list[AttackResult]:
        attacks = [self.attack_single_flip, self.attack_coordinated, self.attack_regression, self.attack_majority, self.attack_lexicon, self.attack_fake,
                   self.attack_label_files, self.attack_traversal, self.attack_cherry_pick, self.attack_final_probe,
                   self.attack_submission_regression, self.attack_refusal_oracle, self.attack_warm_tamper, self.control]
        attacks += [] if self.unhardened or not self.audits else redteam_audit.register(self)
        for attack in attacks:
            t = time.monotonic()
            self.results.append(attack())
            self.say(f"{self.results[-1].name}: {time.monotonic() - t:.1f} s")
        if not self.unhardened and self.audits:
            t = time.monotonic()
            self.wait_for_audits()
            self.say(f"audits: {time.monotonic() - t:.1f} s")
        self.verdicts()
        if getattr(self, "audit_attacks", None):
            self.audit_attacks.verdicts()
        return self.results


def run_redteam(**kwargs: Any) -> list[AttackResult]:
    with RedTeam(**kwargs) as rt:
        return rt.run()


def table_rows(results: list[AttackResult]) -> list[list[str]]:
    out = []
    for r in results:
        caught = ("yes: " + ", ".join(r.caught_by)) if r.caught else ("no (control, as expected)" if not r.expect_caught else "NO")
        out.append([r.name, ", ".join(r.researchers), str(r.queries), f"{r.recovered} ({r.correct}/{r.guessed})",
                    f"{r.p_value:.3g}", caught, "ok" if r.ok else "FAIL"])
    return out


def summary_ok(results: list[AttackResult]) -> bool:
    return all(r.ok for r in results)

