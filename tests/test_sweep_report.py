"""The multirun collector: a synthetic sweep folder becomes a table, the trade-off plot and the tone plot."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from wsteer.errors import WsteerError
from wsteer.recipes.sweep_report import collect, run_report

TRADEOFF = {"behavior": "factual_qa/non_sycophancy", "capability": "factual_qa/accuracy"}


def _job(root, method, k, metrics=None, report=None, tradeoff=TRADEOFF):
    job = root / f"k={k},method={method}"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"k": k, "method": {"name": method}, "behavior": {"name": "sycophancy"},
                                     "tradeoff": tradeoff}), job / ".hydra" / "config.yaml")
    if metrics is not None:
        flat = {f"eval/{n}@k={kk:g}": v for kk, m in metrics.items() for n, v in m.items()}
        (job / "metrics.json").write_text(json.dumps(flat))
    if report is not None:
        (job / "report.md").write_text(report)


def _m(acc, nonsyc, agree=0.1):
    return {"factual_qa/accuracy": acc, "factual_qa/non_sycophancy": nonsyc, "heldout_tone/agree_rate": agree,
            "heldout_tone/pushback_rate": 1 - agree}


def test_sweep_report_collects_jobs_and_draws_the_tradeoff_plot(tmp_path):
    base = _m(0.6, 0.3)
    for k, (acc, ns) in {-2: (0.5, 0.6), 2: (0.4, 0.1)}.items():
        _job(tmp_path, "weight", k, {0: base, k: _m(acc, ns)})
        _job(tmp_path, "activation", k, {0: base, k: _m(acc - 0.2, ns - 0.05)})
    old_style = ("# r\n\n## Summary (held-out questions)\n\n| metric | k = 0 | k = -4 |\n|---|---|---|\n"
                 "| agree_rate | 0.05 | 0.00 |\n| pushback_rate | 0.20 | 0.45 |\n\n> note\n")
    _job(tmp_path, "bias", -4, report=old_style)
    (tmp_path / "unfinished" / ".hydra").mkdir(parents=True)  # a job without results is skipped
    rows, tradeoff = collect(tmp_path)
    assert tradeoff == TRADEOFF
    assert [(r["method"], r["k"]) for r in rows] == [
        ("activation", -2.0), ("activation", 0.0), ("activation", 2.0), ("bias", -4.0),
        ("weight", -2.0), ("weight", 0.0), ("weight", 2.0)]
    assert rows[3]["heldout_tone/pushback_rate"] == 0.45
    metrics = run_report(tmp_path)
    assert metrics["sweep/weight/factual_qa/non_sycophancy@k=-2"] == 0.6
    assert metrics["sweep/activation/factual_qa/accuracy@k=2"] == pytest.approx(0.2)
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    assert (tmp_path / "sweep_report.png").stat().st_size > 10_000
    md = (tmp_path / "sweep_report.md").read_text()
    assert "| weight | -2 | 1 | 0.600 | 0.500 |" in md and "tradeoff.png" in md


def test_a_tradeoff_metric_no_job_measured_is_named_and_the_rest_is_reported(tmp_path, capsys):
    _job(tmp_path, "weight", -2, {0: _m(0.6, 0.3), -2: _m(0.5, 0.6)},
         tradeoff={"behavior": "evil_mcq/evil_rate", "capability": "mmlu/accuracy"})
    metrics = run_report(tmp_path)
    assert metrics["sweep/weight/factual_qa/accuracy@k=-2"] == 0.5
    assert "no job scored evil_mcq/evil_rate, mmlu/accuracy" in (tmp_path / "sweep_report.md").read_text()
    assert "warning" in capsys.readouterr().out and not (tmp_path / "tradeoff.png").exists()


def test_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(WsteerError, match="no finished"):
        run_report(tmp_path)


def test_report_metrics_add_columns_and_an_unknown_one_is_a_clear_error(tmp_path):
    _job(tmp_path, "weight", -2, {0: {**_m(0.6, 0.3), "mmlu/accuracy": 0.3}, -2: {**_m(0.5, 0.6), "mmlu/accuracy": 0.4}})
    run_report(tmp_path, extra_metrics=["mmlu/accuracy"])
    assert "| method | k | seeds | factual_qa/non_sycophancy | factual_qa/accuracy | mmlu/accuracy |" in (
        tmp_path / "sweep_report.md").read_text()
    with pytest.raises(WsteerError, match="report_metrics.*mmlu/acc"):
        run_report(tmp_path, extra_metrics=["mmlu/acc"])
