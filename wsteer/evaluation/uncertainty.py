"""Uncertainty for every evaluator metric: item-level standard errors, paired differences, and seeds.

Randomness enters a steering result at two levels (paper §4 compares methods on a sample of questions, with vectors
that depend on the training seed and the sampled D±):
- **items**: every metric is a mean of per-item scores over the items where the score is defined. When every
  item has a score, the standard error is analytic (sample sd / √n) and the 95% interval is Wilson's for 0/1
  scores (it stays inside [0, 1] and does not collapse at 0 or 1) or normal otherwise. When the metric is defined
  on a subset that itself depends on the model (`non_sycophancy` among the plainly-correct questions, §3.1;
  `evil_given_valid` among the valid answers, §3.3) it is a ratio of two random sums, so a seeded bootstrap over
  all items gives both the standard error and a percentile interval.
- **seeds**: a two-level bootstrap (resample the seeds, then the items within each drawn seed) carries both the
  vector's and the items' variance.
Two settings evaluated on the same items (k against k = 0, method A against method B at the same k) are compared
by a paired bootstrap over the shared items, which is far tighter than two independent intervals.

Everything here is numpy over small arrays; it costs milliseconds per metric (bench/uncertainty.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the normal 97.5% quantile
N_BOOT = 1000
SHOWN = "± is one standard error; [a, b] is a 95% interval"


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: float
    low: float
    high: float
    n: int  # items scored (for a seed aggregate: summed over seeds)
    method: str  # analytic-wilson | analytic-normal | bootstrap | two-level bootstrap | paired bootstrap
    n_seeds: int = 1

    def format(self, digits: int = 2) -> str:
        """`0.88 ± 0.05 (n=33)`; with several seeds `(n=33 per seed, 3 seeds)` (n averaged over the seeds)."""
        if self.n_seeds > 1:
            return (f"{self.value:.{digits}f} ± {self.stderr:.{digits}f} "
                    f"(n={round(self.n / self.n_seeds)} per seed, {self.n_seeds} seeds)")
        return f"{self.value:.{digits}f} ± {self.stderr:.{digits}f} (n={self.n})"

    def format_delta(self, digits: int = 2) -> str:
        """`+0.19 [+0.08, +0.30]`, with a star when the interval excludes 0."""
        star = "" if self.low <= 0 <= self.high else " *"
        return f"{self.value:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]{star}"

    @property
    def resolved(self) -> bool:
        """The 95% interval excludes 0 (for a difference: the difference is a finding at this n)."""
        return not (self.low <= 0 <= self.high)


def _arrays(scores: Iterable[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """Values (0 where undefined) and the mask of items whose score is defined and finite."""
    raw = [None if s is None else float(s) for s in scores]
    mask = np.array([s is not None and math.isfinite(s) for s in raw], dtype=bool)
    vals = np.array([s if m else 0.0 for s, m in zip(raw, mask, strict=True)], dtype=np.float64)
    return vals, mask


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(int(seed))


def _replicates(vals: np.ndarray, mask: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The subset mean of each bootstrap resample (rows of `idx`); NaN where a resample has no scored item."""
    num = (vals * mask)[idx].sum(axis=1)
    den = mask[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _percentiles(reps: np.ndarray) -> tuple[float, float, float]:
    reps = reps[np.isfinite(reps)]
    if reps.size < 2:
        return math.nan, math.nan, math.nan
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(reps.std(ddof=1)), float(lo), float(hi)


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion p observed on n items."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate(scores: Sequence[float | None], seed: int = 0, n_boot: int = N_BOOT) -> Estimate | None:
    """Mean of the defined scores with its standard error and 95% interval; None if no item has a score."""
    vals, mask = _arrays(scores)
    n = int(mask.sum())
    if n == 0:
        return None
    mean = float(vals[mask].mean())
    if mask.all():  # a plain mean of per-item scores
        se = float(vals.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        if np.isin(vals, (0.0, 1.0)).all():
            lo, hi = wilson(mean, n)
            return Estimate(mean, se, lo, hi, n, "analytic-wilson")
        return Estimate(mean, se, mean - Z95 * se, mean + Z95 * se, n, "analytic-normal")
    # defined on a model-dependent subset: a ratio estimator, bootstrapped over all items
    idx = _rng(seed).integers(0, len(vals), size=(n_boot, len(vals)))
    se, lo, hi = _percentiles(_replicates(vals, mask, idx))
    return Estimate(mean, se, lo, hi, n, "bootstrap")


def _aligned(a: Mapping[str, float | None], b: Mapping[str, float | None]):
    ids = sorted(set(a) & set(b))
    va, ma = _arrays(a[i] for i in ids)
    vb, mb = _arrays(b[i] for i in ids)
    return ids, va, ma, vb, mb


def paired_difference(a: Mapping[str, float | None], b: Mapping[str, float | None], seed: int = 0,
                      n_boot: int = N_BOOT) -> Estimate | None:
    """metric(a) − metric(b) on the items both scored sets share (by item id), with a paired-bootstrap 95% interval.

    Each replicate resamples the shared items once and recomputes both metrics on that same resample, so what the
    two settings have in common (the questions' difficulty) cancels. Identical inputs give exactly 0, zero width.
    """
    ids, va, ma, vb, mb = _aligned(a, b)
    if not ma.any() or not mb.any():
        return None
    delta = float(va[ma].mean() - vb[mb].mean())
    idx = _rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    se, lo, hi = _percentiles(_replicates(va, ma, idx) - _replicates(vb, mb, idx))
    return Estimate(delta, se, lo, hi, int((ma & mb).sum()), "paired bootstrap")


def _seed_replicates(per_seed: Sequence[tuple[np.ndarray, np.ndarray]], rng, n_boot: int) -> np.ndarray:
    """R[s, b]: seed s's metric on its b-th item resample (S × B)."""
    out = np.empty((len(per_seed), n_boot))
    for s, (vals, mask) in enumerate(per_seed):
        out[s] = _replicates(vals, mask, rng.integers(0, len(vals), size=(n_boot, len(vals))))
    return out


def _two_level(reps: np.ndarray, rng, n_boot: int) -> np.ndarray:
    """Draw S seeds with replacement, and for each an independent item resample; average over the drawn seeds."""
    s = reps.shape[0]
    seeds = rng.integers(0, s, size=(n_boot, s))
    cols = rng.integers(0, reps.shape[1], size=(n_boot, s))
    with np.errstate(invalid="ignore"):
        return np.nanmean(reps[seeds, cols], axis=1)


def seed_estimate(per_seed: Sequence[Sequence[float | None]], seed: int = 0, n_boot: int = N_BOOT) -> Estimate | None:
    """Mean over seeds of each seed's metric, with a two-level bootstrap (seeds, then items) standard error and
    interval; with one seed it is the item bootstrap of that seed."""
    arrays = [a for a in (_arrays(s) for s in per_seed) if a[1].any()]
    if not arrays:
        return None
    value = float(np.mean([v[m].mean() for v, m in arrays]))
    rng = _rng(seed)
    se, lo, hi = _percentiles(_two_level(_seed_replicates(arrays, rng, n_boot), rng, n_boot))
    return Estimate(value, se, lo, hi, int(sum(m.sum() for _, m in arrays)), "two-level bootstrap", len(arrays))


def paired_seed_difference(a: Sequence[Mapping[str, float | None]], b: Sequence[Mapping[str, float | None]],
                           seed: int = 0, n_boot: int = N_BOOT) -> Estimate | None:
    """mean over seeds of metric(a_s) − metric(b_s), seeds paired by position (seed i of a with seed i of b) and
    items paired by id inside each seed; two-level paired bootstrap."""
    pairs = [_aligned(x, y) for x, y in zip(a, b, strict=True)]
    pairs = [p for p in pairs if p[2].any() and p[4].any()]
    if not pairs:
        return None
    value = float(np.mean([va[ma].mean() - vb[mb].mean() for _, va, ma, vb, mb in pairs]))
    rng = _rng(seed)
    reps = np.empty((len(pairs), n_boot))
    for s, (ids, va, ma, vb, mb) in enumerate(pairs):
        idx = rng.integers(0, len(ids), size=(n_boot, len(ids)))
        reps[s] = _replicates(va, ma, idx) - _replicates(vb, mb, idx)
    se, lo, hi = _percentiles(_two_level(reps, rng, n_boot))
    n = int(sum((ma & mb).sum() for _, _, ma, _, mb in pairs))
    return Estimate(value, se, lo, hi, n, "paired two-level bootstrap", len(pairs))


# ---- over evaluator records -----------------------------------------------------------------------------------

def scores_by(records: Iterable[dict]) -> dict[tuple[str, float], dict[str, dict[str, float | None]]]:
    """`{(evaluator, k): {metric: {item id: score}}}` from per-item records (`eval_items.jsonl` rows)."""
    out: dict[tuple[str, float], dict[str, dict[str, float | None]]] = {}
    for r in records:
        by_metric = out.setdefault((r["evaluator"], float(r["k"])), {})
        for m, v in (r.get("scores") or {}).items():
            by_metric.setdefault(m, {})[r["id"]] = v
    return out


def summarize(records: Iterable[dict], seed: int = 0, n_boot: int = N_BOOT) -> dict[tuple[str, float], dict[str, Estimate]]:
    """An Estimate per (evaluator, k) and metric; metrics no item scored are left out."""
    out: dict[tuple[str, float], dict[str, Estimate]] = {}
    for key, by_metric in scores_by(records).items():
        for m, scores in by_metric.items():
            est = estimate([scores[i] for i in sorted(scores)], seed, n_boot)
            if est is not None:
                out.setdefault(key, {})[m] = est
    return out


def flat_uncertainty(summary: Mapping[tuple[str, float], Mapping[str, Estimate]]) -> dict[str, float]:
    """`eval/<evaluator>/<metric>_{stderr,ci_low,ci_high,n}@k=<k>` beside each metric's own key."""
    out: dict[str, float] = {}
    for (ev, k), ests in summary.items():
        for m, e in ests.items():
            for suffix, v in (("stderr", e.stderr), ("ci_low", e.low), ("ci_high", e.high), ("n", float(e.n))):
                if math.isfinite(v):
                    out[f"eval/{ev}/{m}_{suffix}@k={k:g}"] = float(v)
    return out


def differences_vs_k0(records: Iterable[dict], seed: int = 0, n_boot: int = N_BOOT,
                      ) -> dict[tuple[str, float], dict[str, Estimate]]:
    """Paired Δ(k − 0) per evaluator and metric, for every k ≠ 0 that has k = 0 records of the same evaluator."""
    by = scores_by(records)
    out: dict[tuple[str, float], dict[str, Estimate]] = {}
    for (ev, k), by_metric in by.items():
        base = by.get((ev, 0.0))
        if k == 0 or base is None:
            continue
        for m, scores in by_metric.items():
            if m in base:
                d = paired_difference(scores, base[m], seed, n_boot)
                if d is not None:
                    out.setdefault((ev, k), {})[m] = d
    return out
