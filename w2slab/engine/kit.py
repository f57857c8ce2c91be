"""Researcher kits: everything a method needs, with no labels anywhere.

The operator exports a kit (``export_kit``): the researcher-visible rows of
``train_unlabel`` and ``test``, the weak teacher's soft labels per seed and the strong
model's config. A researcher (or its sandbox) runs methods on the kit (``predict``) and
gets test predictions per seed; only the grader can score them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from w2slab.engine.pipeline import Experiment, call_method, weak_artifacts
from w2slab.methods import MethodContext, bind_params, get_method
from w2slab.models.base import BackendConfig
from w2slab.testbeds import load_testbed
from w2slab.testbeds.format import TestbedError, hide_labels, read_jsonl, write_jsonl

KIT_VERSION = 1


def export_kit(exp: Experiment, seeds: Sequence[int], dest: str | Path) -> Path:
    """Write a label-free kit for ``exp`` (weak artifacts computed or taken from the cache)."""
    dest = Path(dest)
    data = load_testbed(exp.testbed)
    for split in ("train_unlabel", "test"):
        write_jsonl(dest / f"{split}.jsonl", [hide_labels(r) for r in data.split(split).rows])
    (dest / "weak").mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        weak = weak_artifacts(exp, seed)
        np.savez(dest / "weak" / f"seed_{seed}.npz", train_probs=weak["train_probs"], test_probs=weak["test_probs"])
    meta = {
        "version": KIT_VERSION,
        "testbed": Path(exp.testbed).name,
        "kind": data.kind,
        "seeds": list(seeds),
        "strong": exp.strong.to_dict(),
        "weak": exp.weak.to_dict(),
        "n_train": len(data.train_unlabel),
        "n_test": len(data.test),
    }
    (dest / "kit.json").write_text(json.dumps(meta, indent=1) + "\n")
    return dest


@dataclass(frozen=True)
class Kit:
    folder: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, folder: str | Path) -> "Kit":
        folder = Path(folder)
        path = folder / "kit.json"
        if not path.is_file():
            raise TestbedError(f"{folder}: not a researcher kit (no kit.json)")
        return cls(folder, json.loads(path.read_text()))

    @property
    def seeds(self) -> list[int]:
        return list(self.meta["seeds"])

    def context(self, seed: int, strong: BackendConfig | None = None) -> MethodContext:
        weak_file = self.folder / "weak" / f"seed_{seed}.npz"
        if not weak_file.is_file():
            raise ValueError(f"the kit has no weak labels for seed {seed} (seeds: {self.seeds})")
        with np.load(weak_file) as weak:
            train_probs, test_probs = weak["train_probs"], weak["test_probs"]
        return MethodContext(
            train=read_jsonl(self.folder / "train_unlabel.jsonl", self.meta["kind"], require_labels=False),
            weak_probs=train_probs,
            test=read_jsonl(self.folder / "test.jsonl", self.meta["kind"], require_labels=False),
            strong=strong or BackendConfig(**self.meta["strong"]),
            seed=seed,
            weak_test_probs=test_probs,
        )


def predict(kit_dir: str | Path, method_ref: str, seeds: Sequence[int], params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a method on a kit; test P(class 1) per seed, in row order (what the grader takes)."""
    kit = Kit.open(kit_dir)
    fn = get_method(method_ref)
    bound = bind_params(fn, dict(params or {}))
    out: dict[str, Any] = {"testbed": kit.meta["testbed"], "method": method_ref, "params": bound, "predictions": {}, "notes": {}}
    for seed in seeds:
        ctx = kit.context(seed)
        probs = call_method(fn, method_ref, ctx, bound)
        out["predictions"][str(seed)] = [round(float(p), 6) for p in probs[:, 1]]
        out["notes"][str(seed)] = ctx.notes
    return out
