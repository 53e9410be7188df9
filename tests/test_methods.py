"""Every steering method behind one interface, checked exactly on the tiny model (paper §1 baselines)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import CONF
from wsteer.data.sft import collate, tokenize_example
from wsteer.generation import generate
from wsteer.models import decoder_layers, fingerprint
from wsteer.recipes._common import prepare
from wsteer.recipes.train import ensure_artifacts
from wsteer.steering.activation import ActivationCollector, ActivationSteerer
from wsteer.steering.bias import BiasSteerer
from wsteer.steering.finetune import FinetuneSteerer
from wsteer.steering.prompt import SystemPromptSteerer
from wsteer.steering.weight import WeightSteerer
from wsteer.vectors import DenseVector

IDS = torch.tensor([[5, 17, 33, 90, 120, 7]])


def method_config(tmp, extra: list[str] = ()):
    """The smoke `steer` config with outputs and caches under `tmp` (tests/test_cuda.py adds the device)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("steer", overrides=["debug=smoke", "logger=none", f"output_dir={tmp / 'out'}",
                                           f"paths.cache_dir={tmp / 'cache'}", "finetune.checkpoint_every=2", *extra])


def build_every_artifact(cfg):
    """One tiny-model context with every artifact kind built once (LoRA pair, biases, activations, checkpoints)."""
    ctx = prepare(cfg)
    arts = {src: ensure_artifacts(ctx, src)[0] for src in ("lora", "bias", "activation", "finetune")}
    return ctx, arts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    return build_every_artifact(method_config(tmp_path_factory.mktemp("methods")))


def steerers(ctx, arts):
    b = ctx.behavior
    return {
        "weight": WeightSteerer(arts["lora"]["contrastive"]),
        "task_vector_pos": WeightSteerer(arts["lora"]["pos"]),
        "task_vector_neg": WeightSteerer(arts["lora"]["neg"].scaled(-1.0)),
        "bias": BiasSteerer(arts["bias"]["bias"]),
        "activation": ActivationSteerer(arts["activation"]["activation"], layer=1),
        "activation_all_layers": ActivationSteerer(arts["activation"]["activation"], all_layers=True),
        "finetune": FinetuneSteerer(arts["finetune"]),
        "system_prompt": SystemPromptSteerer(b.pos_system_prompts, b.neg_system_prompts),
    }


NAMES = ["weight", "task_vector_pos", "task_vector_neg", "bias", "activation", "activation_all_layers", "finetune"]


def assert_k_zero_is_a_no_op_and_undo_is_exact(steerer, model, name: str, ids=IDS) -> None:
    """k = 0 leaves the logits bitwise equal; k ≠ 0 changes them; undo restores every parameter bitwise."""
    state = {n: t.clone() for n, t in model.state_dict().items()}
    with torch.no_grad():
        base = model(ids).logits
        with steerer.apply(model, 0):
            torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)
        k = 2 if name != "finetune" else steerer.steps()[-1]
        with steerer.apply(model, k):
            assert not torch.allclose(model(ids).logits, base)
        torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in state.items())
    assert not any(m._forward_hooks for m in model.modules())  # no hook left behind


@pytest.mark.parametrize("name", NAMES)
def test_k_zero_is_a_no_op_and_undo_is_exact_for_every_method(built, name):
    ctx, arts = built
    steerer = steerers(ctx, arts)[name]
    steerer.check_compatible(ctx.model, ctx.fingerprint)
    assert_k_zero_is_a_no_op_and_undo_is_exact(steerer, ctx.model, name)


@pytest.mark.parametrize("name", ["weight", "bias", "activation", "activation_all_layers", "system_prompt"])
def test_batched_generation_equals_unbatched_under_steering(built, name):
    ctx, arts = built
    steerer = steerers(ctx, arts)[name]
    convs = [steerer.conversation([{"role": "user", "content": q}], -2) for q in ctx.behavior.heldout_questions[:4]]
    with steerer.apply(ctx.model, -2):
        batched = generate(ctx.model, ctx.tokenizer, convs, max_new_tokens=8, batch_size=4)
        single = [generate(ctx.model, ctx.tokenizer, [c], max_new_tokens=8, batch_size=1)[0] for c in convs]
    assert batched == single


def test_task_vectors_compose_to_weight_steering_and_tau_pos_alone_differs(built):
    ctx, arts = built
    model, s = ctx.model, steerers(ctx, arts)
    with s["weight"].apply(model, -2):
        w_state = {n: t.clone() for n, t in model.state_dict().items()}
    with s["task_vector_pos"].apply(model, -2), s["task_vector_neg"].apply(model, -2):
        # θ + k·τ⁺ then −k·τ⁻ on top: θ + k·(τ⁺ − τ⁻)
        both = model.state_dict()
        for n in arts["lora"]["contrastive"].factors:
            torch.testing.assert_close(both[n], w_state[n], rtol=0, atol=1e-6)
    with s["task_vector_pos"].apply(model, -2):
        n = next(iter(arts["lora"]["contrastive"].factors))
        assert not torch.allclose(model.state_dict()[n], w_state[n])


def test_bias_training_trains_only_the_added_biases_and_leaves_base_weights_bitwise(built):
    ctx, arts = built
    delta = arts["bias"]["bias"]
    layers = decoder_layers(ctx.model)
    assert sorted(delta.tensors) == sorted(f"model.layers.{i}.mlp.down_proj" for i in range(len(layers)))
    assert all(t.abs().sum() > 0 for t in delta.tensors.values())
    # the context's model was used for every training above: its weights are still the base weights
    from wsteer.models import build_tiny_model, build_tiny_tokenizer

    fresh = build_tiny_model(ctx.cfg.model, len(build_tiny_tokenizer()))
    assert fingerprint(fresh) == ctx.fingerprint
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ctx.model.state_dict().values(), strict=True))
    assert all(p.requires_grad for p in ctx.model.parameters())  # freezing for bias training was undone


def _identity_model(tiny):
    """Blocks whose attention and MLP outputs are zero: each block passes the residual stream through."""
    model, tok = tiny
    with torch.no_grad():
        for layer in decoder_layers(model):
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model, tok


def test_all_layer_increments_telescope_to_a_L(tiny):
    model, _ = _identity_model(tiny)
    n, d = len(decoder_layers(model)), model.config.hidden_size
    a = torch.randn(n + 1, d)
    steerer = ActivationSteerer(DenseVector({str(i): a[i] for i in range(n + 1)}, {}), all_layers=True)
    out = {}
    # the final norm's input is the residual stream after every block (and every steering hook)
    h = model.model.norm.register_forward_pre_hook(lambda m, args: out.__setitem__("h", args[0]))
    model(IDS)
    base = out["h"].clone()
    with steerer.apply(model, 1.5):
        model(IDS)
    h.remove()
    shift = out["h"] - base
    torch.testing.assert_close(shift[0, -1], 1.5 * a[n], rtol=0, atol=1e-5)
    assert shift[0, :-1].abs().max() == 0  # only the last position of the forward pass is steered


def test_prompt_tokens_never_enter_the_activation_means(tiny):
    model, tok = _identity_model(tiny)
    emb = model.get_input_embeddings().weight

    def collect(question):
        rows = [tokenize_example(tok, question, "Yes indeed.", 512, system="Be nice.")]
        coll = ActivationCollector(model, sides=("pos",))
        coll.on_test_start()
        coll.test_step(collate(rows, tok.pad_token_id), 0)
        coll.on_test_end()
        return coll.means["pos"].compute(), rows[0]

    m1, row = collect("A short question?")
    m2, _ = collect("A completely different and much longer question about something else?")
    torch.testing.assert_close(m1, m2, rtol=0, atol=1e-6)
    resp = [t for t, keep in zip(row["input_ids"], row["response_mask"], strict=True) if keep]
    assert tok.decode(resp) == "Yes indeed."
    torch.testing.assert_close(m1[0], emb[resp].mean(0), rtol=0, atol=1e-6)  # layer 0 = mean response embedding


def test_system_prompt_baseline_prepends_the_opposing_prompt_only_when_steering(built):
    ctx, arts = built
    s = steerers(ctx, arts)["system_prompt"]
    conv = [{"role": "user", "content": "hi"}]
    assert s.conversation(conv, 0) == conv
    assert s.conversation(conv, -1)[0]["content"] == ctx.behavior.neg_system_prompts[0]
    assert s.conversation(conv, 3)[0]["content"] == ctx.behavior.pos_system_prompts[0]


def test_finetune_checkpoints_are_addressed_by_signed_step(built):
    ctx, arts = built
    s = steerers(ctx, arts)["finetune"]
    assert s.steps() == [2, 4, 6]
    from wsteer.errors import WsteerError

    with pytest.raises(WsteerError, match="saved steps are"), s.apply(ctx.model, 3):
        pass


@pytest.mark.reliability
def test_activation_layer_out_of_range_is_a_clear_error(built):
    ctx, arts = built
    from wsteer.errors import WsteerError

    with pytest.raises(WsteerError, match="out of range"):
        ActivationSteerer(arts["activation"]["activation"], layer=99)


def test_layer_choice_per_behavior_and_model_comes_from_config(tmp_path):
    from tests.conftest import compose_cfg

    cfg = compose_cfg("steer", tmp_path, ["method=activation"])
    assert cfg.method.layer == 15  # conf/behavior_model/sycophancy_smollm2_135m.yaml
    assert compose_cfg("steer", tmp_path, ["method=activation", "model=tiny"]).method.layer is None


def test_task_and_joint_fine_tunes_give_an_adapter_that_steer_uses_as_theta_ft(smoke_cfg, tmp_path):
    import json
    from pathlib import Path

    from wsteer.recipes import steer as steer_recipe
    from wsteer.recipes import train as train_recipe

    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "response": f"{2 * i}."}) + "\n"
                            for i in range(24)))
    cfg = smoke_cfg("train", ["source=task", f"task.data={data}", "task.batch_size=4", "task.steps=4"])
    train_recipe.run(cfg)
    manifest = json.loads((Path(cfg.output_dir) / "task_manifest.json").read_text())
    assert manifest["task_rows"] == manifest["rows"] == 24
    adapter = manifest["adapter"]
    assert (Path(adapter) / "adapter_config.json").is_file()

    joint = smoke_cfg("train", ["source=joint", f"task.data={data}", "task.upsample=3", "task.steps=2",
                                f"output_dir={tmp_path / 'joint'}"])
    train_recipe.run(joint)
    jm = json.loads((tmp_path / "joint" / "task_manifest.json").read_text())
    assert jm["rows"] > jm["task_rows"] and (jm["rows"] - 24) % 3 == 0  # D- repeated 3×

    steer = smoke_cfg("steer", [f"base_adapter={adapter}", "k=-2", f"output_dir={tmp_path / 'steer'}"])
    steer_recipe.run(steer)  # the vector is built on and checked against θ_pre, then applied on θ_ft
    report = (tmp_path / "steer" / "report.md").read_text()
    assert "k = -2" in report and f"θ_ft = base + {adapter}" in report
    from wsteer.vectors import WeightVector

    vec = WeightVector.load(next((tmp_path / "cache").glob("vectors/**/lora/*/contrastive.safetensors")))
    assert vec.manifest["base_fingerprint"] in report.split("θ_ft")[0]  # θ_pre's fingerprint, not θ_ft's


@pytest.mark.reliability
def test_a_training_failure_leaves_the_base_model_clean_and_names_the_fix(smoke_cfg, monkeypatch):
    from peft.tuners.lora import LoraLayer

    from wsteer.errors import WsteerError
    from wsteer.training.paired import PairedModule

    cfg = smoke_cfg("train")
    ctx = prepare(cfg)
    state = {n: t.clone() for n, t in ctx.model.state_dict().items()}
    monkeypatch.setattr(PairedModule, "_loss", lambda self, side, batch: (torch.tensor(float("nan")), 1))
    with pytest.raises(WsteerError, match="lower the learning rate"):
        ensure_artifacts(ctx, "lora")
    assert not any(isinstance(m, LoraLayer) for m in ctx.model.modules())
    assert all(torch.equal(ctx.model.state_dict()[n], t) for n, t in state.items())


def test_the_activation_report_names_the_steered_layers_own_norm():
    from wsteer.steering.activation import ActivationSteerer
    from wsteer.vectors import DenseVector

    vec = DenseVector({str(i): torch.full((4,), float(i)) for i in range(4)}, {"method": "activation"})
    one = ActivationSteerer(vec, layer=2)
    assert "‖a_2‖ = 4 " in one.describe() + " "  # ‖(2, 2, 2, 2)‖, not the norm of all layers together (7.48)
    every = ActivationSteerer(vec, all_layers=True)
    assert "‖shifts‖ = 3.464" in every.describe()  # three shifts (1,1,1,1) of norm 2 each: √12
