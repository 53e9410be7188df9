"""Shared fixtures: offline environment, composed configs, the tiny in-process model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # Nothing in the default suite may reach a hub or W&B servers; a test that tries fails fast.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    torch.set_num_threads(1)  # 2 OpenMP threads collapse under contention (design/environment.md)


def compose_cfg(name: str, tmp_path: Path, overrides: list[str] = ()) -> OmegaConf:
    """A primary config as the CLI would build it, with outputs and caches under `tmp_path`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name=name,
            overrides=[f"output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
        )


@pytest.fixture
def smoke_cfg(tmp_path):
    def make(name: str = "steer", overrides: list[str] = ()):
        return compose_cfg(name, tmp_path, ["debug=smoke", "logger=none", *overrides])

    return make


@pytest.fixture
def tiny():
    from wsteer.models import load_model

    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    return load_model(cfg, "/nonexistent", device="cpu")


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(WSTEER_CACHE=str(tmp_path / "cache"), WANDB_MODE="offline", WANDB_DIR=str(tmp_path),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def snapshot(model) -> dict:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def assert_bitwise(model, snap: dict) -> None:
    state = model.state_dict()
    assert state.keys() == snap.keys()
    for n, t in snap.items():
        assert torch.equal(state[n], t), n
