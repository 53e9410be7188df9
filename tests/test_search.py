"""Automatic choice of k (and layer) within a capability budget: the decision logic on known curves, and the
recipe end to end on the tiny model (real evaluators, real W&B offline run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env
from tests.wandb_records import read_run
from wsteer.errors import WsteerError
from wsteer.evaluation.uncertainty import Estimate
from wsteer.search import Budget, Trial, bisect_k, choose


def _est(value: float, half: float = 0.0) -> Estimate:
    return Estimate(value, half / 1.96, value - half, value + half, 100, "paired bootstrap")


def _curve(drop_per_k: float, gain_per_k: float, budget: Budget, half: float = 0.0, calls: list | None = None):
    """A model whose capability falls by drop_per_k·|k| and whose behavior rises by gain_per_k·|k|."""
    def evaluate(k: float) -> Trial:
        if calls is not None:
            calls.append(k)
        cap = _est(-drop_per_k * abs(k), half)
        return Trial(k, None, _est(gain_per_k * abs(k), half), cap, budget.admits(cap))
    return evaluate


def test_bisection_finds_the_budget_boundary_and_chooses_the_largest_admissible_k():
    budget = Budget(0.05, "point")
    calls: list[float] = []
    trials = bisect_k(_curve(0.03, 0.1, budget, calls=calls), sign=-1, k_max=8, steps=6)
    # k_max first, then halving the bracket, then one point k_max/2^j below the largest admissible |k|
    assert calls == [-8, -4, -2, -1, -1.5, -1.75, -1.625, -0.5]
    best = choose(trials, "max")
    boundary = 0.05 / 0.03  # |k| = 1.667 costs exactly the budget
    assert best.k == -1.625 and abs(best.k) <= boundary < abs(best.k) + 8 / 2**6
    assert budget.admits(best.capability)


def test_an_inner_point_wins_when_the_behavior_peaks_below_the_budget_edge():
    budget = Budget(0.05, "point")

    def evaluate(k: float) -> Trial:  # capability falls with |k|; the behavior peaks at |k| = 2, then fades
        cap = _est(-0.01 * abs(k))
        return Trial(k, None, _est(0.1 * abs(k) * (abs(k) <= 2) + 0.05 * (abs(k) > 2)), cap, budget.admits(cap))

    trials = bisect_k(evaluate, sign=-1, k_max=8, steps=2)
    assert [t.k for t in trials] == [-8, -4, -6, -2]  # the edge of the budget is |k| = 5; then the inner point
    assert choose(trials, "max").k == -2
    assert [t.k for t in bisect_k(evaluate, sign=-1, k_max=8, steps=2, inner=0)] == [-8, -4, -6]


def test_an_admissible_k_max_ends_the_search_at_once():
    budget = Budget(0.05)
    trials = bisect_k(_curve(0.001, 0.1, budget), sign=1, k_max=4, steps=5)
    assert [t.k for t in trials] == [4.0] and choose(trials, "max").k == 4.0


def test_the_interval_rule_counts_a_drop_the_interval_cannot_rule_out():
    delta = _est(-0.02, half=0.06)  # estimate within a 0.05 budget, interval reaching −0.08
    assert Budget(0.05, "point").admits(delta)
    assert not Budget(0.05, "interval").admits(delta)
    assert Budget(0.1, "interval").admits(delta)
    # lower is better (perplexity): a rise is the cost
    assert not Budget(0.05, "point", higher_is_better=False).admits(_est(0.06))
    assert Budget(0.05, "point", higher_is_better=False).admits(_est(-0.5))
    assert not Budget(0.05).admits(None)  # an unmeasured capability is never assumed fine


def test_choose_follows_the_goal_and_returns_none_when_nothing_moved():
    budget = Budget(0.05, "point")
    up = Trial(-1.0, None, _est(0.1), _est(0.0), True)
    down = Trial(-2.0, None, _est(-0.2), _est(0.0), True)
    over = Trial(-4.0, None, _est(0.5), _est(-0.3), budget.admits(_est(-0.3)))
    assert choose([up, down, over], "max") is up
    assert choose([up, down, over], "min") is down
    assert choose([down], "max") is None
    assert choose([Trial(-1.0, None, None, _est(0.0), True)], "max") is None


@pytest.mark.parametrize("kwargs, pattern", [
    ({"sign": 0, "k_max": 8, "steps": 2}, "search.sign"),
    ({"sign": -1, "k_max": float("inf"), "steps": 2}, "search.k_max"),
    ({"sign": -1, "k_max": 8, "steps": -1}, "search.steps"),
])
def test_bad_search_settings_are_named(kwargs, pattern):
    with pytest.raises(WsteerError, match=pattern):
        bisect_k(_curve(0.1, 0.1, Budget(0.05)), **kwargs)
    with pytest.raises(WsteerError, match="search.budget"):
        Budget(-1)
    with pytest.raises(WsteerError, match="search.rule"):
        Budget(0.05, "median")


def _search_cfg(smoke_cfg, tmp_path, wandb=True):
    # The tiny random model answers no factual question correctly, so its sycophancy metrics are undefined; two
    # continuous metrics it does move stand in: MMLU letter mass (behavior) and held-out prose NLL (capability).
    # With k > 0 the NLL rises with k (+0.02 at k = 40, +0.04 at k = 80): a 0.025 budget binds inside [0, 80].
    logger = ["logger=wandb", f"logger.dir={tmp_path}"] if wandb else []
    return smoke_cfg("steer", ["search=capability_budget", *logger,
                               "evaluator=[mmlu,perplexity]", "search.behavior=mmlu/letter_mass",
                               "search.capability=perplexity/nll", "search.higher_is_better=false",
                               "search.budget=0.025", "search.rule=point", "search.sign=1", "search.k_max=80",
                               "search.steps=3",
                               "search.val_items=4", "search.test_items=4", "eval.max_items=null",
                               "evaluator.mmlu.n=8"])


def test_search_end_to_end_on_the_tiny_model_chooses_a_k_within_budget(smoke_cfg, tmp_path):
    from wsteer.recipes import search as search_recipe

    cfg = _search_cfg(smoke_cfg, tmp_path)
    result = search_recipe.run(cfg)
    out = Path(cfg.output_dir)
    record = json.loads((out / "search.json").read_text())
    trials = record["trials"]
    # k_max first, then 3 bisection steps, then the inner point k_max/4
    assert [t["k"] for t in trials][:2] == [80, 40] and len(trials) == 5 and trials[-1]["k"] == 20
    chosen = record["chosen"]["k"]
    assert result["search/k"] == chosen and 0 < chosen < 80
    row = next(t for t in trials if t["k"] == chosen)
    assert row["admissible"] and row["capability_delta"]["value"] <= 0.025  # NLL rose by at most the budget
    assert row["behavior_delta"]["value"] > 0
    assert all(t["behavior_delta"]["value"] <= row["behavior_delta"]["value"] for t in trials if t["admissible"])
    # the budget did bind, and every over-budget trial really is over it
    assert any(not t["admissible"] for t in trials)
    assert all(t["capability_delta"]["value"] > 0.025 for t in trials if not t["admissible"])
    doc = (out / "search.md").read_text()
    assert "## Held-out items" in doc and "perplexity/nll" in doc and (out / "search.png").stat().st_size > 0
    # the held-out report uses items the search never saw: the validation split is items [0, 4), held-out [4, 8)
    held = [json.loads(line) for line in (out / "eval_items.jsonl").read_text().splitlines()]
    from wsteer.evaluation.mmlu import MMLU

    ev = MMLU(n=8, limit=4)
    val_ids = {it["id"] for it in ev.items()}
    assert {r["id"] for r in held if r["evaluator"] == "mmlu"}.isdisjoint(val_ids)
    assert f"eval/perplexity/nll@k={chosen:g}" in result
    r = read_run(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))
    assert r["run"].job_type == "search"
    assert r["metrics"]["search/*"] == "search/trial"
    assert len([h for h in r["history"] if "search/trial" in h]) == len(trials)
    assert r["summary"]["search/k"] == chosen


def test_a_repeated_search_reuses_every_finished_item(smoke_cfg, tmp_path, monkeypatch):
    from wsteer.recipes import search as search_recipe

    first = search_recipe.run(_search_cfg(smoke_cfg, tmp_path, wandb=False))
    from wsteer.evaluation.mmlu import MMLU
    from wsteer.evaluation.perplexity import Perplexity

    calls = []
    for cls in (MMLU, Perplexity):  # scoring an item is the only way the model is run on it
        real = cls.evaluate
        monkeypatch.setattr(cls, "evaluate", lambda self, items, _real=real: calls.append(len(items)) or _real(self, items))
    second = search_recipe.run(_search_cfg(smoke_cfg, tmp_path, wandb=False))
    assert calls == []
    assert first == second


def test_search_refuses_a_metric_whose_evaluator_is_not_selected(tmp_path):
    proc = subprocess.run(
        [sys.executable, "steer.py", "debug=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
         "search=capability_budget", "evaluator=[mmlu]"],
        cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "search needs evaluator(s) factual_qa" in proc.stderr and "'evaluator=[factual_qa]'" in proc.stderr
