"""Exports and the vector library, checked against plain PEFT and exact arithmetic on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from tests.conftest import CONF, assert_bitwise, snapshot, subprocess_env
from wsteer.errors import WsteerError
from wsteer.export import export_merged_model, export_peft_adapter
from wsteer.generation import generate, render_prompt
from wsteer.library import check_fingerprint, compose, format_listing, list_vectors
from wsteer.library import main as library_main
from wsteer.lora_layout import lora_config, lora_factors
from wsteer.models import fingerprint, load_model, mlp_output_projections
from wsteer.steering.bias import BiasSteerer
from wsteer.steering.weight import WeightSteerer
from wsteer.vectors import DenseVector, WeightVector

ADAPTER = OmegaConf.create({"r": 4, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"})
CONVS = [[{"role": "user", "content": q}] for q in ("Is my plan to quit my job good?", "Rate my poem.", "Hi")]
MAX_NEW = 10
K_GEN = -8.0  # the random tiny model only repeats "\n" until the vector is pushed this hard: a real check


def _greedy_ids(model, tok) -> list[list[int]]:
    """Token ids of greedy answers (the texts alone can hide differences the byte tokenizer decodes away)."""
    out = []
    for conv in CONVS:
        ids = torch.tensor([render_prompt(tok, conv)])
        seq = model.generate(input_ids=ids, max_new_tokens=MAX_NEW, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        out.append(seq[0, ids.shape[1]:].tolist())
    return out


def _fresh_tiny():
    return load_model(OmegaConf.load(CONF / "model" / "tiny.yaml"), "/nonexistent", device="cpu")


def _contrastive(model, seed: int, behavior: str, target_modules="all-linear") -> WeightVector:
    """w from two PEFT adapters with random factors (as after training); the base model is left untouched."""
    cfg = OmegaConf.merge(ADAPTER, {"target_modules": target_modules})
    peft = get_peft_model(model, lora_config(cfg), adapter_name="pos")
    peft.add_adapter("neg", lora_config(cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pos, neg = lora_factors(peft, "pos"), lora_factors(peft, "neg")
    peft.unload()
    manifest = {"base_model": "wsteer/tiny-random-llama", "base_fingerprint": fingerprint(model),
                "behavior": behavior, "method": "lora", "variant": "contrastive", "lora": dict(ADAPTER)}
    vec = WeightVector.contrastive(pos, neg, manifest)
    vec.manifest["norm"] = vec.norm()
    return vec


@pytest.fixture
def setup(tiny):
    model, tok = tiny
    return model, tok, _contrastive(model, seed=1, behavior="sycophancy")


def _merge_exported(folder):
    fresh, _ = _fresh_tiny()
    return PeftModel.from_pretrained(fresh, str(folder)).merge_and_unload()


def _assert_merged_is_theta_plus(merged, snap, deltas: dict[str, torch.Tensor]):
    state = merged.state_dict()
    assert state.keys() == snap.keys()
    for n, t in snap.items():
        if n in deltas:
            torch.testing.assert_close(state[n], t + deltas[n], rtol=0, atol=1e-6)
            assert not torch.equal(state[n], t), n
        else:
            assert torch.equal(state[n], t), n  # uncovered weights bitwise unchanged


@pytest.mark.parametrize("k", [-2.0, 1.5])
def test_exported_adapter_merged_by_plain_peft_is_theta_plus_k_w_and_leaves_the_rest_bitwise(
    setup, tmp_path, k
):
    model, _, vector = setup
    snap = snapshot(model)
    folder = export_peft_adapter(vector, k, tmp_path / "adapter", "wsteer/tiny-random-llama")
    merged = _merge_exported(folder)
    assert fingerprint(_fresh_tiny()[0]) == vector.manifest["base_fingerprint"]  # same base θ
    _assert_merged_is_theta_plus(merged, snap, {n: k * vector.delta(n) for n in vector.factors})


def test_generations_of_the_peft_loaded_adapter_equal_in_process_steering(setup, tmp_path):
    model, tok, vector = setup
    folder = export_peft_adapter(vector, K_GEN, tmp_path / "adapter", "wsteer/tiny-random-llama")
    merged = _merge_exported(folder)
    with WeightSteerer(vector).apply(model, K_GEN):
        steered = generate(model, tok, CONVS, max_new_tokens=MAX_NEW, batch_size=1, progress=False)
        steered_ids = _greedy_ids(model, tok)
    exported = generate(merged, tok, CONVS, max_new_tokens=MAX_NEW, batch_size=1, progress=False)
    assert exported == steered
    assert _greedy_ids(merged, tok) == steered_ids
    assert steered_ids != _greedy_ids(model, tok)  # the steering really changes the answers


def test_adapter_folder_is_a_standard_rank_2r_lora_with_scaling_one(setup, tmp_path):
    model, _, vector = setup
    folder = export_peft_adapter(vector, -2.0, tmp_path / "a", "some/base", model=model)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == config["lora_alpha"] == 2 * ADAPTER.r
    assert not config["use_rslora"] and not config["use_dora"] and config["lora_dropout"] == 0
    # with the model at hand, leaf names: they select exactly the vector's modules
    leaves = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert config["target_modules"] == sorted(leaves)
    assert config["base_model_name_or_path"] == "some/base"
    tensors = load_file(folder / "adapter_model.safetensors")
    assert len(tensors) == 2 * len(vector.factors)
    name = "model.layers.0.self_attn.q_proj.weight"
    b, a = vector.factors[name]
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    torch.testing.assert_close(tensors[f"{key}.lora_B.weight"], -2.0 * b)
    assert torch.equal(tensors[f"{key}.lora_A.weight"], a)
    meta = json.loads((folder / "wsteer_manifest.json").read_text())
    assert meta["k"] == -2.0 and meta["vector"]["behavior"] == "sycophancy"
    card = (folder / "README.md").read_text()
    assert "base_model: some/base" in card and "k = -2" in card and "--max-lora-rank 8" in card
    # without the model, explicit full names (always exact); a target list missing modules is refused
    bare_dir = export_peft_adapter(vector, 1, tmp_path / "b", "x")
    bare = json.loads((bare_dir / "adapter_config.json").read_text())
    assert bare["target_modules"] == sorted(n.removesuffix(".weight") for n in vector.factors)
    with pytest.raises(WsteerError, match="does not select"):
        export_peft_adapter(vector, 1, tmp_path / "c", "x", target_modules=["q_proj"])
    assert not (tmp_path / "c").exists()



def test_the_monitoring_reads_an_exported_adapter_back_as_exactly_k_w(setup, tmp_path):
    # export writes and monitoring reads through one layout (wsteer.lora_layout): the round trip gives k·w's
    # own factors, B bitwise scaled by k and A bitwise, at scale α/r = 1
    from wsteer.monitoring.loading import load_delta

    _, _, vector = setup
    delta = load_delta(export_peft_adapter(vector, -2.0, tmp_path / "a", "x"))
    assert sorted(delta.names()) == sorted(vector.factors)
    for name, (b, a) in vector.factors.items():
        entry = delta.entry(name)
        assert torch.equal(entry.b, b.float() * -2.0) and torch.equal(entry.a, a.float())

PLAIN_PEFT = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, adapter, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(base)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
texts = []
for conv in json.loads(sys.argv[4]):
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    seq = model.generate(input_ids=ids, max_new_tokens=int(sys.argv[5]), do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = seq[0, ids.shape[1]:].tolist()
    new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
    texts.append({"ids": new, "text": tok.decode(new, skip_special_tokens=True).strip()})
with torch.no_grad():
    logits = model(torch.arange(1, 17).unsqueeze(0)).logits[0]
json.dump({"answers": texts, "logits": logits.tolist()}, open(out, "w"))
"""


def test_exported_adapter_reproduces_steered_generations_with_plain_peft_in_a_separate_process(
    setup, tmp_path
):
    model, tok, vector = setup
    k = K_GEN
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    folder = export_peft_adapter(vector, k, tmp_path / "adapter", str(base_dir))
    script = tmp_path / "plain_peft.py"
    script.write_text(PLAIN_PEFT)
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, str(script), str(base_dir), str(folder), str(out), json.dumps(CONVS),
                    str(MAX_NEW)], env=subprocess_env(tmp_path), check=True, timeout=300, capture_output=True)
    result = json.loads(out.read_text())
    with WeightSteerer(vector).apply(model, k), torch.no_grad():
        steered = generate(model, tok, CONVS, max_new_tokens=MAX_NEW, batch_size=1, progress=False)
        steered_ids = _greedy_ids(model, tok)
        logits = model(torch.arange(1, 17).unsqueeze(0)).logits[0]
    assert [a["text"] for a in result["answers"]] == [o["text"] for o in steered]
    assert [a["ids"] for a in result["answers"]] == steered_ids
    torch.testing.assert_close(torch.tensor(result["logits"]), logits, rtol=0, atol=1e-4)


def test_composition_equals_nested_application_of_each_part_and_undo_is_bitwise(setup):
    model, _, w1 = setup
    w2 = _contrastive(model, seed=2, behavior="evil", target_modules=["q_proj", "v_proj", "down_proj"])
    snap = snapshot(model)
    with WeightSteerer(w1).apply(model, -2.0), WeightSteerer(w2).apply(model, 0.5):
        nested = snapshot(model)
    assert_bitwise(model, snap)
    composed = compose({"sycophancy": (w1, -2.0), "evil": (w2, 0.5)})
    assert composed.factors.keys() == w1.factors.keys()  # modules only in w1 are kept
    with WeightSteerer(composed).apply(model, 1.0):
        state = model.state_dict()
        for n, t in nested.items():
            torch.testing.assert_close(state[n], t, rtol=0, atol=1e-6)
    assert_bitwise(model, snap)
    assert composed.manifest["behavior"] == "sycophancy+evil"
    assert [(p["name"], p["k"]) for p in composed.manifest["parts"]] == [("sycophancy", -2.0), ("evil", 0.5)]
    assert composed.manifest["base_fingerprint"] == w1.manifest["base_fingerprint"]


def test_composed_vector_with_uneven_ranks_exports_zero_padded_and_merges_exactly(setup, tmp_path):
    model, _, w1 = setup
    w2 = _contrastive(model, seed=2, behavior="evil", target_modules=["q_proj"])
    composed = compose({"sycophancy": (w1, -1.0), "evil": (w2, 2.0)})
    ranks = {b.shape[1] for b, _ in composed.factors.values()}
    assert ranks == {2 * ADAPTER.r, 4 * ADAPTER.r}
    snap = snapshot(model)
    folder = export_peft_adapter(composed, 1.0, tmp_path / "adapter", "wsteer/tiny-random-llama")
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4 * ADAPTER.r
    deltas = {n: composed.delta(n) for n in composed.factors}
    _assert_merged_is_theta_plus(_merge_exported(folder), snap, deltas)


@pytest.mark.reliability
def test_compose_refuses_parts_from_different_base_models(setup):
    _, _, w1 = setup
    other = WeightVector(w1.factors, {**w1.manifest, "base_fingerprint": "0" * 24})
    with pytest.raises(WsteerError, match="different base models"):
        compose({"a": (w1, 1.0), "b": (other, 1.0)})
    with pytest.raises(WsteerError, match="finite number"):
        compose({"a": (w1, float("nan"))})


def test_fingerprint_mismatch_is_refused_unless_transfer_is_allowed(setup):
    model, _, vector = setup
    check_fingerprint(vector, fingerprint(model))
    with pytest.raises(WsteerError, match="allow_transfer=true"):
        check_fingerprint(vector, "f" * 24)
    check_fingerprint(vector, "f" * 24, allow_transfer=True)
    composed = compose({"s": (vector, -1.0)})
    with pytest.raises(WsteerError, match="allow_transfer=true"):
        check_fingerprint(composed, "f" * 24)


def test_merged_export_loads_with_transformers_equals_theta_plus_k_w_and_restores_the_model(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok, vector = setup
    k = -2.0
    snap = snapshot(model)
    card = {"evaluation": {"agree_rate": 0.25, "changed_vs_k0": 0.9}, "notes": "tiny random model"}
    folder = export_merged_model(model, tok, WeightSteerer(vector), k, tmp_path / "merged", card)
    assert_bitwise(model, snap)
    loaded = AutoModelForCausalLM.from_pretrained(str(folder))
    _assert_merged_is_theta_plus(loaded, snap, {n: k * vector.delta(n) for n in vector.factors})
    with WeightSteerer(vector).apply(model, k):
        assert_bitwise(loaded, snapshot(model))  # exactly the in-process steered weights
    readme = (folder / "README.md").read_text()
    for needle in ("base_model: wsteer/tiny-random-llama", "sycophancy", "k = -2", "agree_rate", "0.25",
                   vector.manifest["base_fingerprint"]):
        assert needle in readme
    meta = json.loads((folder / "wsteer_manifest.json").read_text())
    assert meta["k"] == k and meta["steered_fingerprint"] == fingerprint(loaded)
    assert (folder / "tokenizer_config.json").is_file()


@pytest.mark.reliability
def test_merged_export_refuses_a_steerer_that_works_through_hooks(setup, tmp_path):
    model, tok, _ = setup
    snap = snapshot(model)
    bias = DenseVector({n: torch.ones(m.out_features) for n, m in mlp_output_projections(model)},
                       {"base_model": "tiny", "base_fingerprint": fingerprint(model), "behavior": "b",
                        "method": "bias"})
    with pytest.raises(WsteerError, match="forward hooks"):
        export_merged_model(model, tok, BiasSteerer(bias), -1.0, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert all(not m._forward_hooks for m in model.modules())
    assert_bitwise(model, snap)


def test_list_vectors_finds_complete_artifact_folders_in_the_cache(setup, tmp_path, capsys):
    _, _, vector = setup
    fp = vector.manifest["base_fingerprint"]
    model_dir = tmp_path / "cache" / "vectors" / f"tiny-{fp[:12]}"
    folder = model_dir / "sycophancy" / "lora" / "abcdef123456-1234abcd"
    folder.mkdir(parents=True)
    for variant in ("contrastive", "pos", "neg"):
        manifest = {**vector.manifest, "variant": variant, "data_hash": "abcdef1234567890",
                    "created": "2026-01-01T00:00:00"}
        WeightVector(vector.factors, manifest).save(folder / f"{variant}.safetensors")
    (folder / "COMPLETE").write_text("{}")
    half = folder.parent / "999999999999-00000000"  # no COMPLETE: never listed
    half.mkdir()
    vector.save(half / "contrastive.safetensors")
    bias_dir = folder.parents[1] / "bias" / "abcdef123456-87654321"
    bias_dir.mkdir(parents=True)
    bias_manifest = {k: v for k, v in vector.manifest.items() if k != "norm"}  # as train.py writes it
    DenseVector({"x": torch.tensor([3.0, 4.0])}, {**bias_manifest, "method": "bias"}).save(
        bias_dir / "bias.safetensors")
    (bias_dir / "COMPLETE").write_text("{}")
    (bias_dir / "broken.safetensors").write_bytes(b"garbage")

    rows = list_vectors(tmp_path / "cache")
    assert [(r["source"], r["artifact"]) for r in rows] == [
        ("bias", "bias"), ("bias", "broken"), ("lora", "contrastive"), ("lora", "neg"), ("lora", "pos")]
    by = {r["artifact"]: r for r in rows}
    c = by["contrastive"]
    assert (c["model"], c["fingerprint"], c["behavior"], c["method"]) == ("tiny", fp, "sycophancy", "lora")
    assert (c["data_hash"], c["settings_hash"]) == ("abcdef1234567890", "1234abcd")
    assert c["norm"] == pytest.approx(vector.norm()) and c["created"] == "2026-01-01T00:00:00"
    assert c["path"] == str(folder / "contrastive.safetensors") and c["error"] is None
    assert by["bias"]["norm"] == pytest.approx(5.0)
    assert by["broken"]["error"]
    table = format_listing(rows)
    assert "sycophancy" in table and "1234abcd" in table and "unreadable" in table
    assert "no vectors found" in format_listing(list_vectors(tmp_path / "nothing"))
    library_main([str(tmp_path / "cache")])  # `python -m wsteer.library CACHE_DIR`
    assert capsys.readouterr().out == table
