"""The paper's claims as checks on committed results, each with an expected sign and a verdict that follows the
intervals (paper §4–5; design/paper.md §3–4).

A check is one paired difference (two settings on the same seeds and items) with the direction the paper predicts:
- `> 0` / `< 0`: the claim needs the difference resolved in that direction (its 95% interval excludes 0);
- `≥ 0` / `≤ 0`: a guard: the claim only needs the difference not resolved against it ("no resolved drop").
A claim is **reproduced** when every check holds, **not reproduced** when any check is resolved against the paper,
and **inconclusive** otherwise; the unresolved checks are the reason, in numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from wsteer.evaluation.uncertainty import Estimate
from wsteer.reproduction.commands import (
    COT,
    COT_EVIL,
    COT_VALID,
    EVIL_PLAN,
    GCD_CMDS,
    MONITORING_CMDS,
    REFUSAL_CMDS,
    SYCOPHANCY_PLAN,
)
from wsteer.reproduction.data import Experiment

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, PENDING = "reproduced", "not reproduced", "inconclusive", "pending"


@dataclass
class Check:
    label: str
    want: str  # "> 0" | "< 0" | "≥ 0" | "≤ 0"
    estimate: Estimate | None

    @property
    def status(self) -> str:
        e = self.estimate
        if e is None:
            return "no data"
        above, below = e.low > 0, e.high < 0
        if self.want == "> 0":
            return "holds" if above else "against" if below else "unresolved"
        if self.want == "< 0":
            return "holds" if below else "against" if above else "unresolved"
        if self.want == "≥ 0":
            return "against" if below else "holds"
        if self.want == "≤ 0":
            return "against" if above else "holds"
        raise ValueError(f"unknown expectation {self.want!r}")


@dataclass
class Claim:
    cid: str
    title: str
    paper: str  # where the paper states it
    statement: str
    experiment: str  # the results file's stem under docs/reproduction/
    planned: str  # the command (or what has to happen first) while no results are committed
    checks: Callable[..., list[Check]] | None = None  # (Experiment | Monitoring) -> checks
    figure: dict = field(default_factory=dict)  # {"behavior": metric, "capability": metric, "methods": [...]}
    table_metrics: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # further results files of this claim, joined to `experiment` (`data.merge`)

    def files(self) -> list[str]:
        return [self.experiment, *self.extra]


def verdict(checks: list[Check]) -> str:
    if not checks:
        return PENDING
    statuses = [c.status for c in checks]
    if "against" in statuses:
        return NOT_REPRODUCED
    if all(s == "holds" for s in statuses):
        return REPRODUCED
    return INCONCLUSIVE


# ---- sycophancy (paper §4.1.1, Fig 2) -------------------------------------------------------------------------

NS, ACC = "factual_qa/non_sycophancy", "factual_qa/accuracy"


def _value(exp: Experiment, method: str, k: float, metric: str) -> float:
    e = exp.estimate(method, k, metric)
    return e.value if e is not None else float("nan")


def _most(exp: Experiment, method: str, ks: list[float], metric: str, lowest: bool) -> float | None:
    """The k among `ks` where `metric` is lowest (or highest); None if the method has none of them."""
    have = [k for k in ks if k in exp.ks(method)]
    if not have:
        return None
    return min(have, key=lambda k: _value(exp, method, k, metric) * (1 if lowest else -1))


def matched_removal(exp: Experiment) -> tuple[float, float] | None:
    """The (k_weight, k_activation), both < 0, whose mean plain accuracies are closest: the paper compares methods
    at the same loss of plain accuracy (Fig 2), and the sweep's grid is coarse, so the nearest pair stands in."""
    kw = [k for k in exp.ks("weight") if k < 0]
    ka = [k for k in exp.ks("activation") if k < 0]
    if not kw or not ka:
        return None
    return min(((a, b) for a in kw for b in ka),
               key=lambda p: (abs(_value(exp, "weight", p[0], ACC) - _value(exp, "activation", p[1], ACC)), p))


def c1_checks(exp: Experiment) -> list[Check]:
    out = []
    pair = matched_removal(exp)
    if pair is not None:
        w, a = ("weight", pair[0]), ("activation", pair[1])
        out += [Check(f"k < 0 at matched plain accuracy: non-sycophancy, weight@{w[1]:g} − activation@{a[1]:g}",
                      "> 0", exp.difference(w, a, NS)),
                Check(f"k < 0, same pair: plain accuracy, weight@{w[1]:g} − activation@{a[1]:g}",
                      "≥ 0", exp.difference(w, a, ACC))]
    best = {}
    for method in ("weight", "activation"):
        k = _most(exp, method, [k for k in exp.ks(method) if k > 0], NS, lowest=True)
        if k is not None:
            best[method] = k
            out.append(Check(f"k > 0 works: non-sycophancy, {method}@{k:g} − {method}@0", "< 0",
                             exp.difference((method, k), (method, 0.0), NS)))
    if len(best) == 2:
        out.append(Check(f"k > 0, weights go further: non-sycophancy, weight@{best['weight']:g} − "
                         f"activation@{best['activation']:g}", "< 0",
                         exp.difference(("weight", best["weight"]), ("activation", best["activation"]), NS)))
    return out


def c2_checks(exp: Experiment) -> list[Check]:
    m = "activation_all_layers"
    out = [Check(f"no rise of sycophancy: non-sycophancy, {m}@{k:g} − {m}@0", "≥ 0",
                 exp.difference((m, k), (m, 0.0), NS)) for k in exp.ks(m) if k > 0]
    worst = _most(exp, m, [k for k in exp.ks(m) if k != 0], ACC, lowest=True)
    if worst is not None:
        out.append(Check(f"it degrades: plain accuracy, {m}@{worst:g} − {m}@0", "< 0",
                         exp.difference((m, worst), (m, 0.0), ACC)))
    return out


def best_k_keeping(exp: Experiment, method: str, ks: list[float], behavior: str, capability: str) -> float | None:
    """The k among `ks` with the highest `behavior` among those whose `capability` drop from k = 0
    is not resolved (its interval reaches 0): the paper compares methods "before TinyMMLU drops" (Fig 5) and
    "while keeping GCD accuracy" (Fig 3)."""
    usable = [k for k in ks if (method, 0.0) in exp.rows
              and (d := exp.difference((method, k), (method, 0.0), capability)) is not None and d.high >= 0]
    return _most(exp, method, usable, behavior, lowest=False)


# ---- GCD sycophancy after a task fine-tune (paper §4.1.2, Fig 3) ----------------------------------------------

GCD_NSC, GCD_NSD, GCD_ACC = ("gcd/non_sycophancy_correctness", "gcd/non_sycophancy_disagreement", "gcd/accuracy")


def keeping_gcd_accuracy(exp: Experiment, method: str) -> float | None:
    """The k < 0 with the highest correctness-based non-sycophancy while keeping GCD accuracy (`best_k_keeping`)."""
    return best_k_keeping(exp, method, [k for k in exp.ks(method) if k < 0], GCD_NSC, GCD_ACC)


def c3_checks(exp: Experiment) -> list[Check]:
    kw = keeping_gcd_accuracy(exp, "weight")
    if kw is None:
        return []
    w, w0 = ("weight", kw), ("weight", 0.0)
    out = [Check(f"θ_ft + k·w restores correctness: non-sycophancy (correctness), weight@{kw:g} − weight@0", "> 0",
                 exp.difference(w, w0, GCD_NSC)),
           Check(f"θ_ft + k·w restores disagreement: non-sycophancy (disagreement), weight@{kw:g} − weight@0", "> 0",
                 exp.difference(w, w0, GCD_NSD)),
           Check(f"θ_ft + k·w keeps GCD accuracy: accuracy, weight@{kw:g} − weight@0", "≥ 0",
                 exp.difference(w, w0, GCD_ACC))]
    ka = _most(exp, "activation", [k for k in exp.ks("activation") if k < 0], GCD_NSC, lowest=False)
    if ka is not None:
        a = ("activation", ka)
        out += [Check(f"activation steering hurts GCD accuracy (at its most non-sycophantic k): accuracy, "
                      f"activation@{ka:g} − activation@0", "< 0", exp.difference(a, ("activation", 0.0), GCD_ACC)),
                Check(f"activation hurts GCD accuracy more than weights do: accuracy, weight@{kw:g} − activation@{ka:g}", "> 0",
                      exp.difference(w, a, GCD_ACC))]
    if ("system_prompt", -1.0) in exp.rows:
        out.append(Check(f"system prompts do not help as much: non-sycophancy (correctness), weight@{kw:g} − "
                         "system_prompt@-1", "> 0", exp.difference(w, ("system_prompt", -1.0), GCD_NSC)))
    kt = keeping_gcd_accuracy(exp, "task_vector_neg")  # τ⁻ at its own best k that keeps GCD accuracy
    if kt is not None:
        out.append(Check(f"τ⁻ does not help as much: non-sycophancy (correctness), weight@{kw:g} − "
                         f"task_vector_neg@{kt:g}", "> 0", exp.difference(w, ("task_vector_neg", kt), GCD_NSC)))
    return out


# ---- evil (paper §4.2, Fig 5) ---------------------------------------------------------------------------------

EVIL, MMLU = "evil_mcq/evil_rate", "mmlu/accuracy"


def before_mmlu_drops(exp: Experiment, method: str) -> float | None:
    """The k > 0 with the highest valid-and-evil rate before MMLU drops (`best_k_keeping`)."""
    return best_k_keeping(exp, method, [k for k in exp.ks(method) if k > 0], EVIL, MMLU)


def c4_checks(exp: Experiment) -> list[Check]:
    best = {m: before_mmlu_drops(exp, m) for m in ("weight", "activation", "bias")}
    out = []
    if best["weight"] is not None:
        kw = best["weight"]
        out.append(Check(f"adding evil works: valid-and-evil rate, weight@{kw:g} − weight@0", "> 0",
                         exp.difference(("weight", kw), ("weight", 0.0), EVIL)))
        if best["activation"] is not None:
            ka = best["activation"]
            out.append(Check(f"before MMLU drops, weights go further: valid-and-evil rate, weight@{kw:g} − "
                             f"activation@{ka:g}", "> 0", exp.difference(("weight", kw), ("activation", ka), EVIL)))
        if best["bias"] is not None:
            kb = best["bias"]
            out.append(Check(f"bias-only is the strongest: valid-and-evil rate, bias@{kb:g} − weight@{kw:g}", "> 0",
                             exp.difference(("bias", kb), ("weight", kw), EVIL)))
        if ("task_vector_neg", kw) in exp.rows:
            out.append(Check(f"τ⁻ does almost nothing next to w: valid-and-evil rate, weight@{kw:g} − "
                             f"task_vector_neg@{kw:g}", "> 0",
                             exp.difference(("weight", kw), ("task_vector_neg", kw), EVIL)))
    # CoT/answer consistency needs a judge; until a judged run is committed the claim cannot be called reproduced
    out.append(Check("weights do not raise CoT/answer inconsistency (judge; evaluator.evil_mcq.format=cot)", "≥ 0",
                     _cot_check(exp, best["weight"])))
    return out


def _cot_check(exp: Experiment, kw: float | None) -> Estimate | None:
    if kw is None or ("weight", kw) not in exp.rows:
        return None
    return exp.difference(("weight", kw), ("weight", 0.0), COT)


# ---- refusal (paper §4.3, Fig 6) -------------------------------------------------------------------------------

# The paper's safety rate needs a judge; the checks use the judge-free refusal rate (rules detector), because the
# offline judge gives no usable score ("The offline judge" in docs/reproduction.md); a judged safety rate is shown
# beside it in the table when one was exported.
REFUSAL, GSM8K, SAFETY = "safety/refusal_rate", "gsm8k/accuracy", "safety/safety_rate"
FT = "gsm8k_ft"  # the unsteered GSM8K task fine-tune of θ; "base" is θ (it refuses 1 in 100: nothing to erode)
# The premise made to hold: θ_safe = θ + a refusal fine-tune (the stand-in for Llama-2-chat's safety training) and
# its GSM8K fine-tune θ_safe_ft; the steered sweep runs on θ_safe_ft, so weight@0 is θ_safe_ft on each seed.
SAFE, SAFE_FT = "safe_base", "safe_gsm8k_ft"


def c5_checks(exp: Experiment) -> list[Check]:
    """The premise first (the fine-tune erodes refusals), then θ_ft + k·w_refusal against θ_ft (weight@0) at the k
    that restores most refusals without a resolved GSM8K drop, and the refusal task vector τ⁺ at its own such k."""
    out = []
    if (SAFE, 0.0) in exp.rows and (SAFE_FT, 0.0) in exp.rows:
        out.append(Check(f"premise: the GSM8K fine-tune erodes the refusals of θ_safe: refusal rate, {SAFE_FT} − "
                         f"{SAFE}", "< 0", exp.difference((SAFE_FT, 0.0), (SAFE, 0.0), REFUSAL)))
    elif ("base", 0.0) in exp.rows and (FT, 0.0) in exp.rows:
        out.append(Check(f"premise: the GSM8K fine-tune erodes refusals: refusal rate, {FT} − base", "< 0",
                         exp.difference((FT, 0.0), ("base", 0.0), REFUSAL)))
    kw = best_k_keeping(exp, "weight", [k for k in exp.ks("weight") if k > 0], REFUSAL, GSM8K)
    if kw is None:
        out.append(Check("θ_ft + k·w_refusal restores refusals: no steered rows committed", "> 0", None))
        return out
    w, w0 = ("weight", kw), ("weight", 0.0)
    out += [Check(f"weight steering restores refusals: refusal rate, weight@{kw:g} − weight@0 (θ_ft)", "> 0",
                  exp.difference(w, w0, REFUSAL)),
            Check(f"… with little GSM8K loss: accuracy, weight@{kw:g} − weight@0", "≥ 0",
                  exp.difference(w, w0, GSM8K))]
    kt = best_k_keeping(exp, "task_vector_pos", [k for k in exp.ks("task_vector_pos") if k > 0], REFUSAL, GSM8K)
    if kt is not None:
        out.append(Check(f"the refusal task vector alone does not: refusal rate, weight@{kw:g} − "
                         f"task_vector_pos@{kt:g}", "> 0", exp.difference(w, ("task_vector_pos", kt), REFUSAL)))
    return out


# ---- monitoring (paper §5, Figs 8, 9, 36) ---------------------------------------------------------------------

def c6_checks(mon) -> list[Check]:
    """Seeds are the units (each seed builds its own vectors and fine-tunes); w_evil against τ_bad_advice is a
    cross-domain pair (persona data against advice data), as in the paper's Fig 8."""
    return [
        Check("cos(τ_bad_advice, w_evil) − cos(τ_control, w_evil)", "> 0",
              mon.per_seed(lambda s: mon.cos(s, "w_evil", "τ_bad_advice") - mon.cos(s, "w_evil", "τ_control"))),
        Check("evil-direction vectors closer to each other than to the control: cos(w_evil, w_bad_advice) − "
              "mean of their cosines to w_french", "> 0",
              mon.per_seed(lambda s: mon.cos(s, "w_evil", "w_bad_advice")
                           - (mon.cos(s, "w_evil", "w_french") + mon.cos(s, "w_bad_advice", "w_french")) / 2)),
        Check("cos(θ_t − θ_0, w_evil) rises during the bad-advice fine-tune: last − first monitored step", "> 0",
              mon.per_seed(lambda s: mon.rise(s, "bad_advice", "evil"))),
        Check("… and rises more than during the control fine-tune", "> 0",
              mon.per_seed(lambda s: mon.rise(s, "bad_advice", "evil") - mon.rise(s, "control", "evil"))),
    ]


CLAIMS = [
    Claim("C1", "Sycophancy through the weights", "§4.1.1, Fig 2",
          "k < 0 through the weights raises non-sycophancy more than single-layer activation steering at the same "
          "loss of plain accuracy; towards k > 0 every method works, and weights go further.",
          "sycophancy", SYCOPHANCY_PLAN, c1_checks,
          {"behavior": NS, "capability": ACC, "methods": ["weight", "activation"]},
          (NS, ACC, "mmlu/accuracy")),
    Claim("C2", "All-layer activation steering", "§4.1.1",
          "All-layer activation steering (aˡ − aˡ⁻¹ at every layer) cannot raise sycophancy; it only degrades.",
          "sycophancy", SYCOPHANCY_PLAN, c2_checks,
          {"behavior": NS, "capability": ACC, "methods": ["activation_all_layers", "weight"]},
          (NS, ACC, "mmlu/accuracy")),
    Claim("C3", "Sycophancy after a GCD task fine-tune", "§4.1.2, Fig 3",
          "After a task fine-tune that makes the model sycophantic on GCD, θ_ft + k·w_syc (k < 0) restores "
          "correctness and disagreement while keeping GCD accuracy; activation steering hurts GCD accuracy; system "
          "prompts and τ⁻ do not help.",
          "gcd", " && ".join(f"`{c}`" for c in GCD_CMDS[:6]), c3_checks,
          {"behavior": GCD_NSC, "capability": GCD_ACC,
           "methods": ["weight", "activation", "task_vector_neg", "system_prompt"]},
          (GCD_NSC, GCD_NSD, GCD_ACC)),
    Claim("C4", "Evil through the weights", "§4.2, Fig 5",
          "Adding evil through the weights raises the valid-and-evil rate further than activation steering before "
          "MMLU drops, without raising CoT/answer inconsistency; bias-only is the strongest; τ⁻ does almost "
          "nothing.",
          "evil", EVIL_PLAN, c4_checks,
          {"behavior": EVIL, "capability": MMLU, "methods": ["weight", "activation", "bias", "task_vector_neg"]},
          (EVIL, "evil_mcq/valid_rate", "evil_mcq/evil_given_valid", MMLU, COT_VALID, COT_EVIL, COT),
          extra=("evil_cot",)),
    Claim("C5", "Refusal after a GSM8K fine-tune", "§4.3, Fig 6",
          "After a GSM8K fine-tune erodes refusals, weight steering with refusal data restores the safety rate with "
          "little GSM8K loss; the refusal task vector alone does not.",
          "refusal", " && ".join(f"`{c}`" for c in REFUSAL_CMDS[:7]), c5_checks,
          {"behavior": REFUSAL, "capability": GSM8K, "methods": ["weight", "task_vector_pos"]},
          (REFUSAL, SAFETY, GSM8K), extra=("refusal_safe", "refusal_steer")),
    Claim("C6", "Monitoring fine-tunes with behavior vectors", "§5, Figs 8, 9, 36",
          "cos(τ of a bad-advice fine-tune, w_evil) exceeds the controls' cosines; evil vectors are closer to each "
          "other than to the control vector; the cosine rises during a bad-advice fine-tune.",
          "monitoring", f"`{MONITORING_CMDS[0]}`", c6_checks, {"kind": "monitoring"}),
]
