"""The offline researcher's search space: typed W2S method recipes built from blocks.

A :class:`Recipe` composes built-in blocks:

- label source: the teacher's ``hard`` labels, ``soft`` probabilities, or ``sharp`` ones
  (temperature ``temperature`` < 1);
- relabel: ``none``, ``knn`` (smooth the targets over the ``relabel_k`` nearest neighbours in
  the student's feature space: consistency / label propagation) or ``probe`` (a
  difference-in-means direction of the student's features fitted to the weak labels);
  mixed in with weight ``relabel_mix``;
- symmetric: for pairwise testbeds, train on both orders of each pair (swapped row, flipped
  target) and average both orders at test time (negation consistency, as in CCS);
- filter: ``none``, ``confident`` (keep the ``keep_frac`` rows the teacher is surest of),
  ``disagree`` (drop rows where a first student disagrees with the targets) or ``crossfit``
  (teacher-error modelling: keep the ``keep_frac`` rows whose targets a cross-fitted student,
  which never trained on the row, agrees with most; :mod:`w2slab.methods.blocks`);
- consistency (correctness rows with a closed set of choices): ``test`` makes the student's
  predictions consistent over each question's choices (at most one is true;
  :func:`w2slab.methods.blocks.exclusive_consistency`), ``both`` also relabels the training
  targets that way with a first student; mixed in with weight ``consistency_mix``;
- loss: ``xent`` or ``aux`` (Burns et al.'s auxiliary confidence loss: ``alpha_max``, ``warmup``);
- weighting: ``none`` or ``confidence`` (``|2p - 1| ** weight_power``);
- self-training ``rounds`` (0-2) mixing targets with the last student's hard labels
  (``teacher_weight`` on the teacher);
- an ``ensemble`` of 1-3 students averaged;
- rank: the student sees only the top ``rank`` principal directions of its features, found
  without labels (a simplicity bias: it cannot follow the teacher's errors along the many
  low-variance directions);
- hyper-parameters of the student: ``lr``, ``epochs``, ``head``, ``weight_decay``.

``Recipe.render()`` writes a self-contained ``@method`` plug-in (only w2slab public APIs):
that file is what is run, evaluated, uploaded as a snapshot and submitted.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# values each field may take (mutations step to neighbouring values)
SPACE: dict[str, list[Any]] = {
    "label": ["hard", "soft", "sharp"],
    "temperature": [0.25, 0.5, 0.75],
    "relabel": ["none", "knn", "probe"],
    "relabel_k": [10, 25, 50, 100, 200],
    "relabel_mix": [0.5, 0.75, 1.0],
    "symmetric": [False, True],
    "filter": ["none", "confident", "disagree", "crossfit"],
    "keep_frac": [0.5, 0.7, 0.85],
    "consistency": ["none", "test", "both"],
    "consistency_mix": [0.5, 1.0],
    "loss": ["xent", "aux"],
    "alpha_max": [0.25, 0.5, 0.75, 1.0],
    "warmup": [0.1, 0.2, 0.5],
    "weighting": ["none", "confidence"],
    "weight_power": [0.5, 1.0, 2.0],
    "rounds": [0, 1, 2],
    "teacher_weight": [0.3, 0.5, 0.7],
    "ensemble": [1, 2, 3],
    "rank": [8, 32, 128],
    "lr": [3e-4, 1e-3, 3e-3],
    "epochs": [5, 10, 20, 30],
    "head": ["linear", "mlp"],
    "weight_decay": [1e-2, 1e-1],
}

# the blocks a mutation acts on, with the fields each owns (the first is the switch)
BLOCKS: dict[str, tuple[str, ...]] = {
    "label": ("label", "temperature"),
    "relabel": ("relabel", "relabel_k", "relabel_mix"),
    "symmetric": ("symmetric",),
    "filter": ("filter", "keep_frac"),
    "consistency": ("consistency", "consistency_mix"),
    "loss": ("loss", "alpha_max", "warmup"),
    "weighting": ("weighting", "weight_power"),
    "rounds": ("rounds", "teacher_weight"),
    "ensemble": ("ensemble",),
    "rank": ("rank",),
    "hyper": ("lr", "epochs", "head", "weight_decay"),
}


@dataclass(frozen=True)
class Recipe:
    label: str = "hard"
    temperature: float = 0.5
    relabel: str = "none"
    relabel_k: int = 25
    relabel_mix: float = 0.75
    symmetric: bool = False
    filter: str = "none"
    keep_frac: float = 0.7
    consistency: str = "none"
    consistency_mix: float = 1.0
    loss: str = "xent"
    alpha_max: float = 0.75
    warmup: float = 0.2
    weighting: str = "none"
    weight_power: float = 1.0
    rounds: int = 0
    teacher_weight: float = 0.5
    ensemble: int = 1
    rank: int | None = None  # None: all of the student's features
    lr: float | None = None  # None: the testbed's strong-model default
    epochs: int | None = None
    head: str | None = None
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = SPACE.get(f.name)
            if allowed is not None and value is not None and value not in allowed:
                raise ValueError(f"recipe field {f.name}={value!r} is outside the space {allowed}")

    # ---- identity
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def canonical(self) -> dict[str, Any]:
        """The fields that change behaviour (inactive blocks' knobs dropped)."""
        d = self.to_dict()
        if d["label"] != "sharp":
            d.pop("temperature")
        if d["relabel"] == "none":
            d.pop("relabel_k"), d.pop("relabel_mix")
        elif d["relabel"] == "probe":
            d.pop("relabel_k")
        if d["filter"] not in ("confident", "crossfit"):
            d.pop("keep_frac")
        if d["consistency"] == "none":
            d.pop("consistency"), d.pop("consistency_mix")
        if d["loss"] != "aux":
            d.pop("alpha_max"), d.pop("warmup")
        if d["weighting"] == "none":
            d.pop("weight_power")
        if d["rounds"] == 0:
            d.pop("teacher_weight")
        if d["rank"] is None:  # off: absent, so recipes from before the block keep their keys
            d.pop("rank")
        return d

    @property
    def key(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def cost(self) -> float:
        """Relative training cost (student fits, pairs doubled when symmetric)."""
        fits = (self.ensemble * (self.rounds + 1) + (1 if self.filter in ("disagree", "crossfit") else 0)
                + (1 if self.consistency == "both" else 0))
        epochs = (self.epochs or 30) / 30
        return fits * epochs * (2 if self.symmetric else 1)

    @property
    def family(self) -> str:
        """The recipe's niche in the quality-diversity archive: which blocks are switched on
        (with the method a categorical switch picks), hyper-parameters and knobs ignored."""
        on = []
        for block, off in OFF.items():
            value = getattr(self, BLOCKS[block][0])
            if value != off:
                on.append(f"{block}={value}" if isinstance(value, str) else block)
        return "+".join(on) or "naive"

    def describe(self) -> str:
        """One line, naming only what differs from plain hard-label training."""
        base, parts = Recipe().canonical(), []
        for k, v in self.canonical().items():
            if base.get(k, object()) != v:
                parts.append(f"{k}={v}")
        return ", ".join(parts) or "naive (hard weak labels, defaults)"

    def diff(self, other: "Recipe") -> str:
        """What changed from ``other`` to this recipe."""
        a, b = other.canonical(), self.canonical()
        changes = [f"{k}: {a.get(k, '-')} -> {b.get(k, '-')}" for k in sorted(set(a) | set(b)) if a.get(k, "-") != b.get(k, "-")]
        return "; ".join(changes) or "no change"

    def render(self, name: str | None = None, note: str = "") -> str:
        """A self-contained ``@method`` plug-in file implementing this recipe."""
        name = name or f"recipe-{self.key}"
        params = ",\n".join(f"    {k}: {_annot(v)} = {v!r}" for k, v in self.to_dict().items())
        doc = f"W2S recipe {name}: {self.describe()}."
        if note:
            doc += "\n\n" + note.strip()
        return TEMPLATE.format(doc=doc.replace('"""', "'''"), name=name, params=params,
                               recipe_json=repr(dict(sorted(self.to_dict().items()))))


def _annot(v: Any) -> str:
    if v is None:
        return "Any"
    return type(v).__name__


def recipe_from_text(text: str) -> Recipe | None:
    """Find a recipe in a forum post body or a rendered file (a JSON object after 'RECIPE')."""
    for m in re.finditer(r"```json\s*(\{.*?\})\s*```|RECIPE = (\{.*?\})\n", text, re.S):
        try:
            data = json.loads(m.group(1)) if m.group(1) else ast.literal_eval(m.group(2))
            return Recipe.from_dict(data)
        except (ValueError, TypeError, SyntaxError):
            continue
    return None


# ------------------------------------------------------------------ direction priors

# keywords in a (user-written) direction's text -> the blocks it favours
KEYWORDS: dict[str, tuple[str, ...]] = {
    r"re-?weight|teacher'?s confidence|confidence weight": ("weighting", "filter"),
    r"auxiliary|\baux\b|trust itself": ("loss",),
    r"consisten|neighbou?r|propagat|elicit|smooth": ("relabel", "symmetric"),
    r"noisy|channel|\bem\b|self-train|pseudo|posterior": ("rounds", "label"),
    r"distill|born-again|temperature|sharpen|\bkl\b": ("label", "rounds"),
    r"simplicit|early stop|capacity|linear head|regulari": ("rank", "hyper"),
    r"low.rank|effective rank|principal|pca": ("rank",),
    r"select|filter|disagree|threshold|small-loss": ("filter",),
    r"ensemble|averag": ("ensemble",),
    r"probe|difference-in-means|principal|pca|representation": ("relabel",),
    r"hyper|learning rate|sensitiv": ("hyper",),
}

# the first value tried when a block is switched on
STARTERS: dict[str, dict[str, Any]] = {
    "weighting": {"weighting": "confidence", "weight_power": 1.0},
    "filter": {"filter": "confident", "keep_frac": 0.7},
    "loss": {"loss": "aux", "alpha_max": 0.75, "warmup": 0.2},
    "relabel": {"relabel": "knn", "relabel_k": 25, "relabel_mix": 0.75},
    "symmetric": {"symmetric": True},
    "rounds": {"rounds": 1, "teacher_weight": 0.5},
    "label": {"label": "soft"},
    "ensemble": {"ensemble": 3},
    "rank": {"rank": 32},
    "hyper": {"epochs": 10},
    "consistency": {"consistency": "both", "consistency_mix": 1.0},
}

# the built-in directions' opening moves (block, change), in order
DIRECTION_PLANS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "confidence-reweighting": [("weighting", {"weighting": "confidence", "weight_power": 1.0}),
                               ("weighting", {"weighting": "confidence", "weight_power": 2.0}),
                               ("filter", {"filter": "confident", "keep_frac": 0.7})],
    "auxiliary-confidence-loss": [("loss", {"loss": "aux", "alpha_max": 0.75, "warmup": 0.2}),
                                  ("loss", {"loss": "aux", "alpha_max": 0.5, "warmup": 0.5, "label": "soft"})],
    "unsupervised-elicitation-consistency": [("relabel", {"relabel": "knn", "relabel_k": 25, "relabel_mix": 0.75}),
                                             ("symmetric", {"symmetric": True})],
    "noisy-channel-label-posteriors": [("rounds", {"rounds": 1, "teacher_weight": 0.5}),
                                       ("label", {"label": "soft"}),
                                       ("rounds", {"rounds": 2, "teacher_weight": 0.3})],
    "distillation-variants": [("label", {"label": "soft"}), ("label", {"label": "sharp", "temperature": 0.5}),
                              ("rounds", {"rounds": 1, "teacher_weight": 0.3})],
    "simplicity-bias-regularisation": [("rank", {"rank": 32}), ("hyper", {"head": "linear"}), ("hyper", {"epochs": 10}),
                                       ("hyper", {"lr": 3e-4})],
    "data-selection": [("filter", {"filter": "disagree"}), ("filter", {"filter": "confident", "keep_frac": 0.5})],
    "ensembles": [("ensemble", {"ensemble": 3}), ("ensemble", {"ensemble": 2, "label": "soft"})],
    "representation-probes": [("relabel", {"relabel": "probe", "relabel_mix": 0.5}),
                              ("relabel", {"relabel": "probe", "relabel_mix": 1.0})],
    "hyperparameter-robustness": [("hyper", {"epochs": 10}), ("hyper", {"lr": 3e-3}), ("hyper", {"head": "linear"})],
}


def _favoured(text: str, name: str = "") -> list[str]:
    if name in DIRECTION_PLANS:
        return list(dict.fromkeys(b for b, _ in DIRECTION_PLANS[name]))
    low, out = text.lower(), []
    for pattern, blocks in KEYWORDS.items():
        if re.search(pattern, low):
            out += [b for b in blocks if b not in out]
    return out


def direction_bias(text: str, name: str = "") -> dict[str, float]:
    """Mutation weights per block: 1 everywhere, x3 for the blocks the direction points to."""
    weights = {b: 1.0 for b in BLOCKS}
    for b in _favoured(text, name):
        weights[b] = 3.0
    return weights


def starter_recipes(text: str, base: Recipe, name: str = "") -> list[tuple[str, Recipe]]:
    """The direction's opening moves from ``base``: a built-in direction's plan, or its
    favourite blocks (found by keywords) switched on one at a time."""
    if name in DIRECTION_PLANS:
        plan = DIRECTION_PLANS[name]
    else:
        low = text.lower()
        plan = []
        for b in _favoured(text, name):
            change = dict(STARTERS[b])
            if b == "relabel" and re.search(r"probe|difference-in-means|pca", low):
                change = {"relabel": "probe", "relabel_mix": 0.5}
            plan.append((b, change))
    out: list[tuple[str, Recipe]] = []
    for b, change in plan:
        r = replace(base, **change)
        if r.key != base.key and all(r.key != x.key for _, x in out):
            out.append((b, r))
    return out


# blocks that exploit a structure the rows themselves show (a closed choice set, pairs): screened
# first wherever they apply (a generic prior: it names no testbed)
STRUCTURAL = ("consistency", "symmetric")


def screening_recipes(base: Recipe, blocks: list[str], start: int = 0) -> list[tuple[str, Recipe]]:
    """One move per applicable block (its starter): a screening design, so every block is
    measured once on every testbed whatever the direction favours (a generic prior, keyed by no
    testbed). The structural blocks come first; ``start`` rotates the others, so researchers with
    consecutive seeds screen different blocks first and share them through the forum."""
    first = [b for b in STRUCTURAL if b in blocks]
    order = [b for b in STARTERS if b in blocks and b not in first]
    if order:
        k = (start * (len(order) // 2)) % len(order)  # consecutive seeds start about half the list apart
        order = order[k:] + order[:k]
    return [(b, replace(base, **STARTERS[b])) for b in first + order]


# the value that means "this block is off"
OFF: dict[str, Any] = {"label": "hard", "relabel": "none", "symmetric": False, "filter": "none", "loss": "xent",
                       "weighting": "none", "rounds": 0, "ensemble": 1, "consistency": "none", "rank": None}


@dataclass
class Mutator:
    """Random neighbours of a recipe, with per-block weights (the direction's bias)."""

    weights: dict[str, float] = field(default_factory=lambda: {b: 1.0 for b in BLOCKS})
    pairwise: bool = True
    closed_choices: bool = False  # correctness rows with a small closed choice set: the consistency block applies
    max_cost: float = 8.0

    def applicable(self) -> list[str]:
        """The blocks that can change predictions on this kind of testbed."""
        return [b for b in BLOCKS if (self.pairwise or b != "symmetric") and (self.closed_choices or b != "consistency")]

    def mutate(self, parent: Recipe, rng: random.Random, tried: set[str], tries: int = 50) -> tuple[str, Recipe] | None:
        blocks = self.applicable()
        for _ in range(tries):
            block = rng.choices(blocks, weights=[self.weights.get(b, 1.0) for b in blocks])[0]
            child = self._step(parent, block, rng)
            if child.key not in tried and child.key != parent.key and child.cost <= self.max_cost:
                return block, child
        return None

    def _step(self, r: Recipe, block: str, rng: random.Random) -> Recipe:
        names = BLOCKS[block]
        switch = names[0]
        if block in OFF and getattr(r, switch) == OFF[block]:
            # an inactive block is switched on: its starter, or a random setting of its knobs
            if rng.random() < 0.5:
                return replace(r, **STARTERS[block])
            change = {n: rng.choice(SPACE[n]) for n in names[1:]}
            change[switch] = rng.choice([v for v in SPACE[switch] if v != OFF[block]])
            return replace(r, **change)
        active = [n for n in names if n in r.canonical()]
        name = rng.choice(active or list(names))
        values = SPACE[name]
        value = getattr(r, name)
        if value is None:  # hyper-parameter at the backend default: pick any setting
            return replace(r, **{name: rng.choice(values)})
        i = values.index(value)
        options = [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]
        if isinstance(value, str) and len(values) > 2:
            options = [v for v in values if v != value]
        return replace(r, **{name: rng.choice(options)})

    def crossover(self, a: Recipe, b: Recipe, rng: random.Random) -> Recipe:
        """``a`` with one of ``b``'s active blocks transplanted."""
        differing = [blk for blk, names in BLOCKS.items() if any(getattr(a, n) != getattr(b, n) for n in names)]
        if not differing:
            return a
        blk = rng.choice(differing)
        return replace(a, **{n: getattr(b, n) for n in BLOCKS[blk]})


# ------------------------------------------------------------------ the rendered plug-in

TEMPLATE = '''"""{doc}

Rendered by w2slab's offline researcher from a typed recipe; self-contained: it uses only
w2slab's public APIs (MethodContext, @method, the backends' fit/predict_proba/features and
the built-in auxiliary confidence loss). Run it with

    w2slab predict --kit KIT -m THIS_FILE.py -o predictions.json
"""

from __future__ import annotations

from typing import Any

import numpy as np

from w2slab.methods import MethodContext, method
from w2slab.methods.blocks import agreement, choice_set, crossfit_proba, exclusive_consistency
from w2slab.methods.builtin import aux_confidence_loss
from w2slab.models.base import soft_xent
from w2slab.testbeds.format import Split

RECIPE = {recipe_json}


def _onehot(p: np.ndarray) -> np.ndarray:
    return np.eye(2, dtype=np.float64)[np.asarray(p).argmax(1)]


def _standardize(x: np.ndarray) -> np.ndarray:
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)


def _swapped(split: Split) -> Split:
    rows = [dict(r, first=r["second"], second=r["first"]) for r in split.rows]
    return Split(split.kind, rows, None, split.name)


def _knn_targets(x: np.ndarray, t: np.ndarray, k: int, pairwise: bool) -> np.ndarray:
    """Each row's targets averaged over its k nearest neighbours (cosine). For pairwise rows
    the features are differences, so a neighbour pointing the opposite way votes flipped."""
    x = _standardize(x)
    k = max(1, min(k, len(x) - 2))
    out = np.empty_like(t)
    for start in range(0, len(x), 512):
        sim = x[start:start + 512] @ x.T
        for i in range(sim.shape[0]):
            sim[i, start + i] = 0.0
        score = np.abs(sim) if pairwise else sim
        nn = np.argpartition(-score, k, axis=1)[:, :k]
        s = np.take_along_axis(sim, nn, 1)
        votes = t[nn][..., 1]
        if pairwise:
            votes = np.where(s >= 0, votes, 1 - votes)
        p1 = votes.mean(1)
        out[start:start + 512] = np.stack([1 - p1, p1], 1)
    return out


def _probe_targets(x: np.ndarray, t: np.ndarray, pairwise: bool) -> np.ndarray:
    """A difference-in-means direction of the features, fitted to the soft targets, then
    thresholded at the targets' class balance and calibrated by its own spread."""
    x = _standardize(x)
    if pairwise:  # antisymmetric features: the swapped pair is the same evidence
        x, t = np.concatenate([x, -x]), np.concatenate([t, t[:, ::-1]])
    w1, w0 = t[:, 1], t[:, 0]
    direction = (w1 @ x) / max(w1.sum(), 1e-8) - (w0 @ x) / max(w0.sum(), 1e-8)
    score = x @ direction
    threshold = np.quantile(score, 1 - float(t[:, 1].mean()))
    z = (score - threshold) / (score.std() + 1e-8)
    p1 = 1 / (1 + np.exp(-4 * z))
    p = np.stack([1 - p1, p1], 1)
    return p[: len(p) // 2] if pairwise else p


@method("{name}")
def run(
    ctx: MethodContext,
{params},
) -> np.ndarray:
    pairwise = ctx.train.kind == "pairwise"
    overrides = {{k: v for k, v in dict(lr=lr, epochs=epochs, head=head, weight_decay=weight_decay, rank=rank).items() if v is not None}}
    p = np.asarray(ctx.weak_probs, dtype=np.float64)

    # label source
    if label == "hard":
        t = _onehot(p)
    elif label == "soft":
        t = p.copy()
    else:  # sharpened by temperature
        q = p ** (1.0 / temperature)
        t = q / q.sum(1, keepdims=True)

    # relabel with the student's own representation (consistency / probe)
    if relabel != "none":
        x = ctx.new_student().features(ctx.train)
        new = _knn_targets(x, t, relabel_k, pairwise) if relabel == "knn" else _probe_targets(x, t, pairwise)
        t = (1 - relabel_mix) * t + relabel_mix * new
        ctx.notes["relabel_changed"] = float((new.argmax(1) != p.argmax(1)).mean())

    # re-weighting by the teacher's confidence
    w = np.ones(len(t))
    if weighting == "confidence":
        w = np.abs(2 * p[:, 1] - 1) ** weight_power + 1e-3

    def fit(targets: np.ndarray, rows: np.ndarray, seed: int):
        train, y, wt = ctx.train.subset(rows), targets[rows], w[rows]
        if pairwise and symmetric:
            train = Split(train.kind, train.rows + _swapped(train).rows, None, train.name)
            y, wt = np.concatenate([y, y[:, ::-1]]), np.concatenate([wt, wt])
        rate = float(y[:, 1].mean())
        fn = aux_confidence_loss(rate, alpha_max, warmup) if loss == "aux" else soft_xent
        return ctx.new_student(**overrides).fit(train, y, weights=wt, loss=fn, seed=seed)

    def proba(student: Any, split: Split) -> np.ndarray:
        out = student.predict_proba(split)
        if pairwise and symmetric:
            out = (out + student.predict_proba(_swapped(split))[:, ::-1]) / 2
        return out

    # consistency over each question's closed set of choices (at most one is true)
    choices = choice_set(ctx.train, ctx.test) if consistency != "none" else []
    rate = float(p.argmax(1).mean())  # the teacher's class balance

    def consistent(student: Any, split: Split) -> np.ndarray:
        out = proba(student, split)
        fixed = exclusive_consistency(student.predict_proba, split, choices, rate) if choices else None
        return out if fixed is None else (1 - consistency_mix) * out + consistency_mix * fixed

    if consistency == "both" and choices:
        first = fit(t, np.arange(len(t)), ctx.seed + 4099)
        t = consistent(first, ctx.train)
        ctx.notes["consistency_changed"] = float((t.argmax(1) != p.argmax(1)).mean())

    # data selection
    rows = np.arange(len(t))
    if filter == "confident":
        n_keep = max(10, int(round(keep_frac * len(t))))
        surest = np.abs((t if relabel != "none" else p)[:, 1] - 0.5)  # the teacher's (or relabelled) confidence
        rows = np.sort(np.argsort(-surest, kind="stable")[:n_keep])
    elif filter == "crossfit":  # teacher-error modelling: out-of-fold agreement with the targets
        oof = crossfit_proba(lambda tr, held, k: proba(fit(t, tr, ctx.seed + 7919 + k), ctx.train.subset(held)), len(t), 2, ctx.seed)
        n_keep = max(10, int(round(keep_frac * len(t))))
        rows = np.sort(np.argsort(-agreement(oof, t), kind="stable")[:n_keep])
    elif filter == "disagree":
        first = proba(fit(t, rows, ctx.seed + 7919), ctx.train)
        agree = np.flatnonzero(first.argmax(1) == t.argmax(1))
        rows = agree if len(agree) >= len(t) // 2 else np.argsort(-(first * t).sum(1))[: len(t) // 2]
    ctx.notes["kept_fraction"] = len(rows) / len(t)

    # students: self-training rounds, then an ensemble average
    members = []
    for m in range(ensemble):
        targets = t
        for r in range(rounds + 1):
            student = fit(targets, rows, ctx.seed + 1000 * m + r)
            if r < rounds:
                targets = teacher_weight * t + (1 - teacher_weight) * _onehot(proba(student, ctx.train))
        members.append(consistent(student, ctx.test))
    return np.mean(members, 0)
'''
