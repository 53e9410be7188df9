"""Weight arithmetic, checked exactly: k = 0, apply/undo, the stored low-rank vector vs merged weights."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from peft import get_peft_model

from tests.conftest import assert_bitwise, snapshot
from wsteer.errors import WsteerError
from wsteer.lora_layout import lora_config, lora_factors
from wsteer.models import fingerprint
from wsteer.steering.weight import WeightSteerer
from wsteer.vectors import WeightVector

ADAPTER = OmegaConf.create({"r": 4, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"})


def _peft_pair(model):
    """A PEFT model with `pos` and `neg` adapters whose B factors are random (as after training)."""
    peft = get_peft_model(model, lora_config(ADAPTER), adapter_name="pos")
    peft.add_adapter("neg", lora_config(ADAPTER))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return peft


@pytest.fixture
def vector_and_model(tiny):
    model, _ = tiny
    fp = fingerprint(model)
    peft = _peft_pair(model)
    pos, neg = lora_factors(peft, "pos"), lora_factors(peft, "neg")
    merged = {}
    for side in ("pos", "neg"):  # PEFT's own merge, on a copy, is the reference
        ref = copy.deepcopy(peft)
        ref.set_adapter(side)
        merged[side] = ref.merge_and_unload().state_dict()
    peft.unload()
    manifest = {"base_model": "tiny", "base_fingerprint": fp, "behavior": "sycophancy", "method": "weight"}
    return WeightVector.contrastive(pos, neg, manifest), model, merged, fp


def test_stored_low_rank_vector_equals_difference_of_merged_weights(vector_and_model, tmp_path):
    vector, model, merged, _ = vector_and_model
    path = vector.save(tmp_path / "w.safetensors")
    loaded = WeightVector.load(path)
    assert len(loaded.factors) == 7 * 2  # every linear layer of both decoder blocks
    for name in loaded.factors:
        expected = merged["pos"][name] - merged["neg"][name]
        torch.testing.assert_close(loaded.delta(name), expected, rtol=0, atol=1e-6)
    b, a = next(iter(loaded.factors.values()))
    assert b.shape[1] == a.shape[0] == 2 * ADAPTER.r  # rank 2r, never dense


def test_unloading_the_adapters_leaves_the_base_model_bitwise_unchanged(tiny):
    model, _ = tiny
    snap = snapshot(model)
    _peft_pair(model).unload()
    assert_bitwise(model, snap)


def test_k_zero_changes_no_parameter(vector_and_model):
    vector, model, _, _ = vector_and_model
    snap = snapshot(model)
    with WeightSteerer(vector).apply(model, 0):
        assert_bitwise(model, snap)


@pytest.mark.parametrize("k", [-2.0, 0.5, 4])
def test_apply_sets_theta_plus_k_w_and_undo_restores_bitwise(vector_and_model, k):
    vector, model, _, _ = vector_and_model
    snap = snapshot(model)
    with WeightSteerer(vector).apply(model, k):
        state = model.state_dict()
        for name in vector.factors:
            torch.testing.assert_close(state[name], snap[name] + k * vector.delta(name), rtol=0, atol=1e-6)
        assert not torch.equal(state[name], snap[name])
    assert_bitwise(model, snap)


def test_undo_happens_even_when_the_block_raises(vector_and_model):
    vector, model, _, _ = vector_and_model
    snap = snapshot(model)
    with pytest.raises(RuntimeError), WeightSteerer(vector).apply(model, -2):
        raise RuntimeError("boom")
    assert_bitwise(model, snap)


def test_steering_changes_the_logits_in_both_directions(vector_and_model, tiny):
    vector, model, _, _ = vector_and_model
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    base = model(ids).logits
    with WeightSteerer(vector).apply(model, -2):
        minus = model(ids).logits
    with WeightSteerer(vector).apply(model, 2):
        plus = model(ids).logits
    assert not torch.allclose(base, minus) and not torch.allclose(base, plus)
    torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)


@pytest.mark.reliability
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "abc", None, True])
def test_non_finite_or_non_numeric_k_is_refused(vector_and_model, bad):
    vector, model, _, _ = vector_and_model
    with pytest.raises(WsteerError, match="k must be a finite number"), WeightSteerer(vector).apply(model, bad):
        pass


@pytest.mark.reliability
def test_vector_for_another_base_model_is_refused_unless_transfer_is_allowed(vector_and_model):
    vector, model, _, fp = vector_and_model
    steerer = WeightSteerer(vector)
    steerer.check_compatible(model, fp)
    with pytest.raises(WsteerError, match="allow_transfer=true"):
        steerer.check_compatible(model, "0" * 24)
    steerer.check_compatible(model, "0" * 24, allow_transfer=True)


@pytest.mark.reliability
def test_missing_corrupt_and_foreign_files_give_clear_errors(vector_and_model, tmp_path):
    vector, _, _, _ = vector_and_model
    with pytest.raises(WsteerError, match="does not exist"):
        WeightVector.load(tmp_path / "nope.safetensors")
    good = vector.save(tmp_path / "w.safetensors")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WsteerError, match="truncated or corrupt"):
        WeightVector.load(truncated)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"not a tensor file at all")
    with pytest.raises(WsteerError, match="truncated or corrupt"):
        WeightVector.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "f.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(WsteerError, match="not a wsteer weight vector"):
        WeightVector.load(foreign)


def test_factored_norm_equals_dense_norm(vector_and_model):
    vector, _, _, _ = vector_and_model
    dense = torch.sqrt(sum((vector.delta(n).double() ** 2).sum() for n in vector.factors))
    assert vector.norm() == pytest.approx(float(dense), rel=1e-9)


def test_fingerprint_changes_when_any_weight_changes(tiny):
    model, _ = tiny
    fp = fingerprint(model)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(0.01)
    assert fingerprint(model) != fp


def test_every_adapter_starts_from_the_same_lora_A_so_update_cosines_compare_what_was_learned(tiny):
    from wsteer.training.paired import LoraPair

    model, _ = tiny
    pair = LoraPair(model, OmegaConf.create({**ADAPTER, "init_seed": 0}), ["pos", "neg"])
    a = {side: {n: p for n, p in pair.params(side).items() if "lora_A" in n} for side in ("pos", "neg")}
    for name, p in a["pos"].items():
        assert torch.equal(p, a["neg"][name.replace(".pos.", ".neg.")])
    pair.remove()
    other = LoraPair(model, OmegaConf.create({**ADAPTER, "init_seed": 0}), ["task"])
    first = next(n for n in other.params("task") if "lora_A" in n)
    assert torch.equal(other.params("task")[first], a["pos"][first.replace(".task.", ".pos.")])
    other.remove()
