"""The exact weight arithmetic, every steering method and the whole `steer` recipe on a CUDA device.

CI has no GPU, so these are marked `gpu` and skip there; run them with `pytest -m gpu tests/` on a GPU machine
(bench/gpu_run.sh stage `tests`). `WSTEER_TEST_DEVICE=cpu pytest -m gpu tests/test_cuda.py` runs the same bodies
on the CPU, which checks the tests themselves without a GPU.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_bitwise, snapshot
from tests.test_methods import (
    IDS,
    NAMES,
    assert_k_zero_is_a_no_op_and_undo_is_exact,
    build_every_artifact,
    method_config,
    steerers,
)
from wsteer.generation import generate

DEVICE = os.environ.get("WSTEER_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA"),
]
ACCELERATOR = "gpu" if DEVICE == "cuda" else "cpu"


def _compose(tmp: Path, extra: list[str] = ()):
    return method_config(tmp, [f"device={DEVICE}", f"trainer.accelerator={ACCELERATOR}",
                               f"eval.accelerator={ACCELERATOR}", *extra])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every artifact kind trained on the device through Lightning (LoRA pair, biases, activations, checkpoints)."""
    return build_every_artifact(_compose(tmp_path_factory.mktemp("cuda")))


def test_the_model_and_its_training_ran_on_the_device(built):
    ctx, arts = built
    assert next(ctx.model.parameters()).device.type == DEVICE
    hist = arts["lora"]["contrastive"].manifest["val_history"]
    for side in ("pos", "neg"):  # training moved the validation loss, so it really ran
        losses = [h["loss"] for h in hist if h["side"] == side]
        assert len(losses) > 1 and min(losses[1:]) < losses[0], hist


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_k_zero_is_a_no_op_and_undo_is_bitwise_on_the_device(built, name, dtype):
    ctx, arts = built
    model = ctx.model if dtype == torch.float32 else copy.deepcopy(ctx.model).to(dtype)
    assert_k_zero_is_a_no_op_and_undo_is_exact(steerers(ctx, arts)[name], model, name, IDS.to(DEVICE))


@pytest.mark.parametrize("k", [-2.0, 4])
def test_weight_steering_sets_theta_plus_k_w_on_the_device(built, k):
    from wsteer.steering.weight import WeightSteerer

    ctx, arts = built
    vector = arts["lora"]["contrastive"]
    snap = snapshot(ctx.model)
    with WeightSteerer(vector).apply(ctx.model, k):
        state = ctx.model.state_dict()
        for name in vector.factors:
            expected = snap[name] + k * vector.delta(name).to(snap[name].device)
            torch.testing.assert_close(state[name], expected, rtol=0, atol=1e-6)
    assert_bitwise(ctx.model, snap)


@pytest.mark.parametrize("name", ["weight", "activation", "activation_all_layers"])
def test_batched_generation_equals_unbatched_under_steering_on_the_device(built, name):
    ctx, arts = built
    steerer = steerers(ctx, arts)[name]
    convs = [steerer.conversation([{"role": "user", "content": q}], -2) for q in ctx.behavior.heldout_questions[:4]]
    with steerer.apply(ctx.model, -2):
        batched = generate(ctx.model, ctx.tokenizer, convs, max_new_tokens=8, batch_size=4, compile=False)
        single = [generate(ctx.model, ctx.tokenizer, [c], max_new_tokens=8, batch_size=1, compile=False)[0]
                  for c in convs]
    assert batched == single


def test_steer_recipe_end_to_end_on_the_device(tmp_path):
    """`python steer.py device=cuda ...` in-process: train, steer, evaluate through Trainer.test, report."""
    from wsteer.recipes import steer as steer_recipe

    cfg = _compose(tmp_path, ["k=-20"])
    metrics = steer_recipe.run(cfg)
    out = Path(cfg.output_dir)
    assert "| k = 0 | k = -20 |" in (out / "report.md").read_text()
    assert json.loads((out / "metrics.json").read_text())
    assert metrics["eval/heldout_tone/changed_vs_k0@k=-20"] > 0
