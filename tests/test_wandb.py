"""W&B runs a dashboard can use, read back from the offline run files with wandb's own record format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, subprocess_env
from tests.wandb_records import read_run


def test_a_smoke_multirun_gives_grouped_named_tagged_runs_with_k_as_step_and_a_tidy_table(tmp_path):
    env = subprocess_env(tmp_path)
    sweep = tmp_path / "my-sweep"
    proc = subprocess.run([sys.executable, "steer.py", "-m", "debug=smoke", "method=weight,activation", "k=-1",
                           "seed=3", f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2
    runs = [read_run(f) for f in files]
    names = sorted(r["run"].display_name for r in runs)
    assert names == ["steer: debug=smoke method=activation k=-1 seed=3", "steer: debug=smoke method=weight k=-1 seed=3"]
    for f, r in zip(files, runs, strict=True):
        run = r["run"]
        method = "weight" if "method=weight" in run.display_name else "activation"
        assert run.run_group == "my-sweep" and run.job_type == "steer"
        assert set(run.tags) == {"sycophancy", "tiny", method, "seed=3"}
        # the config stays small: the behavior's prompt lists are counts and hashes (the lists are an artifact)
        assert r["config"]["seed"] == 3 and len(json.dumps(r["config"])) < 6000
        assert r["config"]["behavior"]["build_questions"]["n"] == 20
        assert "artifact" in r["records"]
        # metrics against k: a step metric, one history row per k with the metric names free of k
        assert r["metrics"].get("eval/*") == "k"
        rows = {h["k"]: h for h in r["history"] if "k" in h}
        assert set(rows) == {-1.0, 0.0}
        assert "eval/mmlu/accuracy" in rows[-1.0] and "eval/mmlu/accuracy_stderr" in rows[-1.0]
        # the run's own k in the summary without k in the key, beside the @k= keys
        assert r["summary"]["k"] == -1.0
        assert r["summary"]["eval/mmlu/accuracy"] == r["summary"]["eval/mmlu/accuracy@k=-1"]
        # the tidy table
        table_row = next(h for h in r["history"] if h.get("results/_type") == "table-file")
        table = json.loads((f.parent / "files" / table_row["results/path"]).read_text())
        assert table["columns"] == ["method", "k", "seed", "evaluator", "metric", "value", "stderr", "n"]
        acc = [row for row in table["data"] if row[3] == "mmlu" and row[4] == "accuracy"]
        assert {row[1] for row in acc} == {-1.0, 0.0} and all(row[0] == method and row[2] == 3 for row in acc)
        assert all(row[6] is not None and row[7] == 4 for row in acc)  # stderr and n (debug=smoke: 4 items)
        # the vector's training curve travels with every run that uses it
        if method == "weight":
            assert any(h.get("vector/val_history/_type") == "table-file" for h in r["history"])
    assert Path(sweep).is_dir()


def test_a_layer_sweep_logs_one_row_per_layer_against_layer_as_step(smoke_cfg, tmp_path):
    from wsteer.recipes import steer as steer_recipe

    steer_recipe.run(smoke_cfg("steer", ["logger=wandb", f"logger.dir={tmp_path}", "method=activation", "layers=all", "k=-2"]))
    r = read_run(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))
    assert r["metrics"]["layer_sweep/*"] == "layer"
    rows = [h for h in r["history"] if "layer" in h]
    assert [h["layer"] for h in rows] == [1, 2]  # the tiny model's two layers
    assert all("layer_sweep/pushback_rate@k=-2" in h and "layer_sweep/pushback_rate_stderr@k=-2" in h for h in rows)
