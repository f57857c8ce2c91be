"""Stored predictions: a submission's per-seed P(class 1) arrays, gzip-compressed JSON rounded to
5 decimals, as kept in ``SubmissionCheck.predictions`` for the audit and the sealed score."""

from __future__ import annotations

import gzip
import json

import numpy as np


def pack_predictions(preds: dict[int, np.ndarray]) -> bytes:
    return gzip.compress(json.dumps({str(s): [round(float(x), 5) for x in v] for s, v in preds.items()}).encode())


def unpack_predictions(data: bytes) -> dict[int, np.ndarray]:
    return {int(s): np.asarray(v, dtype=np.float64) for s, v in json.loads(gzip.decompress(data)).items()}
