"""Choosing the steering strength (and layer) at a stated capability budget.

The paper compares methods "at equal capability" (§4.1.1, Fig 2): a method is better if it moves the behavior
further for the same loss of plain accuracy. A researcher therefore needs, per method, the strongest setting whose
capability cost stays within a budget — the question users of every steering tool ask first ("which layer, which
strength?"). This module holds the decision logic only; `wsteer.recipes.search` feeds it real evaluations.

- A trial is one setting (k, layer) evaluated on a validation split, summarised by two *paired* differences
  against k = 0 on the same items: Δbehavior and Δcapability, each an `Estimate` with its 95% interval.
- The budget admits a trial when the capability drop is at most `max_drop`. With `rule="interval"` (the default)
  the whole 95% interval must stay within the budget, so a drop that this n cannot rule out counts as a drop;
  `rule="point"` trusts the estimate alone.
- The search over |k| is a bisection on admissibility, which assumes the capability cost grows with |k| (it does
  on every model and method we measured; a non-monotone cost only makes the search conservative). Among the
  admissible trials the one that moved the behavior most in the wanted direction is chosen; ties go to the
  smaller |k|.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from wsteer.errors import WsteerError
from wsteer.evaluation.uncertainty import Estimate

RULES = ("interval", "point")
GOALS = ("max", "min")


@dataclass(frozen=True)
class Budget:
    """The capability metric may fall at most `max_drop` below k = 0 (rise, when lower is better)."""

    max_drop: float
    rule: str = "interval"
    higher_is_better: bool = True

    def __post_init__(self):
        if not (isinstance(self.max_drop, (int, float)) and math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise WsteerError(f"search.budget={self.max_drop!r} must be a finite number ≥ 0 (e.g. search.budget=0.05)")
        if self.rule not in RULES:
            raise WsteerError(f"search.rule={self.rule!r}; use one of {', '.join(RULES)}")

    def worst_drop(self, delta: Estimate) -> float:
        """The capability loss the rule holds against the budget: the interval's worst end, or the estimate."""
        if self.higher_is_better:
            return -(delta.low if self.rule == "interval" else delta.value)
        return delta.high if self.rule == "interval" else delta.value

    def admits(self, delta: Estimate | None) -> bool:
        if delta is None or not math.isfinite(delta.value):
            return False  # the capability metric was not measured at this setting: never assume it is fine
        worst = self.worst_drop(delta)
        return math.isfinite(worst) and worst <= self.max_drop + 1e-12


@dataclass(frozen=True)
class Trial:
    k: float
    layer: int | None
    behavior: Estimate | None  # paired Δ(k − 0) of the behavior metric on the validation split
    capability: Estimate | None  # the same for the capability metric
    admissible: bool
    note: str = ""  # why a trial could not be measured (e.g. non-finite logits at this k)

    def gain(self, goal: str) -> float:
        """How far the behavior moved in the wanted direction (NaN when it was not measured)."""
        if self.behavior is None or not math.isfinite(self.behavior.value):
            return math.nan
        return self.behavior.value if goal == "max" else -self.behavior.value


def bisect_k(evaluate: Callable[[float], Trial], sign: int, k_max: float, steps: int, inner: int = 1) -> list[Trial]:
    """Trials along sign·|k|: k_max first (if the budget admits it, larger |k| is not searched), then `steps`
    bisection steps between the largest admissible and the smallest inadmissible |k| (k = 0 is admissible), then
    `inner` points k_max/2^j below the largest admissible |k|: the behavior need not move most at the edge of the
    budget (on SmolLM2-135M non-sycophancy peaks near |k| = 2 and falls back by |k| = 8)."""
    if sign not in (-1, 1):
        raise WsteerError(f"search.sign={sign!r} must be -1 (remove the behavior, k < 0) or 1 (add it, k > 0)")
    if not (math.isfinite(k_max) and k_max > 0):
        raise WsteerError(f"search.k_max={k_max!r} must be a finite number > 0 (e.g. search.k_max=8)")
    if not (isinstance(steps, int) and steps >= 0):
        raise WsteerError(f"search.steps={steps!r} must be a non-negative integer (e.g. search.steps=4)")
    if not (isinstance(inner, int) and inner >= 0):
        raise WsteerError(f"search.inner={inner!r} must be a non-negative integer (e.g. search.inner=1)")
    trials = [evaluate(sign * float(k_max))]
    if trials[0].admissible:
        return trials
    lo, hi = 0.0, float(k_max)
    for _ in range(steps):
        mid = (lo + hi) / 2
        trial = evaluate(sign * mid)
        trials.append(trial)
        lo, hi = (mid, hi) if trial.admissible else (lo, mid)
    tried = {abs(t.k) for t in trials}
    below = [k_max / 2 ** j for j in range(1, 64) if k_max / 2 ** j < lo]
    for k in [k for k in below if k not in tried][:max(0, inner)]:
        trials.append(evaluate(sign * k))
    return trials


def choose(trials: list[Trial], goal: str) -> Trial | None:
    """The admissible trial that moved the behavior most in the `goal` direction; None if no admissible trial
    moved it at all (then the unsteered model, k = 0, is the answer within this budget)."""
    if goal not in GOALS:
        raise WsteerError(f"search.goal={goal!r}; use max (raise the behavior metric) or min (lower it)")
    moved = [t for t in trials if t.admissible and math.isfinite(t.gain(goal)) and t.gain(goal) > 0]
    if not moved:
        return None
    return max(moved, key=lambda t: (t.gain(goal), -abs(t.k)))
