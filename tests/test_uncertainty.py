"""Uncertainty (issue: every number with its interval): hand-computed standard errors, seeded bootstraps, coverage,
paired differences, stratified samples, data-aware store keys, and seeds that reach every random step."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from wsteer.evaluation.base import Evaluator, stratified_order
from wsteer.evaluation.uncertainty import (
    Estimate,
    differences_vs_k0,
    estimate,
    flat_uncertainty,
    paired_difference,
    paired_seed_difference,
    seed_estimate,
    summarize,
    wilson,
)
from wsteer.recipes import steer as steer_recipe
from wsteer.recipes import train as train_recipe
from wsteer.recipes.sweep_report import collect, run_report
from wsteer.vectors import WeightVector

SCORES = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]


def test_the_standard_error_of_a_mean_metric_is_the_hand_computed_one():
    e = estimate(SCORES)
    p, n = 6 / 8, 8
    assert e.value == pytest.approx(0.75)
    # sample sd (n − 1) over √n: sqrt(Σ(x − p)² / 7) / √8
    hand = math.sqrt((6 * (1 - p) ** 2 + 2 * p**2) / (n - 1)) / math.sqrt(n)
    assert e.stderr == pytest.approx(hand, rel=1e-12) and e.n == 8 and e.method == "analytic-wilson"
    assert (e.low, e.high) == pytest.approx(wilson(0.75, 8))
    assert 0 <= e.low < 0.75 < e.high <= 1
    # non-binary scores (word counts): the normal interval mean ± 1.96·se
    words = [10.0, 12.0, 7.0, 30.0]
    w = estimate(words)
    se = np.std(words, ddof=1) / 2
    assert w.stderr == pytest.approx(se) and w.low == pytest.approx(np.mean(words) - 1.959963984540054 * se)
    assert w.format(2) == f"{np.mean(words):.2f} ± {se:.2f} (n=4)"


def test_a_metric_defined_on_a_subset_is_bootstrapped_and_reproducible_under_the_same_seed():
    scores = [1.0, None, 0.0, 1.0, None, 1.0, 0.0, 1.0, 1.0, None] * 4
    a, b = estimate(scores, seed=3), estimate(scores, seed=3)
    assert a == b and a.method == "bootstrap" and a.n == 28
    assert a.value == pytest.approx(20 / 28)
    assert estimate(scores, seed=4) != a  # another seed draws other resamples
    assert a.low < a.value < a.high
    assert estimate([None, None]) is None


@pytest.mark.parametrize("subset", [False, True])
def test_the_95_percent_interval_covers_a_known_rate_in_at_least_90_percent_of_200_draws(subset):
    rng = np.random.default_rng(0)
    rate, n, covered = 0.3, 60, 0
    for draw in range(200):
        x = (rng.random(n) < rate).astype(float).tolist()
        if subset:  # the metric exists only on a random ~70% of the items (as non-sycophancy does)
            x = [v if rng.random() < 0.7 else None for v in x]
        e = estimate(x, seed=draw, n_boot=400)
        covered += e.low <= rate <= e.high
    assert covered >= 180, covered


def test_a_paired_difference_of_identical_outputs_is_exactly_zero_with_zero_width():
    a = {f"q{i}": s for i, s in enumerate([1.0, 0.0, None, 1.0, 1.0])}
    d = paired_difference(a, dict(a), seed=0)
    assert (d.value, d.low, d.high, d.stderr) == (0.0, 0.0, 0.0, 0.0)
    assert not d.resolved and d.format_delta(2) == "+0.00 [+0.00, +0.00]"
    s = paired_seed_difference([a, a], [dict(a), dict(a)])
    assert (s.value, s.low, s.high) == (0.0, 0.0, 0.0) and s.n_seeds == 2


def test_a_paired_difference_is_tighter_than_the_unpaired_intervals_and_resolves_a_clear_shift():
    rng = random.Random(1)
    base = {f"q{i}": float(rng.random() < 0.5) for i in range(80)}
    # the steered model fixes a quarter of the wrong answers and breaks nothing
    fixed = {q: 1.0 if v == 0 and rng.random() < 0.5 else v for q, v in base.items()}
    d = paired_difference(fixed, base, seed=0)
    ea, eb = estimate(list(fixed.values())), estimate(list(base.values()))
    assert d.value == pytest.approx(ea.value - eb.value)
    assert d.resolved and d.low > 0
    assert d.high - d.low < (ea.high - ea.low)


def test_the_two_level_bootstrap_adds_seed_variance():
    rng = np.random.default_rng(0)
    items = [(rng.random(50) < 0.5).astype(float).tolist() for _ in range(3)]
    one = seed_estimate([items[0]] * 3)  # three identical seeds: item variance only
    assert one.value == pytest.approx(np.mean(items[0])) and one.n_seeds == 3
    spread = [[min(1.0, v + off) for v in items[0]] for off in (0.0, 0.3, 0.6)]  # seeds that disagree
    many = seed_estimate(spread)
    assert many.value == pytest.approx(np.mean([np.mean(s) for s in spread]))
    assert many.stderr > 1.5 * one.stderr
    assert seed_estimate([items[0]], seed=5) == seed_estimate([items[0]], seed=5)


def _records(k, scores, ev="factual_qa", metric="accuracy"):
    return [{"evaluator": ev, "id": f"q{i}", "k": k, "scores": {metric: s}} for i, s in enumerate(scores)]


def test_summaries_over_records_give_flat_keys_beside_each_metric_and_paired_deltas_against_k0():
    recs = _records(0.0, [1, 0, 1, 0, 1, 0, 1, 0]) + _records(-2.0, [1, 1, 1, 1, 1, 1, 1, 0])
    summary = summarize(recs)
    flat = flat_uncertainty(summary)
    assert flat["eval/factual_qa/accuracy_stderr@k=0"] == pytest.approx(summary[("factual_qa", 0.0)]["accuracy"].stderr)
    assert flat["eval/factual_qa/accuracy_n@k=-2"] == 8
    assert {"eval/factual_qa/accuracy_ci_low@k=-2", "eval/factual_qa/accuracy_ci_high@k=-2"} <= set(flat)
    d = differences_vs_k0(recs)[("factual_qa", -2.0)]["accuracy"]
    assert d.value == pytest.approx(3 / 8)


# ---- stratified samples and data-aware keys -------------------------------------------------------------------

def test_a_limit_is_a_seeded_sample_stratified_by_category_and_a_larger_limit_contains_a_smaller():
    items = ([{"id": f"cap-{i}", "category": "capitals"} for i in range(45)]
             + [{"id": f"sci-{i}", "category": "science"} for i in range(30)]
             + [{"id": f"num-{i}", "category": "numbers"} for i in range(15)])
    order = stratified_order(items, ("category",), seed=0)
    assert sorted(it["id"] for it in order) == sorted(it["id"] for it in items)
    for n in (10, 20, 40, 60):
        counts = Counter(it["category"] for it in order[:n])
        for cat, size in (("capitals", 45), ("science", 30), ("numbers", 15)):
            assert abs(counts[cat] - n * size / 90) <= 1, (n, counts)
    assert order[:20] == stratified_order(items, ("category",), seed=0)[:20]  # seeded: the same every time
    assert order[:20] != stratified_order(items, ("category",), seed=1)[:20]


def test_the_shipped_factual_qa_default_check_spans_every_category():
    from wsteer.evaluation.factual_qa import FactualQA

    ev = FactualQA(limit=40)
    cats = Counter(it["category"] for it in ev.items())
    everything = Counter(it["category"] for it in ev.load_items())
    assert set(cats) == set(everything) and len(cats) > 1
    assert ev.settings()["sample"] == "stratified by category, seed 0"


class _Listed(Evaluator):
    """An evaluator over items given in the constructor, with a fixed 'model' answer (a real Evaluator)."""

    name = "listed"
    metric_names = ("accuracy",)

    def __init__(self, rows, **kw):
        super().__init__(**kw)
        self.rows = rows

    def load_items(self):
        return self.rows

    def evaluate(self, items):
        self.calls = getattr(self, "calls", 0) + len(items)
        return [{"outputs": {}, "scores": {"accuracy": float(it["question"].startswith("a "))}} for it in items]


@pytest.mark.reliability
def test_an_edited_data_file_with_unchanged_ids_never_reuses_stored_answers(smoke_cfg, tiny):
    from wsteer.evaluation.runner import run_evaluators
    from wsteer.recipes._common import Context

    cfg = smoke_cfg("evaluate")
    model, tok = tiny
    ctx = Context(cfg=cfg, model=model, tokenizer=tok, fingerprint="f" * 24, behavior=None,
                  out_dir=Path(cfg.output_dir))
    rows = [{"id": f"r{i}", "question": "a question" if i % 2 else "no"} for i in range(6)]
    first = _Listed(rows)
    flat, _ = run_evaluators(ctx, [first], None, [0.0])
    again = _Listed(rows)
    run_evaluators(ctx, [again], None, [0.0])
    assert first.calls == 6 and getattr(again, "calls", 0) == 0  # same data: every item reused
    edited = _Listed([{**r, "question": "edited"} for r in rows])
    flat2, _ = run_evaluators(ctx, [edited], None, [0.0])
    assert edited.calls == 6  # same ids, new contents: answered afresh
    assert flat["eval/listed/accuracy@k=0"] == 0.5 and flat2["eval/listed/accuracy@k=0"] == 0.0
    assert flat["eval/listed/accuracy_stderr@k=0"] == pytest.approx(estimate([0, 1, 0, 1, 0, 1]).stderr)


# ---- seeds reach every random step of building a vector ---------------------------------------------------------

def _vector(smoke_cfg, seed: int) -> WeightVector:
    cfg = smoke_cfg("train", [f"seed={seed}"])
    train_recipe.run(cfg)
    return WeightVector.load(Path(cfg.output_dir) / "vector.safetensors")


def test_seeds_give_different_vectors_and_the_same_seed_gives_a_bitwise_identical_one(smoke_cfg, tmp_path):
    v0 = _vector(smoke_cfg, 0)
    v0_again = _vector(smoke_cfg, 0)  # train.py rebuilds (force), so this is a second training, not the cache
    v1 = _vector(smoke_cfg, 1)
    assert v0.factors.keys() == v0_again.factors.keys() == v1.factors.keys()
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # noqa: E731  (B, A) factors
    assert all(same(v0.factors[n], v0_again.factors[n]) for n in v0.factors)
    assert not any(same(v0.factors[n], v1.factors[n]) for n in v0.factors)
    assert v0.manifest["seed"] == 0 and v1.manifest["seed"] == 1
    assert v0.manifest["data_seed"] == v1.manifest["data_seed"] == 0  # the data is not resampled by `seed`
    assert v0.manifest["data_hash"] == v1.manifest["data_hash"]
    # both are cached under their own key: a sweep over seeds reuses each
    folders = list((tmp_path / "cache" / "vectors").glob("*/sycophancy/lora/*/COMPLETE"))
    assert len(folders) == 2


def test_the_data_seed_is_separate_and_recorded_in_the_data_manifest(smoke_cfg):
    cfg = smoke_cfg("train", ["data_seed=3", "stage=data"])
    assert cfg.sampling.seed == 3 and cfg.seed == 0
    train_recipe.run(cfg)
    manifests = list(Path(cfg.paths.cache_dir).glob("pairs/**/manifest.json"))
    assert manifests and json.loads(manifests[0].read_text())["key"]["sampling"]["seed"] == 3


# ---- the recipes write uncertainty everywhere -----------------------------------------------------------------

def test_a_smoke_run_writes_stderr_keys_to_metrics_json_the_report_and_the_offline_wandb_run(smoke_cfg, tmp_path):
    from tests.wandb_records import read_run

    # logger.dir: wandb keeps the first WANDB_DIR of a process, so an in-process run names its own folder
    cfg = smoke_cfg("steer", ["logger=wandb", f"logger.dir={tmp_path}", "k=-20", "seed=2"])
    steer_recipe.run(cfg)
    out = Path(cfg.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("factual_qa/accuracy", "mmlu/accuracy", "heldout_tone/agree_rate"):
        for k in ("0", "-20"):
            assert f"eval/{name}_stderr@k={k}" in metrics and f"eval/{name}_n@k={k}" in metrics
    report = (out / "report.md").read_text()
    assert "± " in report and "(n=20)" in report and "Paired differences against k = 0" in report
    run = read_run(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))
    assert run["config"]["seed"] == 2
    assert "eval/mmlu/accuracy_stderr@k=-20" in run["summary"]
    items = [json.loads(x) for x in (out / "eval_items.jsonl").read_text().splitlines()]
    assert {r["evaluator"] for r in items} == {"heldout_tone", "factual_qa", "mmlu"}


def _job(root: Path, method: str, k: float, seed: int, scores: dict[float, list[float | None]]):
    job = root / f"k={k},method={method},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"k": k, "seed": seed, "method": {"name": method},
                                     "behavior": {"name": "sycophancy"},
                                     "tradeoff": {"behavior": "factual_qa/non_sycophancy",
                                                  "capability": "factual_qa/accuracy"}}), job / ".hydra" / "config.yaml")
    recs, flat = [], {}
    for kk, vals in scores.items():
        for i, v in enumerate(vals):
            recs.append({"evaluator": "factual_qa", "id": f"q{i}", "k": kk,
                         "scores": {"accuracy": 1.0 if v is not None else 0.0, "non_sycophancy": v}})
        e = estimate(vals)
        flat[f"eval/factual_qa/non_sycophancy@k={kk:g}"] = e.value
        flat[f"eval/factual_qa/accuracy@k={kk:g}"] = sum(v is not None for v in vals) / len(vals)
    (job / "metrics.json").write_text(json.dumps(flat))
    (job / "eval_items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_a_sweep_report_aggregates_seeds_with_two_level_intervals_and_paired_method_differences(tmp_path):
    rng = random.Random(0)
    base = [float(rng.random() < 0.5) if rng.random() < 0.8 else None for _ in range(40)]
    for seed in (0, 1, 2):
        up = [None if v is None else (1.0 if rng.random() < 0.7 + 0.05 * seed else v) for v in base]
        _job(tmp_path, "weight", -2, seed, {0.0: base, -2.0: up})
        _job(tmp_path, "activation", -2, seed, {0.0: base, -2.0: base})  # no effect at all
    rows, _ = collect(tmp_path)
    w = next(r for r in rows if (r["method"], r["k"]) == ("weight", -2.0))
    assert w["seeds"] == [0, 1, 2]
    e = w["est"]["factual_qa/non_sycophancy"]
    assert isinstance(e, Estimate) and e.n_seeds == 3 and e.method == "two-level bootstrap"
    report = run_report(tmp_path)
    assert "sweep/weight/factual_qa/non_sycophancy_stderr@k=-2" in report
    md = (tmp_path / "sweep_report.md").read_text()
    assert "Training seeds: 3 (0, 1, 2)" in md and "per seed, 3 seeds)" in md
    assert "| -2 | activation − weight |" in md
    pair = [line for line in md.splitlines() if line.startswith("| activation | -2 |") and "[" in line][0]
    assert "+0.000 [+0.000, +0.000]" in pair  # activation changed nothing: Δ vs k = 0 is exactly 0
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
