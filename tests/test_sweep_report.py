"""The multirun collector: a synthetic sweep folder becomes a table and a plot."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from wsteer.recipes.sweep_report import collect, run_report


def _job(root, method, k, metrics=None, report=None):
    job = root / f"k={k},method={method}"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"k": k, "method": {"name": method}, "behavior": {"name": "sycophancy"}}),
                   job / ".hydra" / "config.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({f"eval/heldout_tone/{n}@k={k:g}": v for n, v in metrics.items()}))
    if report is not None:
        (job / "report.md").write_text(report)


def test_sweep_report_collects_jobs_and_draws_one_line_per_method(tmp_path):
    for i, k in enumerate([-2, 0, 2]):
        _job(tmp_path, "weight", k, {"agree_rate": 0.1 * i, "pushback_rate": 0.5 - 0.2 * i, "changed_vs_k0": 1.0,
                                     "mean_words": 40.0})
    old_style = ("# r\n\n## Summary (held-out questions)\n\n| metric | k = 0 | k = -2 |\n|---|---|---|\n"
                 "| agree_rate | 0.05 | 0.00 |\n| pushback_rate | 0.20 | 0.45 |\n\n> note\n")
    _job(tmp_path, "activation", -2, report=old_style)
    (tmp_path / "unfinished" / ".hydra").mkdir(parents=True)  # a job without results is skipped
    rows = collect(tmp_path)
    assert [(r["method"], r["k"]) for r in rows] == [("activation", -2.0), ("weight", -2.0), ("weight", 0.0),
                                                       ("weight", 2.0)]
    assert rows[0]["pushback_rate"] == 0.45 and rows[3]["agree_rate"] == 0.2
    metrics = run_report(tmp_path)
    assert metrics["sweep/weight/agree_rate@k=2"] == 0.2
    assert (tmp_path / "sweep_report.png").stat().st_size > 10_000
    assert "| activation | -2 | 0.00 | 0.45 |" in (tmp_path / "sweep_report.md").read_text()
