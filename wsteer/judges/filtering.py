"""Keep only the contrastive pairs a judge confirms (paper §1, the persona-vectors filtering rule).

A D⁺ answer and a D⁻ answer form a pair when they answer the same question under the same system-prompt index with
the same sample index. The pair is kept only if the D⁺ answer shows the trait, the D⁻ answer does not, and both are
coherent; filtering the sides independently would unbalance D⁺ and D⁻ across questions and let the vector pick
up question content instead of the behavior.
"""

from __future__ import annotations

from collections.abc import Sequence

from wsteer.errors import WsteerError
from wsteer.judges.base import Verdict

REASONS = (
    "unmatched_pos",
    "unmatched_neg",
    "pos_unscored",
    "neg_unscored",
    "pos_trait_below_threshold",
    "neg_trait_at_or_above_threshold",
    "pos_incoherent",
    "neg_incoherent",
)


def _pair_key(row: dict) -> tuple:
    return (row["question"], row["system_prompt_index"], row["sample_index"])


def _index(rows: Sequence[dict], side: str) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for i, row in enumerate(rows):
        key = _pair_key(row)
        if key in out:
            raise WsteerError(f"two {side} rows share (question, system_prompt_index, sample_index) = {key!r}")
        out[key] = i
    return out


def pair_failures(pos: Verdict, neg: Verdict, trait_threshold: float, coherence_threshold: float,
                  unscored_means_keep: bool = True) -> list[str]:
    """The reasons a matched pair fails the rule (empty: keep it).

    A missing score fails its check (reported as ``<side>_unscored``, once per side), except when all four
    scores are missing and ``unscored_means_keep``: that is `NoneJudge`, which means "keep everything". For a
    judge that does score, four missing scores are four failures (an endpoint whose replies cannot be parsed
    must not let every pair through).
    """
    scores = (pos.trait, pos.coherence, neg.trait, neg.coherence)
    if unscored_means_keep and all(s is None for s in scores):
        return []
    reasons = []
    for side, v in (("pos", pos), ("neg", neg)):
        if v.trait is None or v.coherence is None:
            reasons.append(f"{side}_unscored")
    if pos.trait is not None and pos.trait < trait_threshold:
        reasons.append("pos_trait_below_threshold")
    if neg.trait is not None and neg.trait >= trait_threshold:
        reasons.append("neg_trait_at_or_above_threshold")
    if pos.coherence is not None and pos.coherence < coherence_threshold:
        reasons.append("pos_incoherent")
    if neg.coherence is not None and neg.coherence < coherence_threshold:
        reasons.append("neg_incoherent")
    return reasons


def filter_pairs(
    pos_rows: Sequence[dict],
    neg_rows: Sequence[dict],
    pos_verdicts: Sequence[Verdict],
    neg_verdicts: Sequence[Verdict],
    trait_threshold: float = 50,
    coherence_threshold: float = 50,
    unscored_means_keep: bool = True,
) -> tuple[list[int], list[int], dict]:
    """Apply the persona-vectors rule to matched D⁺/D⁻ pairs.

    Keeps a pair when trait(pos) ≥ ``trait_threshold``, trait(neg) < ``trait_threshold`` and both coherence
    scores ≥ ``coherence_threshold``. Rows with no counterpart on the other side are dropped.

    Args:
        pos_rows: D⁺ rows with ``question``, ``system_prompt_index`` and ``sample_index``.
        neg_rows: D⁻ rows, same fields.
        pos_verdicts: One verdict per row of ``pos_rows``, same order.
        neg_verdicts: One verdict per row of ``neg_rows``, same order.
        trait_threshold: Minimum trait score for D⁺; D⁻ must score strictly below it.
        coherence_threshold: Minimum coherence score for both answers.
        unscored_means_keep: Read a pair with no scores at all as "keep" (only for a judge that scores nothing).

    Returns:
        ``(kept_pos, kept_neg, stats)``: ascending indices into ``pos_rows`` and ``neg_rows`` (a kept pair
        contributes one index to each), and ``{"raw": {"pos", "neg"}, "kept": {"pos", "neg"},
        "dropped_reasons": {...}}``. ``unmatched_*`` count rows; every other reason counts pairs, and a pair
        failing several checks is counted under each, so reasons can add up to more than the pairs dropped.
    """
    if len(pos_rows) != len(pos_verdicts) or len(neg_rows) != len(neg_verdicts):
        raise ValueError(
            f"need one verdict per row: {len(pos_rows)} pos rows vs {len(pos_verdicts)} verdicts, "
            f"{len(neg_rows)} neg rows vs {len(neg_verdicts)} verdicts"
        )
    pos_index, neg_index = _index(pos_rows, "pos"), _index(neg_rows, "neg")
    reasons = dict.fromkeys(REASONS, 0)
    reasons["unmatched_pos"] = sum(k not in neg_index for k in pos_index)
    reasons["unmatched_neg"] = sum(k not in pos_index for k in neg_index)
    kept_pos, kept_neg = [], []
    for key, i in pos_index.items():
        j = neg_index.get(key)
        if j is None:
            continue
        failures = pair_failures(pos_verdicts[i], neg_verdicts[j], trait_threshold, coherence_threshold,
                                 unscored_means_keep)
        for reason in failures:
            reasons[reason] += 1
        if not failures:
            kept_pos.append(i)
            kept_neg.append(j)
    kept_pos.sort()
    kept_neg.sort()
    stats = {
        "raw": {"pos": len(pos_rows), "neg": len(neg_rows)},
        "kept": {"pos": len(kept_pos), "neg": len(kept_neg)},
        "dropped_reasons": reasons,
    }
    return kept_pos, kept_neg, stats
