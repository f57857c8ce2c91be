"""What the launcher prepares before researchers start: the label-free kit, the shared
(read-only) embeddings of the kit's texts, and the label paths their sandboxes must mask."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from w2slab.researchers.contract import PACKAGE_DIR
from w2slab.researchers.sandbox import label_paths, python_binds


def parse_testbed_ref(ref: str) -> tuple[str, str]:
    """``NAME=FOLDER`` / name / folder -> (public name on the grader, data reference)."""
    from w2slab.grader.scoring import public_name  # heavy (the scorer's engine imports): only when a run starts

    alias, eq, path = ref.partition("=")
    if eq:
        return alias, path
    return public_name(ref), ref


def export_kit_for(exp: Any, seeds: list[int], dest: Path) -> Path:
    """The kit (reused when one with the same seeds and models is already there)."""
    from w2slab.engine.kit import export_kit  # heavy (torch): the launcher's set-up only

    meta_path = dest / "kit.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if (sorted(meta.get("seeds", [])) == sorted(seeds) and meta.get("strong") == exp.strong.to_dict()
                and meta.get("weak") == exp.weak.to_dict()):
            return dest
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_kit(exp, seeds, tmp)
    tmp.replace(dest)
    return dest


def build_shared_embeddings(exp: Any, dest: Path) -> Path | None:
    """A read-only copy of the operator's embedding cache restricted to the kit's texts
    (train_unlabel and test, the strong encoder): sandboxes read it, nobody re-encodes."""
    # heavy (torch, the encoders): the launcher's set-up only
    from w2slab.models.encoders import EmbeddingCache
    from w2slab.models.probe import row_texts
    from w2slab.testbeds import load_testbed

    if exp.strong.kind != "probe":
        return None
    data = load_testbed(exp.testbed)
    texts: list[str] = []
    for split in (data.train_unlabel, data.test):
        left, right = row_texts(split)
        texts += left + right
    texts = list(dict.fromkeys(texts))
    source = EmbeddingCache(exp.strong.model)
    vectors = source.encode(texts)  # from the cache, encoding what is missing
    source.checkpoint()
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / source.path.name
    tmp = dest / (source.path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as db:
        db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, dim INTEGER, data BLOB)")
        db.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?, ?)",
                       [(hashlib.sha256(t.encode("utf-8")).hexdigest(), int(v.shape[0]), v.astype("float32").tobytes())
                        for t, v in zip(texts, vectors, strict=True)])
    db.close()
    tmp.replace(final)
    return dest


def sandbox_masks(testbed_folder: Path | None) -> list[str]:
    """Label-bearing paths that lie inside what the sandbox binds: hidden under empty tmpfs."""
    masks = [str(p) for p in label_paths()]
    if testbed_folder is not None:
        folder = testbed_folder.resolve()
        for bound in python_binds(PACKAGE_DIR):
            if folder == Path(bound) or Path(bound) in folder.parents:
                masks.append(str(folder))
                break
    return list(dict.fromkeys(masks))
