"""What the red team's attacks share: the honest method's source (the baseline that the attackers
upload next to their own), the binomial test of recovered labels and the result record. Used by
:mod:`w2slab.integrity.redteam` and :mod:`w2slab.integrity.redteam_audit`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

HONEST = '''
from w2slab.methods import method


@method("honest-naive")
def honest(ctx):
    """Train the student on the weak teacher's hard labels."""
    return ctx.new_student().fit(ctx.train, ctx.weak_hard, seed=ctx.seed).predict_proba(ctx.test)
'''


# ---------------------------------------------------------------- statistics


def binom_p(correct: int, n: int, chance: float = 0.5) -> float:
    """One-sided P(X >= correct) for X ~ Binomial(n, chance)."""
    if n <= 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(correct, n, chance, alternative="greater").pvalue)


@dataclass
class AttackResult:
    name: str
    researchers: list[str]
    description: str
    queries: int = 0
    guessed: int = 0  # rows the attacker guessed a label for
    correct: int = 0
    p_value: float = 1.0
    caught: bool = False
    caught_by: list[str] = field(default_factory=list)  # flags or refusals
    expect_caught: bool = True
    notes: str = ""

    @property
    def recovered(self) -> int:
        """Labels recovered beyond chance: correct guesses above the expected half."""
        return max(0, round(self.correct - self.guessed / 2))

    @property
    def ok(self) -> bool:
        return self.p_value >= 0.01 and self.caught == self.expect_caught

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), recovered=self.recovered, ok=self.ok)
