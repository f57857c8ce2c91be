"""The reference testbed format: loading, validation and the researcher-visible copy.

A testbed is a folder with three JSONL splits:

- ``train_label.jsonl``   ground truth, trains the weak teacher;
- ``train_unlabel.jsonl`` the student's data (its labels train only the ceiling);
- ``test.jsonl``          held by the grader.

Two row kinds exist. *pairwise*: ``{prompt, first, second, label: "A"|"B"}``;
*correctness*: ``{question, choice, label: true|false}``. Extra fields are kept.
Class index ``i`` means ``LABELS[kind][i]``, so probabilities are ``[P(A), P(B)]``
or ``[P(false), P(true)]``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Kind = Literal["pairwise", "correctness"]
SPLITS = ("train_label", "train_unlabel", "test")
LABELS: dict[str, tuple[Any, Any]] = {"pairwise": ("A", "B"), "correctness": (False, True)}
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "pairwise": ("prompt", "first", "second"),
    "correctness": ("question", "choice"),
}
HIDDEN_FIELDS = ("label", "subset", "difficulty")


class TestbedError(ValueError):
    """A user-facing problem with testbed data; the message names the file and line."""

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class Split:
    """Rows of one split. ``labels`` is a 0/1 array, or None where labels are hidden."""

    kind: Kind
    rows: list[dict[str, Any]]
    labels: np.ndarray | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def without_labels(self) -> "Split":
        return Split(self.kind, [hide_labels(r) for r in self.rows], None, self.name)

    def subset(self, index: np.ndarray | list[int]) -> "Split":
        idx = np.asarray(index, dtype=int)
        labels = None if self.labels is None else self.labels[idx]
        return Split(self.kind, [self.rows[i] for i in idx], labels, self.name)


@dataclass(frozen=True)
class TestbedData:
    __test__ = False

    name: str
    kind: Kind
    train_label: Split
    train_unlabel: Split
    test: Split
    meta: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        return getattr(self, name)


def hide_labels(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in HIDDEN_FIELDS}


def detect_kind(row: dict[str, Any]) -> Kind | None:
    if "first" in row and "second" in row:
        return "pairwise"
    if "question" in row and "choice" in row:
        return "correctness"
    return None


def label_index(kind: Kind, value: Any) -> int:
    """Map a label value to its class index; raises ValueError if it is not a valid label."""
    labels = LABELS[kind]
    for i, lab in enumerate(labels):
        if type(value) is type(lab) and value == lab:
            return i
    want = " or ".join(json.dumps(x) for x in labels)
    raise ValueError(f"label must be {want}, got {json.dumps(value)}")


def _missing_fields(row: dict[str, Any], kind: Kind | None) -> str:
    """What a row that is neither kind lacks: the missing fields of the kind it (or its file) looks like."""
    like = kind or max(TEXT_FIELDS, key=lambda k: sum(f in row for f in TEXT_FIELDS[k]))
    missing = [f for f in TEXT_FIELDS[like] if f not in row]
    if kind is None and not any(f in row for f in TEXT_FIELDS[like]):
        return ("row has neither pairwise fields (prompt, first, second) nor correctness fields (question, choice); "
                f"its fields: {', '.join(sorted(row)) or 'none'}")
    names = ", ".join(f"'{f}'" for f in missing)
    return f"missing field{'s' if len(missing) > 1 else ''} {names} ({like} rows have {', '.join(TEXT_FIELDS[like])}, label)"


def read_jsonl(path: Path, kind: Kind | None = None, require_labels: bool = True) -> Split:
    """Read and validate one split; any problem raises TestbedError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise TestbedError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark at the start is fine
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[:start].count(b"\n") + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise TestbedError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[start]:02x} at byte {column} of the line); "
                           "save the file as UTF-8") from None
    rows: list[dict[str, Any]] = []
    labels: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TestbedError(f"{where}: broken JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise TestbedError(f"{where}: each line must be a JSON object")
        row_kind = detect_kind(row)
        if row_kind is None:
            raise TestbedError(f"{where}: {_missing_fields(row, kind)}")
        kind = kind or row_kind
        if row_kind != kind:
            raise TestbedError(f"{where}: {row_kind} row in a {kind} file")
        for name in TEXT_FIELDS[kind]:
            if name not in row:
                raise TestbedError(f"{where}: missing field '{name}'")
            if not isinstance(row[name], str):
                raise TestbedError(f"{where}: field '{name}' must be a string")
        if require_labels:
            if "label" not in row:
                raise TestbedError(f"{where}: missing field 'label'")
            try:
                labels.append(label_index(kind, row["label"]))
            except ValueError as e:
                raise TestbedError(f"{where}: {e}") from None
        rows.append(row)
    if not rows:
        raise TestbedError(f"{path}: empty split (no rows)")
    assert kind is not None
    arr = np.asarray(labels, dtype=np.int64) if require_labels else None
    return Split(kind, rows, arr, path.stem)


def load_folder(folder: str | Path, name: str | None = None) -> TestbedData:
    """Load a testbed folder in the reference format, checking every split."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TestbedError(f"{folder}: testbed folder not found")
    first = read_jsonl(folder / f"{SPLITS[0]}.jsonl")
    splits = {SPLITS[0]: first}
    for s in SPLITS[1:]:
        splits[s] = read_jsonl(folder / f"{s}.jsonl", kind=first.kind)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return TestbedData(name or folder.name, first.kind, meta=meta, **splits)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_researcher_copy(testbed: TestbedData, dest: str | Path) -> Path:
    """Write the copy researchers may see: every split with label, subset, difficulty removed."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    for s in SPLITS:
        write_jsonl(dest / f"{s}.jsonl", [hide_labels(r) for r in testbed.split(s).rows])
    return dest


def write_testbed(testbed: TestbedData, dest: str | Path) -> Path:
    """Write a full (labelled) testbed folder."""
    dest = Path(dest)
    for s in SPLITS:
        write_jsonl(dest / f"{s}.jsonl", testbed.split(s).rows)
    if testbed.meta:
        (dest / "meta.json").write_text(json.dumps(testbed.meta, indent=2) + "\n")
    return dest
