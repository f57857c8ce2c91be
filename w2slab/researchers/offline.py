"""The offline researcher: a research policy over typed W2S recipes, no LLM.

It searches the recipe space of :mod:`w2slab.researchers.recipes` with Thompson sampling over
the recipes it has evaluated (and promising ones read on the forum):

1. evaluate the naive recipe (hard weak labels) and its direction's opening moves on the two
   *paired* dev seeds (every new recipe gets the same two seeds, so a child's effect vs its
   parent is a paired difference, free of the seed-to-seed variation of the weak teacher);
2. then, each step, draw a value for the elite of every recipe family (a quality-diversity
   archive: per set of switched-on blocks, its best recipe; :meth:`OfflineResearcher.archive`)
   from its posterior ``N(mean, sigma^2 / n)`` (``sigma`` = pooled seed-to-seed spread of its
   own measurements); the top draw is either
   *confirmed* on one more dev seed (when it leads but has few seeds: guards against the
   winner's curse), *replicated* (a forum recipe it has not run yet), or *mutated*: one block
   changed (the direction's favourite blocks are 3x as likely) or a block transplanted from
   another family's elite; near the end of the budget the top candidates by lower bound are
   re-checked on the dev seeds they miss (:meth:`OfflineResearcher.recheck`): the finalists, the
   best recipe of each of the top ``FINALISTS`` families by lower bound;
3. each new recipe's result goes to the forum (``result`` or ``negative_result``) with its
   effect size vs its parent and the recipe in the body; replications of others' posts get a
   vote (or a comment when they do not replicate);
4. it stops at its budgets (experiments, grader queries, deadline minus the time the final
   runs need, the stop file) and submits every finalist, best lower bound first: the very file
   that was evaluated is copied into a snapshot, run on the server's seeds, uploaded and
   submitted. It makes no pick: the grader seals the finalist with the best board accuracy, so
   the last choice is made on rows none of them was chosen on (the dev rows' winner's curse
   does not reach it).

Through the grader's Ladder (its default; one per seed, so recipes are compared on the same
teacher seed), an answer "not improved" carries only "at most my best on this seed plus the
margin"; it is recorded a margin *below* that best, marked censored, and its bound kept. A
censored seed counts in a recipe's mean at an imputed value below that bound (:func:`_values`),
the seed-to-seed spread uses real answers only, and every dev figure the researcher reports
(forum posts, notebook, ``usage.final``) is that same honest mean, with the censored seeds named.

Every experiment runs ``w2slab predict --kit KIT -m recipe.py`` in the researcher's sandbox.
The notebook (``notebook.json`` + ``notebook.md`` in the workspace) survives restarts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from w2slab.researchers.client import GraderClient, GraderError
from w2slab.researchers.contract import ResearcherConfig, Transcript, Usage
from w2slab.methods.blocks import choice_set
from w2slab.researchers.recipes import (STRUCTURAL, Mutator, Recipe, direction_bias, recipe_from_text, screening_recipes,
                                       starter_recipes)
from w2slab.testbeds.format import read_jsonl

NOTEBOOK_VERSION = 1
SIGMA_PRIOR = 0.06  # seed-to-seed sd of one dev PGR measurement before any data
CONFIRM_SEEDS = 4  # a leading recipe is confirmed on up to this many dev seeds (two at a time)
LCB_Z = 1.0  # the final pick maximises mean - LCB_Z * sigma / sqrt(n)
SCREEN_SD = 0.15  # prior sd of an unmeasured block's effect (its starter) around the naive recipe's dev PGR
FINALISTS = 3  # the top recipes of distinct families: re-checked on more dev seeds near the end, then all
# submitted, so the board (rows no recipe was chosen on) picks among them


@dataclass
class Action:
    kind: str  # root | try | confirm | replicate
    recipe: Recipe
    parent: str | None
    block: str | None
    seeds: list[int]
    origin: str = ""
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Notebook:
    """The researcher's memory: every recipe, result, post and the final submission."""

    def __init__(self, workspace: Path, name: str, direction: str) -> None:
        self.path = workspace / "notebook.json"
        self.md_path = workspace / "notebook.md"
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            self.data["restarts"] = self.data.get("restarts", 0) + 1
            self.resumed = True
        else:
            self.data = {"version": NOTEBOOK_VERSION, "name": name, "direction": direction, "created": time.time(),
                         "restarts": 0, "nodes": {}, "experiments": [], "forum_seen": [], "avoid": [], "final": None,
                         "timing": {"overhead": None, "per_unit": None}}
            self.resumed = False

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        return self.data["nodes"]

    def node(self, recipe: Recipe, **fields_: Any) -> dict[str, Any]:
        if recipe.key not in self.nodes:
            self.nodes[recipe.key] = {"key": recipe.key, "recipe": recipe.to_dict(), "describe": recipe.describe(),
                                      "parent": None, "block": None, "origin": "", "results": {}, "accs": {},
                                      "post_id": None, "forum_post": None, "reported_pgr": None, "failed": None,
                                      "created": time.time()}
        node = self.nodes[recipe.key]
        for k, v in fields_.items():
            if node.get(k) is None or k in ("origin",) and not node.get(k):
                node[k] = v
        return node

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)
        self.md_path.write_text(self.markdown())

    def markdown(self) -> str:
        d = self.data
        lines = [f"# Notebook of {d['name']}", "", f"Direction: {d['direction']}", "",
                 f"Restarts: {d['restarts']}; experiments: {len(d['experiments'])}", "",
                 "## Recipes (dev PGR per seed, best first; a censored seed counts at its imputed value)", "",
                 "| key | recipe | origin | parent | n | mean dev PGR | per seed | post |", "|---|---|---|---|---|---|---|---|"]
        sigma = float(d.get("sigma") or SIGMA_PRIOR)
        for n in sorted(self.nodes.values(), key=lambda n: -_mean(n, sigma)):
            cens = set(n.get("censored", []))
            res = ", ".join(f"{s}: {v:.2f}" + (" (censored: below the Ladder's bound)" if s in cens else "")
                            for s, v in n["results"].items())
            mean = f"{_mean(n, sigma):.3f}" if n["results"] else ("failed" if n.get("failed") else "-")
            lines.append(f"| {n['key']} | {n['describe']} | {n['origin']} | {n['parent'] or ''} | {len(n['results'])} | "
                         f"{mean} | {res} | {n['post_id'] or ''} |")
        if d.get("archive"):
            lines += ["", "## Archive (the elite of each recipe family)", "", "| family | elite | mean dev PGR | n |", "|---|---|---|---|"]
            for fam, key in d["archive"].items():
                n = self.nodes.get(key)
                if n and n["results"]:
                    lines.append(f"| {fam} | {key} | {_mean(n, sigma):.3f} | {len(n['results'])} |")
        lines += ["", "## Experiments", ""]
        for e in d["experiments"]:
            lines.append(f"- #{e['n']} {e['kind']} {e['key']} seeds {e['seeds']}: "
                         + (f"dev PGR {e.get('pgr')}" if e.get("ok") else f"failed ({e.get('error', '')[:120]})")
                         + (f", effect {e['effect']:+.3f} vs {e['parent']}" if e.get("effect") is not None else "")
                         + (f" (censored by the Ladder: seeds {e['censored']})" if e.get("censored") else "")
                         + f" ({e.get('seconds', 0):.0f} s)")
        if d.get("final"):
            lines += ["", "## Final submission", "", "```json", json.dumps(d["final"], indent=1), "```"]
        return "\n".join(lines) + "\n"


def _real(node: dict[str, Any]) -> list[float]:
    """The node's per-seed scores the grader really answered (not censored by the Ladder)."""
    censored = set(node.get("censored", []))
    return [v for s, v in node["results"].items() if s not in censored]


def _normal_pdf(a: float) -> float:
    return math.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)


def _normal_cdf(a: float) -> float:
    return 0.5 * (1 + math.erf(a / math.sqrt(2)))


def _values(node: dict[str, Any], sigma: float = SIGMA_PRIOR) -> dict[str, float]:
    """Every seed's dev score, a censored (Ladder "not improved") one replaced by an honest guess.

    A censored answer only says the truth lies *below* ``u`` = the seed's best + the margin
    (``node["bounds"]``; recorded scores are ``best - margin``). It is evidence against the
    recipe, so it must count (dropping it from the mean while keeping it in n made one lucky
    seed beat four steady ones). It is imputed as the smaller of
    (a) the recorded ``best - margin`` (the answer lost to the seed's record holder), and
    (b) ``E[X | X <= u]`` for ``X ~ N(m, sigma^2)``, ``m`` the mean of the recipe's real answers
    (the Tobit expectation: a recipe whose real answers are poor is not lifted to the record).
    Both are below ``u``, so an upper-bounded value is never scored above what the Ladder allows.
    """
    censored = set(node.get("censored", []))
    real = [v for s, v in node["results"].items() if s not in censored]
    m = statistics.fmean(real) if real else None
    out = {}
    for s, v in node["results"].items():
        if s in censored and m is not None:
            u = float((node.get("bounds") or {}).get(s, v))
            a = (u - m) / sigma
            tobit = m - sigma * _normal_pdf(a) / max(_normal_cdf(a), 1e-12) if a > -8 else u - sigma / max(-a, 1e-9)
            v = min(v, tobit)
        out[s] = float(v)
    return out


def _mean(node: dict[str, Any], sigma: float = SIGMA_PRIOR) -> float:
    """The honest dev score: mean over every seed (censored ones imputed by :func:`_values`)."""
    vals = list(_values(node, sigma).values())
    return float(sum(vals) / len(vals)) if vals else -math.inf


def _lcb(node: dict[str, Any], sigma: float = SIGMA_PRIOR) -> float:
    """Lower confidence bound ``mean - LCB_Z * sigma / sqrt(n)`` over all of a node's seeds."""
    n = len(node["results"])
    return _mean(node, sigma) - LCB_Z * sigma / math.sqrt(n) if n else -math.inf


def _dev_text(node: dict[str, Any], sigma: float = SIGMA_PRIOR) -> str:
    """The honest dev figure as the researcher reports it: mean, n, and which seeds are censored."""
    n, c = len(node["results"]), len(node.get("censored", []))
    if not n:
        return "-"
    return (f"{_mean(node, sigma):.3f} on {n} seed{'s' if n != 1 else ''} (lower bound {_lcb(node, sigma):.3f}"
            + (f"; {c} censored by the Ladder, imputed below its bound" if c else "") + ")")


def _mark_censored(node: dict[str, Any], metrics: dict[str, Any], added: dict[str, float]) -> None:
    """Seeds a forum post marks censored stay censored (with their bounds) in the reader's node."""
    bounds = metrics.get("bounds") or {}
    for s in metrics.get("censored") or []:
        s = str(s)
        if s in added and s not in node.setdefault("censored", []):
            node["censored"].append(s)
            if s in bounds:
                node.setdefault("bounds", {})[s] = float(bounds[s])


class OfflineResearcher:
    def __init__(self, config: ResearcherConfig) -> None:
        self.cfg = config
        self.ws = Path(config.workspace)
        for sub in ("recipes", "out", "snapshot"):
            (self.ws / sub).mkdir(parents=True, exist_ok=True)
        self.tr = Transcript(config.transcript, config.name)
        self.usage = Usage.load(config)
        self.nb = Notebook(self.ws, config.name, config.direction)
        self.client = GraderClient(config.grader_url, config.token)
        self.warm = config.warm_sandbox() if config.warm else None  # started at the first experiment
        self.rng = random.Random(config.seed * 7919 + self.nb.data["restarts"])
        from w2slab.engine.kit import Kit

        self.kit = Kit.open(config.kit_dir)
        self.pairwise = self.kit.meta.get("kind") == "pairwise"
        train = read_jsonl(Path(config.kit_dir) / "train_unlabel.jsonl", self.kit.meta["kind"], require_labels=False)
        self.mutator = Mutator(weights=direction_bias(config.direction, config.direction_name), pairwise=self.pairwise,
                               closed_choices=bool(choice_set(train)))
        # the direction's opening moves and one move per block this testbed's rows allow (screening);
        # the blocks that exploit the rows' structure first on every other researcher (by seed)
        opening = starter_recipes(config.direction, Recipe(), config.direction_name)
        screen = screening_recipes(Recipe(), self.mutator.applicable(), config.seed)
        n_struct = sum(b in STRUCTURAL for b, _ in screen)
        moves = screen[:n_struct] + opening if config.seed % 2 == 0 else opening + screen[:n_struct]
        self.starters = [m for i, m in enumerate(moves) if all(m[1].key != r.key for _, r in moves[:i])]
        # the other blocks' starters compete in the Thompson draw (an optimistic prior around the
        # naive recipe) instead of all being run before the search can build on a good result
        self.screen = [m for m in screen[n_struct:] if all(m[1].key != r.key for _, r in self.starters)]
        self.dev_seeds = [s for s in config.dev_seeds if s in self.kit.seeds] or self.kit.seeds[:2]
        self.submit_seeds = list(config.submit_seeds) or self.kit.seeds

    # ------------------------------------------------------------------ bookkeeping
    def say(self, text: str, **extra: Any) -> None:
        """The researcher's reasoning, as a message in its transcript."""
        self.tr.message("assistant", text, **extra)

    def sync_usage(self) -> None:
        """Counters from the grader itself (authoritative across restarts), relative to where
        they stood when this session first started (a researcher may live through sessions)."""
        self.tr.tool_call("grader.me", {})
        me = self.client.me()
        self.tr.tool_result("grader.me", me)
        u = me.get("usage") or {}
        server = {"grader_queries": int(u.get("evaluations_total", 0)), "submissions": int(u.get("submissions", 0)),
                  "findings_posted": int(u.get("posts", 0))}
        if self.usage.offsets is None:  # first start in this session
            self.usage.offsets = {k: v - getattr(self.usage, k) for k, v in server.items()}
        for k, v in server.items():
            setattr(self.usage, k, v - int(self.usage.offsets.get(k, 0)))
        self.usage.experiments = max(self.usage.experiments, len(self.session_experiments()))

    def session_experiments(self) -> list[dict[str, Any]]:
        return [e for e in self.nb.data["experiments"] if e.get("session", "") == self.cfg.session]

    def submitted(self) -> bool:
        final = self.nb.data.get("final") or {}
        return bool(final.get("submission_id")) and final.get("session", "") == self.cfg.session

    def sigma(self) -> float:
        """Pooled within-recipe sd of dev PGR across seeds (how noisy one measurement is)."""
        resid = []
        for n in self.nb.nodes.values():
            vals = _real(n)
            if len(vals) >= 2:
                m = sum(vals) / len(vals)
                resid += [(v - m) ** 2 * len(vals) / (len(vals) - 1) for v in vals]
        if len(resid) < 4:
            return SIGMA_PRIOR
        return min(0.3, max(0.02, math.sqrt(sum(resid) / len(resid))))

    def evaluated(self) -> list[dict[str, Any]]:
        return [n for n in self.nb.nodes.values() if n["results"]]

    def mean(self, node: dict[str, Any]) -> float:
        """The honest dev score of a node (every seed, censored ones imputed; see :func:`_values`)."""
        return _mean(node, self.sigma())

    def lcb(self, node: dict[str, Any]) -> float:
        return _lcb(node, self.sigma())

    def dev_text(self, node: dict[str, Any]) -> str:
        return _dev_text(node, self.sigma())

    def best(self) -> dict[str, Any] | None:
        """The recipe to bet on: the highest lower confidence bound ``mean - sigma / sqrt(n)`` over
        all its seeds (censored ones included at their imputed value: more seeds, more trust)."""
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def ranked(self) -> list[dict[str, Any]]:
        """Every evaluated recipe, best lower confidence bound first (see :meth:`best`)."""
        s = self.sigma()
        self.nb.data["sigma"] = s
        return sorted(self.evaluated(), key=lambda n: -_lcb(n, s))

    def candidates(self, k: int = FINALISTS) -> list[dict[str, Any]]:
        """The final candidates: the best recipe by lower bound, then the best of each other family
        (:attr:`Recipe.family`), at most ``k``. Near-identical variants of one recipe would give the
        board nothing to choose between; different families give it real alternatives."""
        out, families = [], set()
        for node in self.ranked():
            fam = Recipe.from_dict(node["recipe"]).family
            if fam not in families and not node.get("failed"):
                out.append(node)
                families.add(fam)
            if len(out) == k:
                break
        return out

    # ------------------------------------------------------------------ time
    def estimate(self, recipe: Recipe, n_seeds: int) -> float:
        t = self.nb.data["timing"]
        overhead = t.get("overhead") or 8.0
        per_unit = t.get("per_unit") or 2.0
        return overhead + per_unit * recipe.cost * n_seeds

    def learn_timing(self, recipe: Recipe, n_seeds: int, seconds: float) -> None:
        t = self.nb.data["timing"]
        obs = t.setdefault("obs", [])
        obs.append([recipe.cost * n_seeds, seconds])
        obs[:] = obs[-30:]
        if len(obs) >= 3 and len({o[0] for o in obs}) >= 2:  # least squares: seconds = a + b * units
            xs, ys = [o[0] for o in obs], [o[1] for o in obs]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            b = sum((x - mx) * (y - my) for x, y in obs) / max(1e-9, sum((x - mx) ** 2 for x in xs))
            b = max(0.2, b)
            t["per_unit"], t["overhead"] = b, max(2.0, my - b * mx)
        else:
            t["overhead"] = t.get("overhead") or 8.0
            t["per_unit"] = max(0.2, (seconds - t["overhead"]) / max(1e-9, recipe.cost * n_seeds))

    def final_reserve(self) -> float:
        """Seconds kept for the final runs: every current candidate on the server's seeds."""
        recipes = [Recipe.from_dict(n["recipe"]) for n in self.candidates()] or [Recipe()]
        return 1.5 * sum(self.estimate(r, len(self.submit_seeds)) for r in recipes) + 15.0

    def stop_reason(self, next_action: Action | None = None) -> str | None:
        reserve = self.final_reserve()
        if next_action is not None:
            reserve += self.estimate(next_action.recipe, len(next_action.seeds))
        return self.cfg.stop_reason(self.usage, reserve=reserve)

    # ------------------------------------------------------------------ the policy
    def paired_seeds(self) -> list[int]:
        return self.dev_seeds[:2]

    def choose(self) -> Action | None:
        nodes = self.nb.nodes
        root = Recipe()
        paired = self.paired_seeds()
        if not nodes.get(root.key, {}).get("results"):
            if not nodes.get(root.key, {}).get("failed"):
                return Action("root", root, None, None, paired, "root", "start from the naive recipe (hard weak labels)")
        root_key = root.key if nodes.get(root.key, {}).get("results") else None
        avoid = set(self.nb.data["avoid"])
        for block, r in self.starters:
            if r.key not in nodes and r.key not in avoid:
                why = (f"the rows have a structure the '{block}' block exploits" if block in STRUCTURAL else
                       f"my direction ({self.cfg.direction_name or 'given'}) points at the '{block}' block")
                return Action("try", r, root_key, block, paired, "starter", f"{why}: try {r.describe()}")
        recheck = self.recheck()
        if recheck is not None:
            return recheck
        sigma = self.sigma()
        draws: dict[str, float] = {}
        elites = self.archive()
        for key, n in nodes.items():
            if n.get("failed"):
                continue
            k = len(n["results"])
            if k:
                if elites.get(Recipe.from_dict(n["recipe"]).family, {}).get("key") == key:  # one ticket per family
                    draws[key] = self.rng.gauss(self.mean(n), sigma / math.sqrt(k))
            elif n.get("reported_pgr") is not None:
                draws[key] = self.rng.gauss(float(n["reported_pgr"]) - 0.03, 0.12)
        base = self.mean(nodes[root_key]) if root_key else 0.0
        unscreened = {r.key: (blk, r) for blk, r in self.screen if r.key not in nodes and r.key not in avoid}
        for key in unscreened:
            draws[key] = self.rng.gauss(base, SCREEN_SD)
        if not draws:
            return None
        top = max(draws, key=draws.__getitem__)
        if top in unscreened:
            block, r = unscreened[top]
            return Action("try", r, root_key, block, paired, "screen",
                          f"screening: the '{block}' block is not measured yet on this testbed and the Thompson draw "
                          f"favours it: try {r.describe()}")
        node = nodes[top]
        recipe = Recipe.from_dict(node["recipe"])
        best = self.best()
        if not node["results"]:
            return Action("replicate", recipe, best["key"] if best else root_key, "forum", paired, "forum",
                          f"Thompson draw favours {recipe.describe()} from forum post #{node['forum_post']} "
                          f"(reported PGR {node['reported_pgr']}): replicate it", {"post": node["forum_post"]})
        n_seen = len(node["results"])
        if best is not None and n_seen < min(CONFIRM_SEEDS, len(self.dev_seeds)) and \
                self.mean(node) >= self.mean(best) - sigma / 2:
            more = [s for s in self.dev_seeds if str(s) not in node["results"]][:2]
            return Action("confirm", recipe, node.get("parent"), None, more, node["origin"],
                          f"{recipe.describe()} leads (mean {self.mean(node):.2f} on {n_seen} seeds): confirm on seeds {more}")
        tried = set(nodes) | avoid
        ranked = sorted(self.evaluated(), key=lambda n: -self.mean(n))
        family = recipe.family
        others = sorted((n for f, n in elites.items() if f != family), key=lambda n: -self.mean(n))[:5]
        if len(ranked) >= 3 and others and self.rng.random() < 0.25:  # transplant a block from another family's elite
            other = self.rng.choice(others)
            child = self.mutator.crossover(recipe, Recipe.from_dict(other["recipe"]), self.rng)
            if child.key not in tried and child.cost <= self.mutator.max_cost:
                return Action("try", child, top, "crossover", paired, "crossover",
                              f"combine {recipe.describe()} with a block of {other['describe']}")
        for parent in [node] + ranked:
            got = self.mutator.mutate(Recipe.from_dict(parent["recipe"]), self.rng, tried)
            if got:
                block, child = got
                return Action("try", child, parent["key"], block, paired, "mutation",
                              f"Thompson draw picked {parent['describe']} (mean {self.mean(parent):.2f}, n={len(parent['results'])}); "
                              f"mutate its '{block}' block: {child.diff(Recipe.from_dict(parent['recipe']))}")
        return None

    def archive(self) -> dict[str, dict[str, Any]]:
        """The quality-diversity archive: per recipe family (which blocks are on, see
        :attr:`Recipe.family`), its elite: the highest honest mean. The search draws parents
        from the elites only (one Thompson ticket per family, so a family with many good
        variants does not crowd the others out) and transplants blocks across families;
        the final pick still ranks every recipe by its lower bound (:meth:`best`)."""
        s = self.sigma()
        out: dict[str, dict[str, Any]] = {}
        for n in self.evaluated():
            if n.get("failed"):
                continue
            fam = Recipe.from_dict(n["recipe"]).family
            if fam not in out or _mean(n, s) > _mean(out[fam], s):
                out[fam] = n
        self.nb.data["archive"] = {f: n["key"] for f, n in sorted(out.items())}
        return out

    def endgame(self) -> bool:
        """Whether the budget left is about what re-checking the top candidates needs: one
        two-seed run each (``FINALISTS`` experiments, twice as many grader queries, or that
        many runs of the current pick's cost before the final reserve)."""
        b, u = self.cfg.budgets, self.usage
        if b.experiments is not None and b.experiments - u.experiments <= FINALISTS:
            return True
        if b.grader_queries is not None and b.grader_queries - u.grader_queries <= 2 * FINALISTS:
            return True
        best = self.best()
        need = (FINALISTS + 0.5) * self.estimate(Recipe.from_dict(best["recipe"]) if best else Recipe(), 2)
        if self.cfg.deadline is not None and self.cfg.deadline - time.time() - self.final_reserve() <= need:
            return True
        if b.wall_seconds is not None and b.wall_seconds - u.wall_seconds() - self.final_reserve() <= need:
            return True
        return False

    def recheck(self) -> Action | None:
        """Near the end of the budget: the top ``FINALISTS`` recipes by lower bound get the dev
        seeds they miss (two at a time, the current pick first), so the submission is chosen on
        more seeds rather than on one lucky pair."""
        if not self.endgame():
            return None
        for node in self.candidates(FINALISTS):
            more = [x for x in self.dev_seeds if str(x) not in node["results"]][:2]
            if more and not node.get("failed"):
                recipe = Recipe.from_dict(node["recipe"])
                return Action("confirm", recipe, node.get("parent"), None, more, node["origin"] or "recheck",
                              f"re-check before submitting: {recipe.describe()} is among my top {FINALISTS} "
                              f"(dev PGR {self.dev_text(node)}): run it on seeds {more}")
        return None

    # ------------------------------------------------------------------ the forum
    def read_forum(self) -> None:
        seen = set(self.nb.data["forum_seen"])
        try:
            self.tr.tool_call("grader.posts", {"limit": 100})
            posts = self.client.posts(limit=100)
            self.tr.tool_result("grader.posts", posts)
        except GraderError as e:
            self.tr.tool_result("grader.posts", {"error": str(e)})
            return
        best = self.best()
        bar = self.mean(best) - 0.05 if best else -math.inf
        for p in posts:
            if p["id"] in seen:
                continue
            seen.add(p["id"])
            if p["author"] == self.cfg.name:
                continue
            m = p.get("metrics") or {}
            key = m.get("recipe_key")
            if not key or m.get("final"):
                continue
            per_seed = {str(s): float(v) for s, v in (m.get("per_seed") or {}).items() if v is not None}
            shared = bool(per_seed) and all(int(s) in self.dev_seeds for s in per_seed)
            if key in self.nb.nodes:  # known recipe: take the seeds someone else measured and I did not
                node = self.nb.nodes[key]
                new = {s: v for s, v in per_seed.items() if s not in node["results"]} if shared else {}
                if new and not node.get("failed"):
                    node["results"].update(new)
                    _mark_censored(node, m, new)
                    self.say(f"forum post #{p['id']} by {p['author']} adds seeds {list(new)} to {node['describe']}")
                continue
            promising = p["kind"] == "result" and isinstance(m.get("pgr"), (int, float)) and m["pgr"] >= bar
            if not shared and not promising:
                if p["kind"] == "negative_result":
                    self.nb.data["avoid"].append(key)
                continue
            self.tr.tool_call("grader.get_post", {"id": p["id"]})
            try:
                full = self.client.get_post(p["id"])
            except GraderError as e:
                self.tr.tool_result("grader.get_post", {"error": str(e)})
                continue
            self.tr.tool_result("grader.get_post", full)
            recipe = recipe_from_text(full.get("body", ""))
            if recipe is None or recipe.key != key:
                continue
            parent = m.get("parent_key") if m.get("parent_key") in self.nb.nodes else None
            node = self.nb.node(recipe, origin="forum", forum_post=p["id"], reported_pgr=m.get("pgr"), parent=parent,
                                block=m.get("block"))
            if shared:  # measured on the same dev seeds by the same grader: use the numbers as they are
                node["results"].update(per_seed)
                _mark_censored(node, m, per_seed)
                node["reported_by"] = p["author"]
            self.say(f"forum post #{p['id']} by {p['author']}: {recipe.describe()} has dev PGR {m.get('pgr')}"
                     + (f" on seeds {list(per_seed)}; added to my results" if shared else "; added to my candidates"))
        self.nb.data["forum_seen"] = sorted(seen)

    def post(self, kind: str, title: str, body: str, metrics: dict[str, Any], **links: Any) -> int | None:
        args = {"kind": kind, "title": title[:300], "body": body, "metrics": metrics, **links}
        self.tr.tool_call("grader.post", args)
        try:
            res = self.client.post(kind, title[:300], body, metrics, **links)
        except GraderError as e:
            self.tr.tool_result("grader.post", {"error": str(e)})
            return None
        self.tr.tool_result("grader.post", res)
        self.usage.findings_posted += 1
        self.usage.save()
        return int(res["id"])

    def post_finding(self, node: dict[str, Any], parent: dict[str, Any] | None, action: Action) -> float | None:
        recipe = Recipe.from_dict(node["recipe"])
        sigma = self.sigma()
        mine, theirs = _values(node, sigma), _values(parent, sigma) if parent else {}
        common = [s for s in mine if s in theirs]
        effect = (sum(mine[s] - theirs[s] for s in common) / len(common)) if common else None
        mean = self.mean(node)
        parent_mean = (sum(theirs[s] for s in common) / len(common)) if common else None
        cens = set(node.get("censored", []))
        sign = "" if effect is None else f" ({effect:+.2f} vs parent)"
        what = recipe.diff(Recipe.from_dict(parent["recipe"])) if parent else recipe.describe()
        verb = {"replicate": "replication", "confirm": "confirmation on more seeds"}.get(action.kind, action.block or "change")
        title = f"[{self.cfg.direction_name or 'offline'}] {verb}: {what} -> dev PGR {mean:.2f}{sign}"
        kind = "result" if effect is None or effect > 0 else "negative_result"
        per_seed = "\n".join(f"| {s} | {mine[s]:.2f}{' (censored)' if s in cens else ''} | "
                             + (f"{theirs[s]:.2f} |" if s in theirs else "- |") for s in mine)
        body = (f"**Finding** ({'positive' if kind == 'result' else 'negative'}): {action.why}.\n\n"
                f"- recipe `{recipe.key}`: {recipe.describe()}\n"
                f"- parent `{parent['key'] if parent else '-'}`: {parent['describe'] if parent else '-'}\n"
                f"- change: {what}\n"
                f"- dev PGR {self.dev_text(node)}, seeds {list(node['results'])}"
                + (f"; censored seeds {sorted(cens)} (the Ladder said: not above its best + margin) count at an "
                   "imputed value below that bound" if cens else "")
                + (f"; parent {parent_mean:.3f} on the same seeds; paired effect **{effect:+.3f}**" if effect is not None else "")
                + f"\n- cost: {recipe.cost:.1f} student fits per seed\n\n"
                f"| seed | this | parent |\n|---|---|---|\n{per_seed}\n\n"
                "Reproduce: render the recipe below with `w2slab.researchers.recipes.Recipe(**recipe).render()` and run "
                "`w2slab predict --kit KIT -m recipe.py`.\n\n"
                f"```json\n{json.dumps(recipe.to_dict(), sort_keys=True)}\n```\n")
        metrics = {"pgr": round(mean, 4), "parent_pgr": None if parent_mean is None else round(parent_mean, 4),
                   "effect": None if effect is None else round(effect, 4), "n_seeds": len(node["results"]),
                   "seeds": [int(s) for s in node["results"]], "per_seed": dict(node["results"]), "recipe_key": recipe.key,
                   "censored": sorted(cens), "bounds": dict(node.get("bounds") or {}), "lcb": round(self.lcb(node), 4),
                   "parent_key": parent["key"] if parent else None, "block": action.block, "cost": recipe.cost}
        node["post_id"] = self.post(kind, title, body, metrics)
        if action.kind == "replicate" and action.extra.get("post"):
            self.react(action.extra["post"], node)
        return effect

    def react(self, post_id: int, node: dict[str, Any]) -> None:
        reported, mine = node.get("reported_pgr"), self.mean(node)
        try:
            if reported is None or mine >= float(reported) - 0.1:
                self.tr.tool_call("grader.vote", {"post_id": post_id, "value": 1})
                self.tr.tool_result("grader.vote", self.client.vote(post_id, 1))
            else:
                text = f"Did not replicate: I measured dev PGR {mine:.2f} on seeds {list(node['results'])} (reported {reported})."
                self.tr.tool_call("grader.comment", {"post_id": post_id, "body": text})
                self.tr.tool_result("grader.comment", self.client.comment(post_id, text))
        except GraderError as e:
            self.tr.tool_result("grader.react", {"error": str(e)})

    # ------------------------------------------------------------------ experiments
    def recipe_file(self, recipe: Recipe) -> Path:
        path = self.ws / "recipes" / f"recipe_{recipe.key}.py"
        if not path.is_file():
            path.write_text(recipe.render(note=f"Written by {self.cfg.name} (offline researcher)."))
        return path

    def run_predict(self, method_file: Path, seeds: list[int], out: Path, wall: float | None = None) -> dict[str, Any]:
        argv = self.cfg.predict_argv(method_file, seeds, out)
        out.unlink(missing_ok=True)
        self.tr.tool_call("sandbox.run", {"argv": argv, "sandboxed": self.cfg.sandbox, "wall_seconds": wall})
        res = self.warm.run(self.cfg.predict_args(method_file, seeds, out), wall) if self.warm else None
        warm = res is not None
        if res is None:
            res = self.cfg.run(argv, wall_seconds=wall)
        result = {"returncode": res.returncode, "stdout": res.stdout, "stderr": res.stderr, "timed_out": res.timed_out,
                  "killed_for_memory": res.killed_for_memory, "wall_seconds": round(res.wall_seconds_used, 2),
                  "sandboxed": res.sandboxed, "warm": warm}
        self.tr.tool_result("sandbox.run", result)
        if not res.ok or not out.is_file():
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise ExperimentFailed(f"exit {res.returncode}{' (timed out)' if res.timed_out else ''}: " + " / ".join(tail))
        data = json.loads(out.read_text())
        data["seconds"] = res.wall_seconds_used
        return data

    def evaluate(self, predictions: list[float], seed: int) -> dict[str, Any]:
        while True:
            self.tr.tool_call("grader.evaluate", {"testbed": self.cfg.testbed, "seed": seed, "predictions": predictions})
            try:
                res = self.client.evaluate(self.cfg.testbed, predictions, seed)
            except GraderError as e:
                self.tr.tool_result("grader.evaluate", {"error": str(e), "status": e.status})
                if e.status == 429 and e.retry_after and self.cfg.stop_reason(self.usage, e.retry_after + self.final_reserve()) is None:
                    self.say(f"hourly evaluation budget used up; waiting {e.retry_after:.0f} s")
                    self._sleep(e.retry_after)
                    continue
                raise
            self.usage.grader_queries += 1
            self.usage.save()
            self.tr.tool_result("grader.evaluate", res)
            return res

    # answers already paid for: a new vector that (nearly) repeats one gets the same score without a
    # query (the grader would answer it with the earlier answer anyway, and near-repeats look like probing)
    def dup_radius(self) -> int:
        return max(3, math.ceil(0.005 * int(self.kit.meta.get("n_test", 0))))

    def duplicate_of(self, seed: int, preds: list[float]) -> dict[str, Any] | None:
        bits = np.asarray(preds) > 0.5
        for fp in self.nb.data.setdefault("fingerprints", {}).get(str(seed), []):
            other = np.unpackbits(np.frombuffer(bytes.fromhex(fp["bits"]), dtype=np.uint8))[: len(bits)].astype(bool)
            if len(other) == len(bits) and int((other != bits).sum()) <= self.dup_radius():
                return fp
        return None

    def remember(self, seed: int, preds: list[float], key: str, score: float, acc: Any, censored: bool = False,
                 bound: float | None = None) -> None:
        bits = np.packbits(np.asarray(preds) > 0.5).tobytes().hex()
        self.nb.data.setdefault("fingerprints", {}).setdefault(str(seed), []).append(
            {"bits": bits, "key": key, "score": score, "acc": acc, "censored": censored, "bound": bound})

    def _sleep(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end and not self.cfg.stop_file.exists():
            time.sleep(min(1.0, end - time.time()))

    def experiment(self, action: Action) -> None:
        recipe = action.recipe
        if self.cfg.budgets.grader_queries is not None:
            left = self.cfg.budgets.grader_queries - self.usage.grader_queries
            action.seeds = action.seeds[: max(1, left)]
        node = self.nb.node(recipe, parent=action.parent, block=action.block, origin=action.origin)
        n = len(self.nb.data["experiments"]) + 1
        self.say(f"experiment {n}: {action.why}", action=action.kind, recipe=recipe.to_dict(), seeds=action.seeds)
        entry: dict[str, Any] = {"n": n, "session": self.cfg.session, "kind": action.kind, "key": recipe.key, "seeds": action.seeds,
                                 "parent": action.parent, "block": action.block, "started": time.time(), "ok": False}
        path = self.recipe_file(recipe)
        out = self.ws / "out" / f"{recipe.key}_s{'-'.join(map(str, action.seeds))}.json"
        self.usage.experiments += 1
        self.usage.save()
        try:
            data = self.run_predict(path, action.seeds, out)
        except ExperimentFailed as e:
            entry.update(error=str(e), seconds=time.time() - entry["started"])
            node["failed"] = str(e)
            self.nb.data["experiments"].append(entry)
            self.nb.save()
            self.say(f"experiment {n} failed: {e}")
            return
        self.learn_timing(recipe, len(action.seeds), data["seconds"])
        scores = {}
        for seed in action.seeds:
            preds = data["predictions"][str(seed)]
            dup = self.duplicate_of(seed, preds)
            if dup is not None:  # (nearly) the same answers as an evaluated vector: no new query, same score
                score, acc, censored = dup["score"], dup.get("acc"), bool(dup.get("censored"))
                bound = dup.get("bound")
                entry.setdefault("reused", {})[str(seed)] = dup["key"]
                self.say(f"seed {seed}: predictions within {self.dup_radius()} rows of those of {dup['key']}; "
                         "reusing its score instead of asking the grader again")
            else:
                res = self.evaluate(preds, seed)
                score = res.get("pgr") if res.get("pgr") is not None else res.get("transfer_acc")
                acc = res.get("transfer_acc")
                censored = res.get("improved") is False  # the grader's Ladder: not better than my best by its margin
                bound = None
                if censored:
                    margin = res.get("ladder_pgr") if res.get("pgr") is not None else res.get("ladder")
                    bound = float(score) + float(margin or 0.0)  # the truth is below the best + the margin
                    score -= float(margin or 0.0)
                    acc = None
                    entry.setdefault("censored", []).append(seed)
                    self.say(f"seed {seed}: the grader's Ladder says not better than my best on this seed by its "
                             f"margin; scoring it a margin below that best ({score:.3f})")
                self.remember(seed, preds, recipe.key, float(score), acc, censored, bound)
            node["results"][str(seed)] = float(score)
            if censored:
                node.setdefault("censored", []).append(str(seed))
                if bound is not None:
                    node.setdefault("bounds", {})[str(seed)] = bound
            node["accs"][str(seed)] = acc
            scores[str(seed)] = score
            self.nb.save()
        entry.update(ok=True, pgr=scores, seconds=round(time.time() - entry["started"], 1),
                     notes=data.get("notes"), file_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        parent = self.nb.nodes.get(action.parent) if action.parent else None
        if action.kind in ("try", "replicate", "confirm"):
            entry["effect"] = self.post_finding(node, parent, action)
        self.nb.data["experiments"].append(entry)
        best = self.best()
        self.usage.best_dev_pgr = round(self.mean(best), 4) if best else None
        self.usage.save()
        self.nb.save()
        eff = entry.get("effect")
        self.say(f"experiment {n} done: dev PGR {scores}" + (f", effect {eff:+.3f} vs parent" if eff is not None else "")
                 + (f"; best so far {best['describe']} ({self.mean(best):.3f}, n={len(best['results'])})" if best else ""))

    # ------------------------------------------------------------------ the final submission
    def finish(self, reason: str, tries: int = FINALISTS + 2) -> None:
        """Submit the finalists (:meth:`candidates`), best lower bound first. The grader seals the
        one with the best board accuracy (this researcher makes no pick), so the choice among them
        is made on rows none of them was selected on, which shrinks the winner's curse of picking
        the best of many recipes on the same dev rows. A candidate the grader refuses as a
        near-duplicate of another submission is replaced by the next family's best (at most
        ``tries`` runs in all); a finalist whose run would end past the deadline's grace is skipped;
        after a restart, candidates already submitted are not run again."""
        ranked = self.ranked()
        if not ranked:
            self.say(f"stopping ({reason}) with no evaluated recipe: nothing to submit")
            return
        def this_session(kind: str) -> set[str]:
            return {f.get("recipe") for f in self.nb.data.get(kind) or [] if f.get("session", "") == self.cfg.session}

        done, refused = this_session("finals"), this_session("refused")
        if done or refused:
            self.say(f"resuming the final submissions: {len(done)} finalist(s) submitted, {len(refused)} refused")
        families, submitted, runs = set(), 0, 0
        for node in ranked:
            fam = Recipe.from_dict(node["recipe"]).family
            if fam in families or node.get("failed") or node["key"] in refused:
                continue
            families.add(fam)
            if node["key"] in done:
                submitted += 1
                continue
            if submitted >= FINALISTS or runs >= tries:
                break
            need = self.estimate(Recipe.from_dict(node["recipe"]), len(self.submit_seeds))
            if runs and self.cfg.deadline is not None and time.time() + need > self.cfg.deadline + 60:
                self.say(f"no time left for the finalist {node['describe']} (about {need:.0f} s on the server's seeds)")
                continue  # a cheaper finalist of another family may still fit
            runs += 1
            outcome = self.submit_recipe(node, reason, "best" if not submitted else f"candidate {submitted + 1}")
            if outcome == "refused":
                families.discard(fam)  # the family's next recipe may still differ enough
            elif outcome == "submitted":
                submitted += 1

    def submit_recipe(self, best: dict[str, Any], reason: str, rank: str = "best") -> str:
        """Run ``best``'s recipe on the server's seeds and submit it: "submitted", "refused" (a
        near-duplicate) or "failed"."""
        recipe = Recipe.from_dict(best["recipe"])
        self.say(f"stopping ({reason}); submitting my {rank} recipe {recipe.describe()} "
                 f"(dev PGR {self.dev_text(best)})")
        snap = self.ws / "snapshot"
        shutil.rmtree(snap, ignore_errors=True)
        snap.mkdir()
        source = self.recipe_file(recipe)
        method_file = snap / source.name
        shutil.copyfile(source, method_file)  # byte for byte the file that was evaluated
        sha_file = hashlib.sha256(method_file.read_bytes()).hexdigest()
        (snap / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1, sort_keys=True) + "\n")
        (snap / "NOTES.md").write_text(self.evidence(best, sha_file))
        wall = None
        if self.cfg.deadline is not None:
            wall = max(60.0, min(self.cfg.experiment_wall_seconds, self.cfg.deadline + 90 - time.time()))
        try:
            data = self.run_predict(method_file, self.submit_seeds, self.ws / "out" / "final.json", wall)
        except ExperimentFailed as e:
            self.nb.data["final"] = {"error": str(e), "recipe": recipe.key}
            self.nb.save()
            self.say(f"the final run failed: {e}")
            return "failed"
        preds = {str(s): data["predictions"][str(s)] for s in self.submit_seeds}
        note = f"{self.cfg.name}: {recipe.describe()} (dev PGR {self.dev_text(best)})"[:500]
        self.tr.tool_call("grader.upload_snapshot", {"folder": str(snap), "note": note})
        info = self.client.upload_snapshot(snap, note=note)
        self.tr.tool_result("grader.upload_snapshot", info)
        method_name = f"{self.cfg.name}: {recipe.describe()}"[:200]
        self.tr.tool_call("grader.submit", {"testbed": self.cfg.testbed, "method_name": method_name,
                                            "snapshot_sha256": info["sha256"], "predictions": preds})
        try:
            sub = self.client.submit(self.cfg.testbed, method_name, info["sha256"], preds)
        except GraderError as e:
            if e.status != 409:
                raise
            # the grader refuses near-duplicates of an earlier submission (label probing through
            # the final half): the earlier submission stands as this researcher's result
            self.tr.tool_result("grader.submit", {"error": e.message})
            refusal = {"refused": e.message, "recipe": recipe.key, "session": self.cfg.session}
            self.nb.data.setdefault("refused", []).append(refusal)
            if not self.submitted():  # no submission of this session yet: the earlier one stands
                previous = (self.nb.data.get("finals") or [None])[-1]
                self.usage.final = dict(previous, resubmission_refused=e.message) if previous else None
                self.nb.data["final"] = refusal
            self.nb.save()
            self.usage.save()
            self.say(f"the grader refused the submission as a near-duplicate: {e.message}")
            return "refused"
        self.tr.tool_result("grader.submit", sub)
        self.usage.submissions += 1
        entry = {"submission_id": sub["id"], "pgr": sub["pgr"], "pgr_ci": sub["pgr_ci"], "recipe": recipe.key,
                 "method_name": method_name, "snapshot": info["sha256"], "file_sha256": sha_file,
                 "dev_pgr": round(self.mean(best), 4), "dev_lcb": round(self.lcb(best), 4),
                 "dev_seeds": list(best["results"]), "dev_censored": sorted(best.get("censored", [])),
                 "board_improved": sub.get("improved")}
        # the session's first submission heads usage.final; every finalist is listed under it
        head = (self.usage.final or {}) if self.submitted() else entry
        self.usage.final = dict(head, candidates=[*head.get("candidates", []), entry])
        self.nb.data["final"] = dict(entry, reason=reason, session=self.cfg.session)
        self.nb.data.setdefault("finals", []).append(self.nb.data["final"])
        self.nb.save()
        self.usage.save()
        root = self.nb.nodes.get(Recipe().key)
        vs = f"; naive recipe on dev: {self.mean(root):.3f}" if root and root["results"] else ""
        self.post("result", f"[{self.cfg.direction_name or 'offline'}] submitted {recipe.describe()}: final PGR {sub['pgr']}"[:300],
                  f"Final submission #{sub['id']} on the server's seeds {self.submit_seeds}: PGR {sub['pgr']} "
                  f"(95% CI {sub['pgr_ci']}), dev PGR {self.dev_text(best)}{vs}.\n\n"
                  + self.evidence(best, sha_file),
                  {"pgr": sub["pgr"], "dev_pgr": round(self.mean(best), 4), "recipe_key": recipe.key, "final": True},
                  submission_ids=[sub["id"]], snapshot_shas=[info["sha256"]])
        return "submitted"

    def evidence(self, best: dict[str, Any], sha_file: str) -> str:
        chain, node = [], best
        while node is not None and len(chain) < 20:
            chain.append(node)
            node = self.nb.nodes.get(node["parent"]) if node.get("parent") else None
        lines = [f"# {self.cfg.name}: recipe {best['key']}", "", f"Direction: {self.cfg.direction}", "",
                 f"Method file sha256: `{sha_file}`", "", "Lineage (dev PGR mean over the seeds evaluated; a seed the Ladder censored counts at an imputed value below its bound):", ""]
        for n in chain:
            lines.append(f"- `{n['key']}` {n['describe']}: {self.dev_text(n)}, seeds {list(n['results'])}"
                         + (f", censored {sorted(n['censored'])}" if n.get("censored") else "") + f" ({n['origin']})")
        lines += ["", "```json", json.dumps(best["recipe"], sort_keys=True), "```", ""]
        return "\n".join(lines)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        self.usage.status, self.usage.stop_reason = "running", None
        self.usage.pid = os.getpid()
        self.sync_usage()
        self.usage.save()
        self.nb.save()
        if self.nb.resumed:
            self.say(f"resuming from my notebook after a restart ({len(self.nb.data['experiments'])} experiments so far)")
            self.tr.event("resumed", experiments=len(self.nb.data["experiments"]), restarts=self.nb.data["restarts"])
        else:
            self.say(f"starting; my direction: {self.cfg.direction}")
        try:
            return self._run()
        finally:
            if self.warm is not None:
                self.warm.close()

    def _run(self) -> int:
        reason = None
        while True:
            reason = self.stop_reason()
            if reason:
                break
            if self.submitted():
                reason = "already submitted"
                break
            if self.nb.data["experiments"]:
                self.read_forum()  # one GET: others' results become candidates, negatives are avoided
            action = self.choose()
            if action is None:
                reason = "search space exhausted"
                break
            reason = self.stop_reason(action)
            if reason:
                break
            try:
                self.experiment(action)
            except GraderError as e:
                if e.status == 429:
                    reason = f"grader budget: {e.message}"
                    break
                raise
        self.usage.status, self.usage.stop_reason = "finishing", reason
        self.usage.save()
        self.tr.event("stop", reason=reason)
        self.finish(reason or "done")
        self.usage.status = "done"
        self.usage.save()
        self.nb.save()
        self.client.close()
        return 0


class ExperimentFailed(RuntimeError):
    pass


def run_offline_researcher(config: ResearcherConfig) -> int:
    """Entry point used by the launcher's worker processes."""
    return OfflineResearcher(config).run()
