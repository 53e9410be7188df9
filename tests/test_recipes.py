"""The recipes end to end on the tiny model: real Lightning training, real W&B offline runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsteer.recipes import evaluate as evaluate_recipe
from wsteer.recipes import steer as steer_recipe
from wsteer.recipes import train as train_recipe
from wsteer.vectors import WeightVector


def test_paired_training_lowers_validation_loss_of_both_adapters(smoke_cfg):
    cfg = smoke_cfg("train")
    train_recipe.run(cfg)
    vector = WeightVector.load(Path(cfg.output_dir) / "vector.safetensors")
    hist = vector.manifest["val_history"]
    for side in ("pos", "neg"):
        start = next(h["loss"] for h in hist if h["side"] == side and h["step"] == 0)
        assert vector.manifest["best"][side]["val_loss"] < start - 0.1, (side, hist)
    assert vector.manifest["base_fingerprint"] and vector.manifest["data_hash"]
    assert vector.norm() > 0


def test_steer_end_to_end_writes_report_and_wandb_run_then_reuses_the_vector(smoke_cfg, tmp_path, capsys):
    # The random tiny model mostly answers with an empty string; k = -20 moves it visibly (the real model: k = -2).
    cfg = smoke_cfg("steer", ["logger=wandb", f"logger.dir={tmp_path}", "k=-20"])
    metrics = steer_recipe.run(cfg)
    report = (Path(cfg.output_dir) / "report.md").read_text()
    assert "| k = 0 | k = -20 |" in report
    assert metrics["eval/heldout_tone/changed_vs_k0@k=-20"] > 0  # the steered answers differ
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # a real offline W&B run
    assert "built in this run" in report

    cfg2 = smoke_cfg("steer", ["k=[-20,1]"])
    steer_recipe.run(cfg2)
    report2 = (Path(cfg2.output_dir) / "report.md").read_text()
    assert "(reused)" in report2 and "| k = 0 | k = -20 | k = 1 |" in report2
    # same vector, same greedy decoding: the k = -20 answers are reproduced exactly
    rows = lambda d: [line for line in (Path(d) / "generations.jsonl").read_text().splitlines() if '"k": -20' in line]  # noqa: E731
    assert rows(cfg.output_dir) == rows(cfg2.output_dir)


def test_steer_saves_the_steered_model_as_an_hf_folder(smoke_cfg):
    from transformers import AutoModelForCausalLM

    cfg = smoke_cfg("steer", ["save_model=true", "k=-2"])
    steer_recipe.run(cfg)
    folder = Path(cfg.output_dir) / "steered_model_k=-2"
    saved = AutoModelForCausalLM.from_pretrained(folder)
    vector = WeightVector.load(next(Path(cfg.paths.cache_dir).glob("vectors/**/contrastive.safetensors")))
    from wsteer.models import build_tiny_model, build_tiny_tokenizer

    base = build_tiny_model(cfg.model, len(build_tiny_tokenizer()))
    name = next(iter(vector.factors))
    expected = base.state_dict()[name] - 2 * vector.delta(name)
    torch.testing.assert_close(saved.state_dict()[name], expected, rtol=0, atol=1e-6)


def test_evaluate_runs_on_the_base_model_and_with_a_vector(smoke_cfg):
    cfg = smoke_cfg("train")
    train_recipe.run(cfg)
    vec = Path(cfg.output_dir) / "vector.safetensors"
    base = evaluate_recipe.run(smoke_cfg("evaluate"))
    assert "eval/heldout_tone/mean_words@k=0" in base
    steered = evaluate_recipe.run(smoke_cfg("evaluate", [f"vector={vec}", "k=-2"]))
    assert "eval/heldout_tone/mean_words@k=-2" in steered


def test_stage_data_samples_only_and_copies_the_dataset(smoke_cfg, tmp_path):
    dest = tmp_path / "shipped" / "pairs"
    metrics = train_recipe.run(smoke_cfg("train", ["stage=data", f"pairs_out={dest}"]))
    from wsteer.data.pairs import load_pairs

    dd, manifest = load_pairs(dest)
    assert metrics["data/count_pos"] == len(dd["pos"]) == manifest["counts"]["pos"]
    assert not list(Path(tmp_path / "cache").glob("vectors/**/*.safetensors"))  # no training happened


def test_steer_exports_adapters_composes_behaviors_and_lists_the_library(smoke_cfg, tmp_path, capsys):
    cfg = smoke_cfg("steer", ["export_adapter=true", "k=-2"])
    steer_recipe.run(cfg)
    assert (Path(cfg.output_dir) / "adapter_k=-2" / "adapter_config.json").is_file()
    train_recipe.run(smoke_cfg("train", ["behavior=evil", f"output_dir={tmp_path / 'evil'}"]))

    comp = smoke_cfg("steer", ["k={sycophancy: -2, evil: -1}", f"output_dir={tmp_path / 'comp'}"])
    steer_recipe.run(comp)
    report = (tmp_path / "comp" / "report.md").read_text()
    assert "Composition: -2·w[sycophancy] + -1·w[evil]" in report

    capsys.readouterr()
    steer_recipe.run(smoke_cfg("steer", ["list_vectors=true"]))
    listing = capsys.readouterr().out
    assert "sycophancy" in listing and "evil" in listing and "contrastive" in listing


@pytest.mark.reliability
def test_save_model_with_a_hook_method_is_refused_up_front(smoke_cfg):
    import pytest

    from wsteer.errors import WsteerError

    with pytest.raises(WsteerError, match="save_model/export_adapter need a weight-vector method"):
        steer_recipe.run(smoke_cfg("steer", ["method=activation", "save_model=true"]))


def test_a_cached_rerun_generates_no_token_and_writes_the_same_report(smoke_cfg, monkeypatch):
    """Issue 19: the held-out answers and every evaluator go through the item store, so the second run of the same
    command (vector cached) generates nothing, does not even merge k·w into the weights, and reports the same
    numbers."""
    from transformers.generation.utils import GenerationMixin

    from wsteer.steering.weight import WeightSteerer

    first = smoke_cfg("steer", ["k=[-20,1]"])
    steer_recipe.run(first)
    calls = []
    real = GenerationMixin.generate
    monkeypatch.setattr(GenerationMixin, "generate", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    real_apply = WeightSteerer.apply
    monkeypatch.setattr(WeightSteerer, "apply", lambda self, *a, **kw: calls.append("apply") or real_apply(self, *a, **kw))
    second = smoke_cfg("steer", ["k=[-20,1]", f"output_dir={Path(first.output_dir).parent / 'again'}"])
    steer_recipe.run(second)
    assert calls == []

    def without_vector_line(cfg):  # the first run built the vector, the second reused it: that line differs
        text = (Path(cfg.output_dir) / "report.md").read_text()
        return [line for line in text.splitlines() if not line.startswith("- **vector**")]
    assert without_vector_line(first) == without_vector_line(second)
    for name in ("metrics.json", "generations.jsonl", "eval_items.jsonl"):
        assert (Path(first.output_dir) / name).read_text() == (Path(second.output_dir) / name).read_text(), name
