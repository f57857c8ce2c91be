"""Starting directions for automated researchers, drawn from the weak-to-strong literature.

Each researcher gets one direction as its opening research agenda (researcher ``i`` gets
direction ``i mod N``, so with ``N <= len(directions)`` researchers all start differently).
An LLM researcher reads the paragraph; the offline researcher maps it to priors over the
recipe space by keywords (see :func:`w2slab.researchers.recipes.direction_bias`).

``load_directions(path)`` reads a user file instead: a JSON list (of strings, or of objects
with ``text`` and optional ``name``), or plain text with one direction per paragraph
(paragraphs separated by blank lines; a first line ``# name`` names it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Direction:
    name: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "text": self.text}


BUILTIN: tuple[Direction, ...] = (
    Direction(
        "confidence-reweighting",
        "Re-weight or filter the weak labels by the teacher's confidence. Burns et al. (2023) and "
        "much follow-up work find that the weak teacher is far more accurate on the rows it is sure "
        "about; training the student mostly on those (confidence weights |2p-1|^k, or a confidence "
        "threshold) should cut the label noise the student imitates. Measure how much the student "
        "gains as the weighting sharpens, and where dropping rows starts to cost coverage.",
    ),
    Direction(
        "auxiliary-confidence-loss",
        "Let the student trust itself: the auxiliary confidence loss of Burns et al. (2023) mixes the "
        "weak soft labels with the student's own hardened predictions, with a weight alpha that warms "
        "up during training. It reduces imitation of the teacher's errors when the student's "
        "representation already separates the classes. Explore alpha_max, the warm-up and how the "
        "loss interacts with label sharpening and training length.",
    ),
    Direction(
        "unsupervised-elicitation-consistency",
        "Elicit the strong model's latent knowledge with consistency rather than imitation "
        "(Burns et al. 2022 CCS; Wen et al. 2025 internal coherence). A strong representation should "
        "give similar answers to similar inputs: smooth the weak labels over nearest neighbours in the "
        "student's feature space (label propagation) so isolated teacher mistakes are outvoted by "
        "the consistent structure, then train on the smoothed labels.",
    ),
    Direction(
        "noisy-channel-label-posteriors",
        "Treat the weak labels as a noisy channel over the true labels and estimate posteriors "
        "with EM-style iterations (Dawid-Skene; noisy-label learning, e.g. co-teaching and label "
        "correction): train, use the student's own predictions to revise the targets, retrain. "
        "Self-training rounds that mix the teacher's soft labels with the previous student's "
        "pseudo-labels approximate this; study the number of rounds and the teacher weight.",
    ),
    Direction(
        "distillation-variants",
        "Borrow from knowledge distillation: born-again networks (Furlanello et al. 2018) retrain a "
        "fresh student on its predecessor's outputs, and temperature-scaled or sharpened targets "
        "change what the student imitates (mode-seeking, reverse-KL-like behaviour with sharp "
        "targets versus mean-seeking with soft ones). Compare hard, soft and sharpened weak labels, "
        "and born-again generations of the student.",
    ),
    Direction(
        "simplicity-bias-regularisation",
        "Exploit simplicity bias: a strong student generalises the weak supervisor's intent before "
        "it memorises its mistakes (Arpit et al. 2017 on memorisation; Burns et al. 2023 on early "
        "stopping). Restrict capacity and training length: linear heads, fewer epochs, lower learning "
        "rates and stronger weight decay should keep the student on the simple, correct function.",
    ),
    Direction(
        "data-selection",
        "Select the training data instead of trusting all of it: drop rows on which a first student "
        "and the teacher disagree (small-loss selection from noisy-label learning, as in co-teaching), "
        "or keep only rows above a teacher-confidence threshold. Find which selection keeps the most "
        "correct labels while dropping the most wrong ones, and whether selection composes with "
        "re-weighting.",
    ),
    Direction(
        "ensembles",
        "Average several students (seeds, heads, training lengths): ensembles reduce the variance "
        "of what each student memorises from noisy weak labels (Lakshminarayanan et al. 2017 deep "
        "ensembles; Sang et al. 2024 on ensembles in weak-to-strong learning). Measure gains from "
        "2-3 members and combine ensembling with the best single-student recipe.",
    ),
    Direction(
        "representation-probes",
        "Probe the strong representation directly: a difference-in-means or top principal component "
        "direction of the student's features (Marks and Tegmark 2023 on truth directions; Zou et al. "
        "2023 representation engineering) estimated with the weak labels is a simple, "
        "low-variance classifier. Use the probe to relabel or denoise the weak labels and train the "
        "student on the result.",
    ),
    Direction(
        "hyperparameter-robustness",
        "Before adding machinery, find where the plain pipeline is fragile: learning rate, epochs and "
        "head size change how much of the teacher's noise the student absorbs. Map the sensitivity, "
        "then combine the best hyper-parameters with the strongest idea from the forum.",
    ),
)


def _parse_text(text: str) -> list[Direction]:
    out: list[Direction] = []
    for i, para in enumerate(p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()):
        lines = para.splitlines()
        name = f"direction-{i + 1}"
        if lines[0].lstrip().startswith("#"):
            name = lines[0].lstrip("# ").strip() or name
            lines = lines[1:]
        body = " ".join(line.strip() for line in lines if line.strip())
        if body:
            out.append(Direction(_slug(name), body))
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "direction"


def _parse_json(data: object) -> list[Direction]:
    if not isinstance(data, list):
        raise ValueError("a JSON directions file must hold a list of strings or {name, text} objects")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, str) and item.strip():
            out.append(Direction(f"direction-{i + 1}", item.strip()))
        elif isinstance(item, dict) and str(item.get("text", "")).strip():
            out.append(Direction(_slug(str(item.get("name") or f"direction-{i + 1}")), str(item["text"]).strip()))
        else:
            raise ValueError(f"directions[{i}]: expected a non-empty string or an object with 'text'")
    return out


def load_directions(path: str | Path | None = None) -> list[Direction]:
    """The built-in directions, or those of a user file (JSON list or one per paragraph)."""
    if path is None:
        return list(BUILTIN)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"directions file not found: {path}")
    text = path.read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            found = _parse_json(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    else:
        found = _parse_text(text)
    if not found:
        raise ValueError(f"{path}: no directions found (one per paragraph, or a JSON list)")
    return found


def assign_directions(n: int, directions: list[Direction] | None = None) -> list[Direction]:
    """Researcher ``i`` gets direction ``i mod N``: all different when ``n <= N``."""
    directions = directions or list(BUILTIN)
    return [directions[i % len(directions)] for i in range(n)]
