"""The monitoring experiment end to end on the tiny model: vectors, monitored fine-tunes, heatmaps, curves."""

from __future__ import annotations

import csv
from pathlib import Path

from wsteer.recipes import train as train_recipe


def test_monitoring_experiment_writes_heatmaps_curves_and_unjudged_em_answers(smoke_cfg):
    cfg = smoke_cfg("train", ["experiment=monitoring", "monitoring.every_n_steps=2", "task.steps=4"])
    results = train_recipe.run(cfg)
    out = Path(cfg.output_dir)
    for name in ("cosine_w_vs_tau.png", "cosine_w_vs_w.png", "cosine_tau_vs_tau.png", "monitor_curves.png"):
        assert (out / name).stat().st_size > 5_000, name
    for ft in ("bad_advice", "control"):
        rows = list(csv.DictReader((out / ft / "monitor.csv").open()))
        assert {r["reference"] for r in rows} == {"evil", "bad_advice", "french"}
        assert sorted({int(r["step"]) for r in rows}) == [2, 4]
    assert "cos/w_evil/τ_bad_advice" in results and -1 <= results["cos/w_evil/τ_bad_advice"] <= 1
    report = (out / "monitoring.md").read_text()
    assert "## w vs τ" in report and "hey I feel bored" in report
