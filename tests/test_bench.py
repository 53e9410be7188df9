"""Smoke runs of the benches on the tiny model: they run, compare on the same inputs, and print ratios."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest


def run_main(monkeypatch, module, argv):
    monkeypatch.setattr(sys, "argv", [module.__file__, *argv])
    module.main()


def test_train_throughput_smoke(monkeypatch, tmp_path, capsys):
    from bench import train_throughput

    systems = "plain,ours,ours_grouped" + (",trl" if importlib.util.find_spec("trl") else "")
    out = tmp_path / "train.json"
    run_main(monkeypatch, train_throughput, ["--arch", "tiny", "--steps", "1", "--batch-size", "2",
                                             "--max-length", "192", "--systems", systems, "--json", str(out)])
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["plain_torch_peft_loop"]["ratio_vs_plain_torch_peft_loop"] == 1.0
    # the same work: every system trained the same number of rows per step on the same data
    assert rows["ours"]["tokens"] == rows["plain_torch_peft_loop"]["tokens"] > 0
    assert "vs trl_sfttrainer" in capsys.readouterr().out or "trl" not in systems


def test_generation_bench_smoke(monkeypatch, tmp_path):
    from bench import generation

    out = tmp_path / "gen.json"
    run_main(monkeypatch, generation, ["--arch", "tiny", "--max-new-tokens", "4", "--variants", "1",
                                       "--batch-size", "8", "--big-batch", "40", "--json", str(out)])
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"hf_generate_peft_unmerged", "hf_generate_merged", "ours", "ours_bs40"}
    assert rows["ours"]["agree"] == 1.0  # greedy, merged: our path answers exactly as plain generate
    assert rows["hf_generate_merged"]["new_tok_per_s"] > 0


@pytest.mark.parametrize("bench", ["k_switch", "memory"])
def test_other_benches_smoke(monkeypatch, tmp_path, bench):
    module = importlib.import_module(f"bench.{bench}")
    args = {"k_switch": ["--max-new-tokens", "3", "--switches", "2", "--repeats", "1", "--suite-max-items", "2"],
            "memory": ["--steps", "1", "--batch-size", "2", "--max-length", "192"]}[bench]
    run_main(monkeypatch, module, ["--arch", "tiny", *args, "--json", str(tmp_path / "out.json")])
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["rows"]
    if bench == "k_switch":  # the suite pass really ran the sycophancy evaluators on the loaded model
        assert out["suite"]["seconds"] > 0 and "factual_qa 2 items" in out["suite"]["what"]


def test_achieved_flops_are_a_share_of_the_peak_measured_in_the_same_run(monkeypatch, tmp_path):
    from bench import generation, peak, train_throughput

    run_main(monkeypatch, peak, ["--dtypes", "float32,bfloat16", "--threads-list", "1", "--rows", "64",
                                 "--repeats", "1", "--min-seconds", "0.01", "--json", str(tmp_path / "peak.json")])
    rows = json.loads((tmp_path / "peak.json").read_text())["rows"]
    assert [r["system"] for r in rows] == ["float32 1t 64 rows", "bfloat16 1t 64 rows"]
    assert all(r["gflops"] > 0 and r["threads"] == 1 for r in rows)
    for module, argv in ((train_throughput, ["--steps", "1", "--batch-size", "2", "--max-length", "192",
                                             "--systems", "plain,ours", "--precision", "bf16-mixed"]),
                         (generation, ["--max-new-tokens", "3", "--variants", "1", "--batch-size", "8",
                                       "--systems", "hf_generate_merged,ours", "--dtype", "bfloat16"])):
        out = tmp_path / f"{module.__name__}.json"
        run_main(monkeypatch, module, ["--arch", "tiny", "--peak-seconds", "0.01", *argv, "--json", str(out)])
        for r in json.loads(out.read_text())["rows"]:
            assert r["peak_gflops"] > 0 and 0 < r["share_of_peak"] == pytest.approx(r["gflops"] / r["peak_gflops"])


def test_threads_bench_times_each_setting_in_its_own_process(monkeypatch, tmp_path):
    from bench import threads

    out = tmp_path / "threads.json"
    run_main(monkeypatch, threads, ["--arch", "tiny", "--settings", "1,1+interop1", "--repeats", "1", "--steps", "1",
                                    "--batch-size", "2", "--max-length", "192", "--prompts", "4",
                                    "--max-new-tokens", "3", "--gen-batch-size", "4", "--json", str(out)])
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    assert (rows["1"]["threads"], rows["1+interop1"]["interop_threads"]) == (1, 1)
    assert rows["1"]["train_ratio"] == rows["1"]["gen_ratio"] == 1.0
    assert rows["1+interop1"]["train_tok_per_s"] > 0 and rows["1+interop1"]["gen_new_tok_per_s"] > 0


def test_precision_study_smoke_pairs_items_by_id_and_keys_the_store_on_dtype(monkeypatch, tmp_path, capsys):
    from bench import precision

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "precision.json"
    run_main(monkeypatch, precision, ["--smoke", "--work", str(tmp_path / "w"), "--cache", str(tmp_path / "cache"),
                                      "--json", str(out)])
    arm = json.loads(out.read_text())["arms"]["bfloat16"]
    seen = {(r["evaluator"], r["k"], r["metric"]) for r in arm["rows"]}
    for ev, metric in (("factual_qa", "accuracy"), ("mmlu", "accuracy")):
        assert {(ev, 0.0, metric), (ev, -2.0, metric)} <= seen
    assert all(r["delta"]["method"] == "paired bootstrap" for r in arm["rows"])
    agree = {(a["evaluator"], a["k"]): a for a in arm["agreement"]}
    assert agree[("factual_qa", -2.0)]["items"] == 4 and agree[("factual_qa", -2.0)]["answers"] == 16
    # both arms steered with the same w; each dtype has its own items at each k (k = 0 and k = -2)
    assert len(list((tmp_path / "cache" / "eval" / "factual_qa").iterdir())) == 4
    assert len(list((tmp_path / "cache" / "vectors").rglob("COMPLETE"))) == 1
    assert "| mmlu | -2 | 4 |" in capsys.readouterr().out


@pytest.mark.slow  # four steer.py subprocesses (tiny model): ~40 s on a quiet machine, minutes on a loaded one
def test_main_job_compares_old_and_new_defaults_interleaved_on_fresh_caches(monkeypatch, tmp_path, capsys):
    from bench import main_job

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "main_job.json"
    run_main(monkeypatch, main_job, ["--smoke", "--old", "", "--new", "model.dtype=bfloat16",
                                     "--work", str(tmp_path / "w"), "--json", str(out)])
    res = json.loads(out.read_text())
    assert set(res["ratios"]) == {"first", "cached"} and all(v > 0 for v in res["ratios"].values())
    for side in ("old", "new"):
        assert (tmp_path / "w" / side / "cache" / "eval").is_dir()  # each side its own cache
        first, cached = res["results"][side]["first"], res["results"][side]["cached"]
        assert first["metrics"] and first["metrics"] == cached["metrics"]
        assert "train" in first["stages"] and "train" not in cached["stages"]
    printed = capsys.readouterr().out
    assert printed.index("old first") < printed.index("new first") < printed.index("old cached")
    assert "new inside old's 95% interval" in printed
