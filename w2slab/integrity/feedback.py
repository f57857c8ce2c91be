"""Hardened dev feedback: what ``POST /api/evaluate`` answers.

Rounding the dev score to 2 decimals alone leaks labels: an attacker moves a vector to a
rounding boundary and then flips one row at a time; each answer says whether that row's
flipped label is right. Two mechanisms stop it:

1. **Keyed noise.** The dev accuracy gets Gaussian noise before rounding, with
   ``sd = dev_noise * sqrt(acc (1 - acc) / n_dev)`` (``dev_noise`` = 1: the dev estimate's own
   sampling error; 0.01-0.02 in accuracy on dev halves of 500-2500 rows; exactly 0 at accuracy 0
   or 1, which tell nothing an attacker does not already know). The draw is deterministic:
   ``HMAC(server secret, testbed, packed bits of the hard predictions on the dev rows)``, so asking
   the same question again gives the same answer (no averaging by repetition), changing rows
   that are not scored gives the same answer too (no fresh noise for free), and the key does not
   contain the researcher, so several researchers asking the same question get the same answer
   (no averaging by coordination).
2. **Answer reuse.** A vector within ``radius`` rows (Hamming distance on the dev rows; default
   ``max(2, 1% of dev rows)``) of a vector that already got a fresh answer (from anyone) gets
   that earlier answer. Single-row (and few-row) flips therefore learn nothing at all, and the
   boundary trick has no boundary to sit on. The error this adds is at most ``radius / n_dev``,
   below the 0.01 rounding.

What remains is statistical: an attacker who spends hundreds of evaluations on random vectors
that differ in many rows can fit a regression (each answer carries a little information about
all rows). The Ladder in :mod:`w2slab.integrity.guard` (answer only improvements on the
researcher's best) stops that, and :mod:`w2slab.integrity.probes` flags the patterns; see README.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from statistics import NormalDist

_NORMAL = NormalDist()


def keyed_normal(secret: bytes, *parts: bytes | str) -> float:
    """A standard normal draw fixed by ``secret`` and ``parts`` (clipped to +-4)."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        mac.update(len(b).to_bytes(8, "big"))
        mac.update(b)
    u = (int.from_bytes(mac.digest()[:8], "big") + 0.5) / 2**64
    return max(-4.0, min(4.0, _NORMAL.inv_cdf(u)))


def noise_sd(acc: float, n: int, scale: float) -> float:
    return 0.0 if n <= 0 or scale <= 0 else scale * math.sqrt(max(0.0, acc * (1 - acc)) / n)


def noisy_accuracy(acc: float, n: int, scale: float, secret: bytes, testbed: str, scored_bits: bytes, purpose: str = "dev") -> float:
    """``acc`` plus keyed noise (see the module docstring), clipped to [0, 1]."""
    z = keyed_normal(secret, purpose, testbed, scored_bits)
    return min(1.0, max(0.0, acc + z * noise_sd(acc, n, scale)))


def default_radius(n_dev: int) -> int:
    return max(2, math.ceil(0.01 * n_dev))
