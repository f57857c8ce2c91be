"""Testbeds registered by name: a loader plus the weak and strong models that suit it.

``get_testbed(name_or_path)`` accepts a registered name or a folder in the reference
format (``train_label.jsonl``, ``train_unlabel.jsonl``, ``test.jsonl``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from w2slab.testbeds.format import SPLITS, TestbedData, TestbedError, detect_kind, load_folder

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_WEAK = "probe:model=bow,head=linear,epochs=40"
DEFAULT_STRONG = "probe:model=minilm-l6,head=mlp,epochs=30"
CORRECTNESS_WEAK = "probe:model=glove-50,head=mlp,epochs=40"  # relates a claim to its text (a linear bag of words cannot)


@dataclass(frozen=True)
class TestbedSpec:
    __test__ = False

    name: str
    loader: Callable[[], TestbedData]
    weak: str = DEFAULT_WEAK
    strong: str = DEFAULT_STRONG
    description: str = ""
    folder: Path | None = None
    tags: tuple[str, ...] = field(default=())


REGISTRY: dict[str, TestbedSpec] = {}


def register_testbed(spec: TestbedSpec) -> TestbedSpec:
    REGISTRY[spec.name] = spec
    return spec


def register_folder(name: str, folder: Path, **kwargs) -> TestbedSpec:
    return register_testbed(TestbedSpec(name, lambda: load_folder(folder, name), folder=folder, **kwargs))


def get_testbed(name_or_path: str) -> TestbedSpec:
    """The registered testbed of that name, or a reference-format folder."""
    if name_or_path in REGISTRY:
        return REGISTRY[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "train_label.jsonl").exists():
            raise TestbedError(f"{path}: not a testbed folder (no train_label.jsonl)")
        weak, strong = folder_models(path)
        return TestbedSpec(str(path.resolve()), lambda: load_folder(path, path.name), weak=weak, strong=strong,
                           folder=path.resolve())
    known = ", ".join(sorted(REGISTRY)) or "none"
    raise TestbedError(f"unknown testbed '{name_or_path}': not a registered name ({known}) nor a folder")


def folder_models(folder: Path) -> tuple[str, str]:
    """The weak and strong model of a reference-format folder: ``"weak"`` / ``"strong"`` of its
    meta.json when given, else the defaults for its kind (correctness rows get a weak model that
    can relate the claim to the text)."""
    meta_path = folder / "meta.json"
    meta: dict = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as e:
            raise TestbedError(f"{meta_path}: not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise TestbedError(f"{meta_path}: must be a JSON object")
    kind = meta.get("kind")
    if kind is None:
        with (folder / "train_label.jsonl").open("rb") as f:
            first = next((line for line in f if line.strip()), b"")
        try:
            row = json.loads(first.decode("utf-8-sig"))
            kind = detect_kind(row) if isinstance(row, dict) else None
        except (ValueError, UnicodeDecodeError):
            kind = None  # load_folder reports the broken line
    weak = meta.get("weak") or (CORRECTNESS_WEAK if kind == "correctness" else DEFAULT_WEAK)
    return str(weak), str(meta.get("strong") or DEFAULT_STRONG)


@lru_cache(maxsize=16)
def load_testbed(name_or_path: str) -> TestbedData:
    return get_testbed(name_or_path).loader()


def testbed_fingerprint(name_or_path: str) -> str:
    """sha256 over the split files' bytes: cache keys change when the data does."""
    spec = get_testbed(name_or_path)
    h = hashlib.sha256()
    if spec.folder is None:
        h.update(spec.name.encode())
        return h.hexdigest()
    for s in SPLITS:
        h.update((spec.folder / f"{s}.jsonl").read_bytes())
    return h.hexdigest()


def _register_builtins() -> None:
    if not DATA_DIR.is_dir():
        return
    for folder in sorted(p for p in DATA_DIR.iterdir() if (p / "train_label.jsonl").exists()):
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
        register_folder(
            folder.name,
            folder,
            weak=meta.get("weak", DEFAULT_WEAK),
            strong=meta.get("strong", DEFAULT_STRONG),
            description=meta.get("description", ""),
            tags=("builtin",),
        )


_register_builtins()
