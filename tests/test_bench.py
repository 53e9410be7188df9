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
