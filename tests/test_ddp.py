"""Multi-device paired training (conf/trainer/ddp.yaml) on two CPU processes with Lightning DDP over gloo.

A paired step runs one backward per side, each touching only that side's LoRA weights, so DDP must be told to
expect unused parameters and must see both sides as trainable when it wraps the model; the data module shards the
training rows per rank itself. These tests run real DDP (two processes), no GPU needed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True,
                          text=True, timeout=timeout)


def test_ddp_averages_both_sides_and_matches_the_one_process_reference(tmp_path):
    out = tmp_path / "w"
    for mode in ("ddp", "reference"):
        r = run(["tests/ddp_worker.py", str(out), mode], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    ranks = [load_file(str(out / f"rank{i}.safetensors")) for i in range(2)]
    ref = load_file(str(out / "reference.safetensors"))
    with safe_open(str(out / "rank0.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta == {"world_size": "2", "steps": "4"}
    assert ranks[0].keys() == ranks[1].keys() == ref.keys()
    assert any(k.startswith("neg/") for k in ref) and any(k.startswith("pos/") for k in ref)
    for name in ref:
        # each rank saw other rows: identical weights mean both sides' gradients were averaged every step
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    # and training moved both sides (lora_B starts at zero)
    for side in ("pos", "neg"):
        assert any(ref[n].abs().sum() > 0 for n in ref if n.startswith(f"{side}/") and "lora_B" in n), side


def test_steer_py_trains_on_two_ddp_processes_then_evaluates_once(tmp_path):
    """The CLI path: Lightning relaunches the Hydra command per rank; the helper rank leaves after training, and
    rank 0 alone builds the vector, evaluates and logs the one W&B run."""
    out = tmp_path / "run"
    r = run(["steer.py", "debug=smoke", f"hydra.run.dir={out}", "trainer.accelerator=cpu",
             "+trainer.devices=2", "+trainer.strategy=ddp"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in r.stdout + r.stderr  # two processes really trained
    assert "sync_dist" not in r.stderr  # validation losses are logged consistently across ranks
    assert len(list((tmp_path / "cache" / "vectors").rglob("contrastive.safetensors"))) == 1
    assert (out / "metrics.json").is_file() and len(list(out.glob("train_ddp_process_*.log"))) == 1
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_multi_device_needs_ddp_and_paired_training_refuses_fsdp(smoke_cfg, monkeypatch):
    from wsteer.config import check_multi_device
    from wsteer.errors import WsteerError
    from wsteer.recipes import steer as steer_recipe
    from wsteer.recipes import train as train_recipe

    trainer = lambda *o: smoke_cfg("train", ["+trainer.devices=2", *o]).trainer  # noqa: E731
    check_multi_device(trainer("+trainer.strategy=ddp"), paired=True)
    check_multi_device(trainer("+trainer.strategy=fsdp"))  # one adapter (task fine-tunes)
    with pytest.raises(WsteerError, match="paired adapters train on several devices with DDP; use trainer=ddp"):
        check_multi_device(trainer("+trainer.strategy=fsdp"), paired=True)
    with pytest.raises(WsteerError, match="use trainer.strategy=ddp"):
        check_multi_device(trainer("+trainer.strategy=ddp_spawn"))  # its best weights would stay in the children
    # refused by the config check, before the model is even loaded: FSDP for the paired adapters, and several
    # devices for training and evaluation in one run (no strategy at all: tests/test_reliability.py)
    def no_load(*a, **kw):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr("wsteer.recipes._common.load_model", no_load)
    with pytest.raises(WsteerError, match="paired adapters train on several devices with DDP"):
        train_recipe.run(smoke_cfg("train", ["+trainer.devices=2", "+trainer.strategy=fsdp"]))
    with pytest.raises(WsteerError, match="trainer.devices=2 and eval.devices=2 in one run"):
        steer_recipe.run(smoke_cfg("steer", ["+trainer.devices=2", "+trainer.strategy=ddp", "eval.devices=2"]))


def test_ddp_inside_a_multirun_is_refused_before_anything_runs(tmp_path):
    r = run(["train.py", "-m", "debug=smoke", "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}",
             "+trainer.devices=2", "+trainer.strategy=ddp", "seed=0,1"], tmp_path, timeout=300)
    assert r.returncode != 0
    assert "inside a Hydra multirun (-m): each rank would rerun the whole sweep" in r.stdout + r.stderr
    assert "GLOBAL_RANK" not in r.stdout + r.stderr  # no rank was ever started


def test_all_visible_gpus_enter_the_cache_key_as_their_number(smoke_cfg, monkeypatch):
    """trainer=ddp trains on every visible GPU: 4 and 8 GPUs are different global batches, so different vectors."""
    import torch

    from wsteer.training.build import artifact_settings as _settings

    cfg = smoke_cfg("train", ["+trainer.devices=-1", "trainer.accelerator=gpu"])
    keys = {}
    for n in (4, 8):
        monkeypatch.setattr(torch.cuda, "device_count", lambda n=n: n)
        keys[n] = _settings(cfg, "lora")["trainer"]["devices"]
    assert keys == {4: 4, 8: 8}
    assert _settings(smoke_cfg("train"), "lora")["trainer"].get("devices") is None  # one device: key unchanged
