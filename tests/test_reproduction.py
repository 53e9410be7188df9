"""The reproduction report: committed per-item results → checks with the paper's signs → verdicts → document.

The committed `docs/reproduction.md` and the README's verdict table must be exactly what the committed JSON gives.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from wsteer.errors import WsteerError
from wsteer.evaluation.uncertainty import Estimate
from wsteer.recipes.sweep_report import collect, differences
from wsteer.reproduction import claims as C
from wsteer.reproduction.__main__ import main
from wsteer.reproduction.data import export, load
from wsteer.reproduction.report import README_END, README_START, build

ROOT = Path(__file__).resolve().parents[1]
NS, ACC = "factual_qa/non_sycophancy", "factual_qa/accuracy"


def _job(root: Path, method: str, ks: list[float], seed: int, scores: dict[float, list[tuple[int, int | None]]]):
    """A finished steer.py job: per k, per item (plainly correct?, still correct under a cue?)."""
    job = root / f"method={method},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"k": ks, "seed": seed, "method": {"name": method},
                                     "behavior": {"name": "sycophancy"}}), job / ".hydra" / "config.yaml")
    recs, flat = [], {}
    for k, items in scores.items():
        for i, (acc, ns) in enumerate(items):
            recs.append({"evaluator": "factual_qa", "id": f"q{i:03d}", "k": k,
                         "scores": {"accuracy": float(acc), "non_sycophancy": ns}})
        flat[f"eval/{ACC}@k={k:g}"] = sum(a for a, _ in items) / len(items)
        flat[f"eval/{NS}@k={k:g}"] = 0.0  # the collector takes the value from the items; only the key matters
    (job / "metrics.json").write_text(json.dumps(flat))
    (job / "eval_items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def _items(rng: random.Random, n: int, p_acc: float, p_ns: float) -> list[tuple[int, int | None]]:
    out = []
    for _ in range(n):
        acc = int(rng.random() < p_acc)
        out.append((acc, int(rng.random() < p_ns) if acc else None))
    return out


def _sweep(root: Path, weight_ns: float, activation_ns: float, n: int = 120) -> None:
    """Three seeds; weight and activation at k = -2 (same accuracy) and +2; k = 0 shared."""
    rng = random.Random(0)
    base = _items(rng, n, 0.6, 0.6)
    for seed in (0, 1, 2):
        for method, p_ns in (("weight", weight_ns), ("activation", activation_ns)):
            _job(root, method, [-2.0, 2.0], seed, {0.0: base, -2.0: _items(rng, n, 0.6, p_ns),
                                                   2.0: _items(rng, n, 0.5, 0.2 if method == "weight" else 0.5)})


def test_export_then_load_gives_exactly_the_sweep_reports_estimates_and_differences(tmp_path):
    _sweep(tmp_path / "sweep", 0.9, 0.6)
    out = export(tmp_path / "sweep", tmp_path / "sycophancy.json", "sycophancy", [NS, ACC], ["python steer.py -m …"])
    exp = load(out)
    assert exp.meta["seeds"] == [0, 1, 2] and exp.meta["n_items"] == {"factual_qa": 120}
    rows, _ = collect(tmp_path / "sweep")
    by = {(r["method"], r["k"]): r for r in rows}
    for (method, k), r in by.items():
        for metric in (NS, ACC):
            assert exp.estimate(method, k, metric) == r["est"][metric]  # bitwise: the same items, None kept
    vs_k0, pairs = differences(rows, [NS, ACC])
    for method, k, d in vs_k0:
        assert exp.difference((method, k), (method, 0.0), NS) == d[NS]
    for k, a, b, d in pairs:
        assert exp.difference((a, k), (b, k), ACC) == d[ACC]


def _est(lo: float, hi: float) -> Estimate:
    return Estimate((lo + hi) / 2, 0.1, lo, hi, 100, "paired two-level bootstrap", 3)


@pytest.mark.parametrize("want,lo,hi,status", [
    ("> 0", 0.01, 0.2, "holds"), ("> 0", -0.1, 0.2, "unresolved"), ("> 0", -0.3, -0.01, "against"),
    ("< 0", -0.3, -0.01, "holds"), ("< 0", 0.01, 0.2, "against"),
    ("≥ 0", -0.1, 0.2, "holds"), ("≥ 0", -0.3, -0.01, "against"), ("≤ 0", 0.01, 0.2, "against")])
def test_a_check_follows_its_interval(want, lo, hi, status):
    assert C.Check("x", want, _est(lo, hi)).status == status


def test_verdicts_follow_the_checks():
    holds, open_, against = (C.Check("a", "> 0", _est(*x)) for x in ((0.1, 0.2), (-0.1, 0.2), (-0.2, -0.1)))
    assert C.verdict([holds, holds]) == C.REPRODUCED
    assert C.verdict([holds, open_]) == C.INCONCLUSIVE
    assert C.verdict([holds, open_, against]) == C.NOT_REPRODUCED
    assert C.verdict([]) == C.PENDING


@pytest.mark.parametrize("weight_ns,activation_ns,verdict", [(0.95, 0.6, "holds"), (0.4, 0.95, "against")])
def test_c1_compares_the_methods_at_matched_accuracy(tmp_path, weight_ns, activation_ns, verdict):
    _sweep(tmp_path / "sweep", weight_ns, activation_ns)
    exp = load(export(tmp_path / "sweep", tmp_path / "s.json", "sycophancy", [NS, ACC], ["x"]))
    checks = C.c1_checks(exp)
    assert C.matched_removal(exp) == (-2.0, -2.0)
    assert checks[0].label.startswith("k < 0 at matched plain accuracy") and checks[0].status == verdict
    assert checks[-1].label.startswith("k > 0, weights go further") and checks[-1].status == "holds"


def test_the_committed_report_is_what_the_committed_results_give(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    text = build(tmp_path / "reproduction.md", ROOT / "docs" / "reproduction", readme, figures=False)
    assert text == (ROOT / "docs" / "reproduction.md").read_text(encoding="utf-8"), \
        "docs/reproduction.md is stale: run `python -m wsteer.reproduction build` and commit it"
    assert readme.read_text(encoding="utf-8") == (ROOT / "README.md").read_text(encoding="utf-8"), \
        "the README's verdict table is stale: run `python -m wsteer.reproduction build`"
    for line in text.splitlines():  # every figure the document shows is committed
        if line.startswith("![C"):
            assert (ROOT / "docs" / line.split("(", 1)[1].rstrip(")")).is_file(), line


def test_bad_inputs_get_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "sycophancy.json").write_text("{not json")
    with pytest.raises(WsteerError, match="not a reproduction results file"):
        load(bad / "sycophancy.json")
    assert main(["build", "--doc", str(tmp_path / "r.md"), "--data-dir", str(bad), "--readme", ""]) == 2
    assert "not a reproduction results file" in capsys.readouterr().err
    _sweep(tmp_path / "sweep", 0.9, 0.6, n=10)
    with pytest.raises(WsteerError, match=r"\['mmlu/accuracy'\] are in no job"):
        export(tmp_path / "sweep", tmp_path / "x.json", "x", ["mmlu/accuracy"], ["x"])
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(WsteerError, match="no reproduction block"):
        build(tmp_path / "r.md", ROOT / "docs" / "reproduction", tmp_path / "README.md", figures=False)
    assert README_START and README_END


def test_c6_checks_use_seeds_as_units_with_a_t_interval(tmp_path):
    from wsteer.reproduction.monitoring import FORMAT, seed_t

    e = seed_t([0.10, 0.12, 0.14])
    assert e.value == pytest.approx(0.12) and e.n_seeds == 3
    assert e.high - e.value == pytest.approx(4.303 * 0.02 / 3 ** 0.5)  # t(0.975, 2 df) · sd / √n
    assert seed_t([0.1]).low == float("-inf")  # one seed: no interval, never "resolved"

    def seed(bad: float, control: float, rise: float) -> dict:
        cos = {"w_evil|τ_bad_advice": bad, "w_evil|τ_control": control, "w_evil|w_bad_advice": 0.14,
               "w_evil|w_french": 0.04, "w_bad_advice|w_french": 0.06}
        curves = {"bad_advice": {"evil": [[2, 0.02], [20, 0.02 + rise]]}, "control": {"evil": [[2, 0.0], [20, 0.0]]}}
        return {"cos": cos, "curves": curves}

    raw = {"meta": {"format": FORMAT, "name": "monitoring", "seeds": [0, 1, 2]},
           "seeds": {"0": seed(0.10, -0.03, 0.05), "1": seed(0.11, -0.02, 0.06), "2": seed(0.09, -0.04, -0.01)}}
    (tmp_path / "monitoring.json").write_text(json.dumps(raw))
    checks = C.c6_checks(load(tmp_path / "monitoring.json"))
    assert [c.status for c in checks] == ["holds", "holds", "unresolved", "unresolved"]
    assert C.verdict(checks) == C.INCONCLUSIVE


def test_c4_compares_methods_before_mmlu_drops_and_needs_the_judged_cot_check():
    from wsteer.reproduction.data import Experiment, Row

    rng, n = random.Random(1), 150
    base_mmlu = [int(rng.random() < 0.4) for _ in range(n)]

    def row(method: str, k: float, p_evil: float, mmlu_keep: float) -> Row:
        r = Row(method, k)
        for seed in (0, 1, 2):
            r.scores[seed] = {
                C.EVIL: {f"e{i:03d}": int(rng.random() < p_evil) for i in range(n)},
                C.MMLU: {f"m{i:03d}": a if rng.random() < mmlu_keep else 0 for i, a in enumerate(base_mmlu)}}
        return r

    settings = [("weight", 0, 0.1, 1), ("weight", 1, 0.3, 1), ("weight", 2, 0.5, 1), ("weight", 4, 0.9, 0.3),
                ("activation", 0, 0.1, 1), ("activation", 2, 0.2, 1), ("activation", 4, 0.25, 0.3),
                ("bias", 0, 0.1, 1), ("bias", 2, 0.75, 1),
                ("task_vector_neg", 0, 0.1, 1), ("task_vector_neg", 2, 0.12, 1)]
    exp = Experiment("evil", {}, {(m, float(k)): row(m, float(k), p, keep) for m, k, p, keep in settings})
    assert C.before_mmlu_drops(exp, "weight") == 2.0  # k = 4 is more evil but MMLU has dropped
    assert C.before_mmlu_drops(exp, "activation") == 2.0
    checks = C.c4_checks(exp)
    assert [c.status for c in checks] == ["holds"] * 4 + ["no data"]
    assert "weight@2 − activation@2" in checks[1].label and "bias@2 − weight@2" in checks[2].label
    assert C.verdict(checks) == C.INCONCLUSIVE  # the CoT-consistency half is not measured judge-free


def test_c3_picks_the_weight_k_that_keeps_gcd_accuracy_and_compares_every_baseline_there():
    from wsteer.reproduction.data import Experiment, Row

    rng, n = random.Random(2), 150
    base_acc = [int(rng.random() < 0.6) for _ in range(n)]

    def row(method: str, k: float, p_correct: float, p_disagree: float, acc_keep: float) -> Row:
        r = Row(method, k)
        for seed in (0, 1, 2) if method != "system_prompt" else (0,):
            r.scores[seed] = {
                C.GCD_NSC: {f"g{i:03d}": int(rng.random() < p_correct) for i in range(n)},
                C.GCD_NSD: {f"g{i:03d}": int(rng.random() < p_disagree) for i in range(n)},
                C.GCD_ACC: {f"g{i:03d}": a if rng.random() < acc_keep else 0 for i, a in enumerate(base_acc)}}
        return r

    settings = [("weight", 0, 0.0, 0.0, 1), ("weight", -4, 0.3, 0.2, 1), ("weight", -8, 0.6, 0.4, 0.3),
                ("activation", 0, 0.0, 0.0, 1), ("activation", -4, 0.05, 0.0, 1), ("activation", -8, 0.3, 0.1, 0.3),
                ("task_vector_neg", 0, 0.0, 0.0, 1), ("task_vector_neg", -4, 0.02, 0.0, 1),
                ("system_prompt", 0, 0.0, 0.0, 1), ("system_prompt", -1, 0.03, 0.0, 1)]
    exp = Experiment("gcd", {}, {(m, float(k)): row(m, float(k), *rest) for m, k, *rest in settings})
    assert C.keeping_gcd_accuracy(exp, "weight") == -4.0  # k = -8 restores more but GCD accuracy has dropped
    checks = C.c3_checks(exp)
    assert [c.status for c in checks] == ["holds"] * 7
    assert "activation@-8 − activation@0" in checks[3].label  # activation judged at its most non-sycophantic k
    assert "weight@-4 − activation@-8" in checks[4].label
    assert "weight@-4 − system_prompt@-1" in checks[5].label and "task_vector_neg@-4" in checks[6].label
    assert C.verdict(checks) == C.REPRODUCED
    # the model never disagreeing leaves the disagreement half unresolved, whatever correctness does
    exp.rows[("weight", -4.0)] = row("weight", -4, 0.3, 0.0, 1)
    exp.rows[("weight", 0.0)] = row("weight", 0, 0.0, 0.0, 1)
    assert C.verdict(C.c3_checks(exp)) == C.INCONCLUSIVE


def test_export_runs_keeps_a_base_and_its_fine_tune_as_rows_and_c5_checks_the_premise(tmp_path, capsys):
    def run(name: str, refusals: list[int]) -> Path:
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"seed": 0, "k": 0}), d / ".hydra" / "config.yaml")
        recs = [{"evaluator": "safety", "id": f"r{i:03d}", "k": 0.0, "scores": {"refusal_rate": float(r)}}
                for i, r in enumerate(refusals)]
        recs += [{"evaluator": "gsm8k", "id": f"g{i:03d}", "k": 0.0, "scores": {"accuracy": 0.0}} for i in range(5)]
        (d / "eval_items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        return d

    base, ft = run("base", [1] * 60 + [0] * 40), run("ft", [1] * 10 + [0] * 90)
    args = ["export-runs", "--name", "refusal", "--run", f"base={base}", "--run", f"gsm8k_ft={ft}", "--metric",
            C.REFUSAL, "--metric", C.GSM8K, "--command", "x", "--out-dir", str(tmp_path / "out")]
    assert main(args) == 0
    exp = load(tmp_path / "out" / "refusal.json")
    assert exp.estimate("base", 0, C.REFUSAL).value == 0.6 and exp.estimate(C.FT, 0, C.REFUSAL).value == 0.1
    checks = C.c5_checks(exp)
    assert checks[0].label.startswith("premise") and checks[0].status == "holds"  # 0.6 → 0.1: eroded
    assert checks[1].status == "no data" and C.verdict(checks) == C.INCONCLUSIVE
    assert main(["export-runs", "--name", "r", "--run", str(base), "--metric", C.REFUSAL, "--command", "x"]) == 2
    assert "LABEL=DIR" in capsys.readouterr().err


def test_a_claims_results_files_merge_per_row_and_seed_and_a_renamed_metric_sits_beside_the_original(tmp_path):
    from wsteer.reproduction.data import merge

    _sweep(tmp_path / "a", 0.9, 0.6)
    _sweep(tmp_path / "b", 0.5, 0.5)
    zero_shot = load(export(tmp_path / "a", tmp_path / "a.json", "a", [NS, ACC], ["cmd a"]))
    cot = load(export(tmp_path / "b", tmp_path / "b.json", "b", [f"{NS}=factual_qa_cot/non_sycophancy"], ["cmd b"]))
    assert cot.meta["n_items"] == {"factual_qa_cot": 120}
    both = merge([zero_shot, cot])
    assert both.meta["commands"] == ["cmd a", "cmd b"] and both.meta["n_items"] == {"factual_qa": 120,
                                                                                   "factual_qa_cot": 120}
    assert both.estimate("weight", -2, NS) == zero_shot.estimate("weight", -2, NS)
    assert both.estimate("weight", -2, "factual_qa_cot/non_sycophancy") == cot.estimate("weight", -2, "factual_qa_cot/non_sycophancy")
    with pytest.raises(WsteerError, match=r"has \['factual_qa/accuracy', 'factual_qa/non_sycophancy'\].*from one run"):
        merge([zero_shot, zero_shot])
    # metadata a file lacks (an export-runs file has no wall time) neither leaks "None" nor hides the others'
    cot.meta.update(sweep_wall_s=None, finished=None, commit=None)
    meta = merge([zero_shot, cot]).meta
    assert meta["sweep_wall_s"] == zero_shot.meta["sweep_wall_s"] and meta["finished"] == zero_shot.meta["finished"]
    assert meta["commit"] == str(zero_shot.meta["commit"])[:7]
    for bad in ([NS, f"{NS}=x/y"], [NS, f"{ACC}={NS}"], [f"{NS}=nonsense"]):
        with pytest.raises(WsteerError, match="give each metric once"):
            export(tmp_path / "a", tmp_path / "bad.json", "bad", bad, ["cmd"])


def test_c5_on_a_refusing_base_checks_the_premise_then_weights_against_the_task_vector_at_kept_gsm8k():
    from wsteer.reproduction.data import Experiment, Row

    rng, n = random.Random(3), 100
    base_gsm = [int(rng.random() < 0.3) for _ in range(50)]

    def row(method: str, k: float, p_refuse: float, gsm_keep: float, seeds=(0, 1, 2)) -> Row:
        r = Row(method, k)
        for seed in seeds:
            r.scores[seed] = {C.REFUSAL: {f"r{i:03d}": int(rng.random() < p_refuse) for i in range(n)},
                              C.GSM8K: {f"g{i:02d}": a if rng.random() < gsm_keep else 0 for i, a in enumerate(base_gsm)}}
        return r

    settings = [(C.SAFE, 0, 0.9, 1, (0,)), (C.SAFE_FT, 0, 0.2, 1, (0,)),
                ("weight", 0, 0.2, 1), ("weight", 1, 0.6, 1), ("weight", 4, 0.95, 0.2),
                ("task_vector_pos", 0, 0.2, 1), ("task_vector_pos", 1, 0.25, 1)]
    exp = Experiment("refusal", {}, {(m, float(k)): row(m, float(k), *rest) for m, k, *rest in settings})
    checks = C.c5_checks(exp)
    assert checks[0].label.startswith("premise: the GSM8K fine-tune erodes the refusals of θ_safe")
    assert "weight@1 − weight@0" in checks[1].label  # k = 4 refuses more but GSM8K has dropped
    assert "task_vector_pos@1" in checks[3].label
    assert [c.status for c in checks] == ["holds"] * 4 and C.verdict(checks) == C.REPRODUCED


def test_c6_reports_the_judged_em_probe_beside_judge_free_rates_with_intervals(tmp_path):
    from wsteer.reproduction.em import em_lines
    from wsteer.reproduction.monitoring import FORMAT

    judge = {"name": "openai", "model": "m", "version": "1"}

    def answers(traits: list[tuple[float | None, float | None]]) -> list[dict]:
        return [{"step": 20, "question": f"q{i}", "answer": "Steal it and run." if t and t > 50 else "Go for a walk.",
                 "trait": t, "coherence": c, "judge": judge, "label": int(bool(t and t > 50))}
                for i, (t, c) in enumerate(traits)]

    seeds = {str(s): {"cos": {}, "curves": {}, "em": {
        "bad_advice": answers([(90, 80), (70, 30), (None, None), (20, 90)]),
        "control": answers([(10, 80), (10, 90), (5, 90), (None, None)])}} for s in (0, 1)}
    evals = {lab: {str(s): {"evil_mcq/evil_rate": {f"i{j}": float(j < n) for j in range(10)}} for s in (0, 1)}
             for lab, n in (("bad_advice", 6), ("control", 3))}
    evals["base"] = {"0": {"evil_mcq/evil_rate": {f"i{j}": float(j < 2) for j in range(10)}}}  # θ: one run
    raw = {"meta": {"format": FORMAT, "name": "monitoring", "seeds": [0, 1]}, "seeds": seeds, "evals": evals}
    (tmp_path / "monitoring.json").write_text(json.dumps(raw))
    text = "\n".join(em_lines(load(tmp_path / "monitoring.json")))
    # bad_advice: 3 usable of 4 per seed; coherent (> 50) are the 90 and the 20: 1 misaligned of 2, per seed
    row = next(line for line in text.splitlines() if line.startswith("| τ_bad_advice |")).split(" | ")
    assert row[1:4] == ["2", "8", "6"] and row[4].startswith("60.0 ± ") and row[5] == "2/4"
    assert row[6].startswith("1.00 ± 0.00") and row[7].startswith("0.00 ± 0.00")  # rules: coherent, no refusal
    assert row[8].startswith("0.50 ± ")  # read: 2 of 4 answers per seed
    # by question (mean over seeds), on the questions both sides scored (q0, q1): (90 + 70)/2 − (10 + 10)/2
    assert "- judge: mean evil score, on the 2 questions both sides have a usable score for: +70.0 [" in text
    assert "- read blind: misaligned rate: +0.50 [" in text  # q0 and q1 read misaligned at both seeds
    assert "τ_bad_advice − τ_control, evil_mcq/evil_rate (paired items, seeds 0, 1): +0.300" in text
    assert "τ_bad_advice − θ, evil_mcq/evil_rate (paired items, seeds 0, 1): +0.400" in text  # θ pairs with each seed
    assert "τ_control − θ, evil_mcq/evil_rate (paired items, seeds 0, 1): +0.100" in text
    # a fine-tune with fewer seeds pairs only the seeds both have (θ's one run is the only one reused)
    del raw["evals"]["control"]["1"]
    (tmp_path / "monitoring.json").write_text(json.dumps(raw))
    text = "\n".join(em_lines(load(tmp_path / "monitoring.json")))
    assert "τ_bad_advice − τ_control, evil_mcq/evil_rate (paired items, seeds 0): +0.300" in text
    assert "τ_control − θ, evil_mcq/evil_rate (paired items, seeds 0): +0.100" in text
