"""Checks on the embedded default model (SmolLM2-135M-Instruct from the GGUF): `pytest -m slow`."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT
from wsteer.models import fingerprint, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    import os

    cache = os.environ.get("WSTEER_CACHE", "~/.cache/wsteer")
    return load_model(OmegaConf.load(CONF / "model" / "smollm2_135m.yaml"), cache, device="cpu")


def test_embedded_model_loads_as_the_documented_architecture(smollm):
    model, tok = smollm
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("behavior", ["sycophancy", "evil", "refusal"])
def test_shipped_pairs_were_sampled_from_this_exact_model(smollm, behavior):
    model, _ = smollm
    manifest = json.loads((ROOT / f"data/pairs/{behavior}/smollm2_135m/manifest.json").read_text())
    assert manifest["key"]["model_fingerprint"] == fingerprint(model)
    assert min(manifest["counts"].values()) >= 20
    assert manifest["command"].startswith("python train.py stage=data")
