"""Weight-delta similarity (paper §5, design §4): factored = dense, breakdowns add up, loading, callback."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from tests.conftest import CONF, compose_cfg
from wsteer.errors import WsteerError
from wsteer.monitoring import similarity as sim
from wsteer.monitoring.callback import CosineMonitor
from wsteer.monitoring.compare import compare
from wsteer.monitoring.deltas import SafetensorsDelta
from wsteer.monitoring.loading import load_delta
from wsteer.monitoring.similarity_report import format_table, heatmap
from wsteer.training.trainer import instantiate_callbacks
from wsteer.vectors import WeightVector

SHAPES = {
    "model.layers.0.self_attn.q_proj.weight": (8, 6),
    "model.layers.0.mlp.down_proj.weight": (6, 10),
    "model.layers.1.self_attn.q_proj.weight": (8, 6),
    "model.layers.1.mlp.down_proj.weight": (6, 10),
}
DENSE_ONLY = {"model.embed_tokens.weight": (12, 6), "lm_head.weight": (12, 6), "model.norm.weight": (6,)}
MANIFEST = {"base_model": "test", "base_fingerprint": "0", "behavior": "test", "method": "lora"}


def lowrank(
    seed: int, r: int, names=SHAPES, dtype=torch.float64
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: (torch.randn(s[0], r, generator=g, dtype=dtype), torch.randn(r, s[1], generator=g, dtype=dtype))
        for n, s in SHAPES.items()
        if n in names
    }


def dense(seed: int, shapes: dict, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(*s, generator=g, dtype=dtype) for n, s in shapes.items()}


def densify(d: dict) -> dict[str, torch.Tensor]:
    return {n: (v[0].double() @ v[1].double()) if isinstance(v, tuple) else v.double() for n, v in d.items()}


def flat_cosine(a: dict, b: dict) -> float:
    """The paper's definition, literally: flatten and concatenate all parameters (0 where one lacks it)."""
    a, b = densify(a), densify(b)
    names = sorted(a.keys() | b.keys())
    va = torch.cat(
        [a[n].flatten() if n in a else torch.zeros(b[n].numel(), dtype=torch.float64) for n in names]
    )
    vb = torch.cat(
        [b[n].flatten() if n in b else torch.zeros(a[n].numel(), dtype=torch.float64) for n in names]
    )
    return float(va @ vb / (va.norm() * vb.norm()))


def test_factored_cosine_equals_dense_cosine_on_random_low_rank_deltas():
    a = lowrank(0, 3)
    b = lowrank(1, 5, names=list(SHAPES)[:3])  # b lacks one module: it counts in ‖a‖ only
    b = {n: (f[0] + 0.5 * a[n][0] @ torch.ones(3, 5, dtype=torch.float64), f[1]) for n, f in b.items()}
    expected = flat_cosine(a, b)
    assert abs(expected) > 1e-3
    assert sim.cosine(a, b) == pytest.approx(expected, rel=1e-10)
    da, db = densify(a), densify(b)
    assert sim.inner(a, b) == pytest.approx(sum(float((da[n] * db[n]).sum()) for n in db), rel=1e-10)
    assert sim.norm(a) == pytest.approx(math.sqrt(sum(float((t * t).sum()) for t in da.values())), rel=1e-12)


def test_low_rank_against_dense_and_dense_against_dense_match_the_flattened_cosine(monkeypatch):
    a = lowrank(2, 4)
    b = {
        **{n: t + 0.3 * v for (n, t), v in zip(dense(3, SHAPES).items(), densify(a).values(), strict=True)},
        **dense(4, DENSE_ONLY),
    }
    c = {**densify(lowrank(5, 2)), **dense(6, DENSE_ONLY)}
    for chunk in (sim.CHUNK_ELEMENTS, 7):  # 7: dense tensors reduced in many small row blocks
        monkeypatch.setattr(sim, "CHUNK_ELEMENTS", chunk)
        assert sim.cosine(a, b) == pytest.approx(flat_cosine(a, b), rel=1e-10)
        assert sim.cosine(b, a) == pytest.approx(flat_cosine(a, b), rel=1e-10)
        assert sim.cosine(b, c) == pytest.approx(flat_cosine(b, c), rel=1e-10)


def test_breakdown_parts_sum_exactly_to_the_global_inner_product_and_norms():
    a = {
        **lowrank(7, 3),
        **dense(8, DENSE_ONLY),
    }  # LoRA-covered low-rank weights plus dense embed/head deltas
    b = {**densify(lowrank(9, 6)), **dense(10, {"model.embed_tokens.weight": (12, 6)})}
    bd = sim.breakdown(a, b)
    total = bd.total
    assert bd.cosine == pytest.approx(flat_cosine(a, b), rel=1e-10)
    for groups in (bd.by_layer(), bd.by_module(), bd.by_kind()):
        assert math.fsum(p.inner for p in groups.values()) == pytest.approx(total.inner, rel=1e-12)
        assert math.fsum(p.sq_a for p in groups.values()) == pytest.approx(total.sq_a, rel=1e-12)
        assert math.fsum(p.sq_b for p in groups.values()) == pytest.approx(total.sq_b, rel=1e-12)
        rebuilt = math.fsum(p.inner for p in groups.values()) / math.sqrt(
            math.fsum(p.sq_a for p in groups.values()) * math.fsum(p.sq_b for p in groups.values())
        )
        assert rebuilt == pytest.approx(bd.cosine, rel=1e-12)
    assert list(bd.by_layer()) == [0, 1, None]
    assert set(bd.by_module()) == {"q_proj", "down_proj", "embed_tokens", "lm_head", "norm"}
    da, db = densify(a), densify(b)
    layer1 = [n for n in SHAPES if ".layers.1." in n]
    assert bd.by_layer()[1].inner == pytest.approx(
        sum(float((da[n] * db[n]).sum()) for n in layer1), rel=1e-10
    )
    split = bd.norm_split()
    assert split["a"]["dense"] == pytest.approx(sum(float((da[n] ** 2).sum()) for n in DENSE_ONLY), rel=1e-12)
    assert split["a"]["lowrank"] + split["a"]["dense"] == pytest.approx(total.sq_a, rel=1e-12)
    assert split["b"]["lowrank"] == 0 and split["b"]["dense"] == pytest.approx(total.sq_b, rel=1e-12)
    assert bd.lora_covered().cosine == pytest.approx(
        flat_cosine(lowrank(7, 3), {n: db[n] for n in SHAPES}), rel=1e-10
    )
    assert "| layer |" in bd.to_markdown() and "embed_tokens" in bd.to_markdown()


def test_cosine_of_a_vector_with_itself_is_one_and_with_its_negation_minus_one():
    w = WeightVector({n: (b.float(), a.float()) for n, (b, a) in lowrank(11, 4).items()}, dict(MANIFEST))
    assert sim.cosine(w, w) == pytest.approx(1.0, abs=1e-12)
    assert sim.cosine(w, w.scaled(-1)) == pytest.approx(-1.0, abs=1e-12)
    assert sim.norm(w) == pytest.approx(w.norm(), rel=1e-9)
    assert math.isnan(sim.cosine(w, w.scaled(0)))  # undefined against a zero delta, never a fake 0


def test_peft_adapter_folder_gives_the_same_cosine_as_its_in_memory_factors(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    from wsteer.lora_layout import lora_factors

    model, _ = tiny
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # B = 0 at init; randomise it so the delta is nonzero
    factors = lora_factors(peft, "default")
    peft.save_pretrained(str(tmp_path / "adapter"))
    loaded = load_delta(tmp_path / "adapter")
    assert sorted(loaded.names()) == sorted(factors)
    g = torch.Generator().manual_seed(1)
    ref = {
        n: (torch.randn(b.shape[0], 3, generator=g), torch.randn(3, a.shape[1], generator=g))
        for n, (b, a) in factors.items()
    }
    ref = {
        n: (r[0] + b @ torch.ones(b.shape[1], 3), r[1])
        for (n, r), (b, _) in zip(ref.items(), factors.values(), strict=True)
    }
    assert sim.cosine(tmp_path / "adapter", ref) == pytest.approx(sim.cosine(factors, ref), rel=1e-6)
    assert sim.inner(tmp_path / "adapter", ref) == pytest.approx(sim.inner(factors, ref), rel=1e-6)
    assert sim.norm(tmp_path / "adapter") == pytest.approx(sim.norm(factors), rel=1e-6)


def test_peft_embedding_lora_and_modules_to_save_match_peft_own_merge(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=False,
        )
    )
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    cfg = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "embed_tokens"],
        use_rslora=True,
        alpha_pattern={"v_proj": 4},
        modules_to_save=["lm_head"],
    )
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
            elif "modules_to_save" in n:
                p.add_(torch.randn_like(p))
    peft.save_pretrained(str(tmp_path / "adapter"))
    merged = peft.merge_and_unload().state_dict()
    truth = {k: merged[k] - base[k] for k in base if not torch.equal(merged[k], base[k])}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= truth.keys()
    with pytest.raises(WsteerError, match="base="):
        load_delta(tmp_path / "adapter")
    loaded = load_delta(tmp_path / "adapter", base=tmp_path / "base.safetensors")
    assert sorted(loaded.names()) == sorted(truth)
    assert loaded.kind("lm_head.weight") == "dense" and loaded.kind("model.embed_tokens.weight") == "lowrank"
    ref = dense(12, {k: tuple(v.shape) for k, v in truth.items()}, dtype=torch.float32)
    ref = {k: r + 2 * truth[k] for k, r in ref.items()}
    assert sim.cosine(loaded, ref) == pytest.approx(sim.cosine(truth, ref), rel=1e-5)
    assert sim.norm(loaded) == pytest.approx(sim.norm(truth), rel=1e-5)
    in_memory_base = load_delta(tmp_path / "adapter", base=base)
    assert sim.cosine(in_memory_base, ref) == pytest.approx(sim.cosine(truth, ref), rel=1e-5)


def test_dense_safetensors_delta_streamed_from_disk_equals_the_in_memory_result(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "CHUNK_ELEMENTS", 5)
    d = {k: v.float() for k, v in {**densify(lowrank(13, 2)), **dense(14, DENSE_ONLY)}.items()}
    save_file(d, str(tmp_path / "delta.safetensors"))
    names = list(d)
    (tmp_path / "shards").mkdir()
    save_file({k: d[k] for k in names[:3]}, str(tmp_path / "shards" / "a.safetensors"))
    save_file({k: d[k] for k in names[3:]}, str(tmp_path / "shards" / "b.safetensors"))
    w = WeightVector({n: (b.float(), a.float()) for n, (b, a) in lowrank(15, 3).items()}, dict(MANIFEST))
    w.save(tmp_path / "w.safetensors")
    expected = sim.cosine(d, w)
    assert expected == pytest.approx(flat_cosine(d, lowrank(15, 3)), rel=1e-6)
    for path in (tmp_path / "delta.safetensors", tmp_path / "shards"):
        assert sim.cosine(path, w) == pytest.approx(expected, rel=1e-9)
        assert sim.cosine(path, tmp_path / "w.safetensors") == pytest.approx(expected, rel=1e-9)
        assert sim.breakdown(path, w).by_layer()[None].sq_a == pytest.approx(
            sim.breakdown(d, w).by_layer()[None].sq_a
        )
    assert isinstance(
        load_delta(tmp_path / "w.safetensors"), SafetensorsDelta
    )  # lazily, entry by entry


def test_cosine_matrix_table_heatmap_and_compare_command(tmp_path, capsys):
    vecs = {
        f"v{i}": WeightVector(
            {n: (b.float(), a.float()) for n, (b, a) in lowrank(20 + i, 3).items()}, dict(MANIFEST)
        )
        for i in range(3)
    }
    vecs["v2"] = WeightVector(
        {
            n: (torch.cat([f[0], vecs["v0"].factors[n][0]], 1), torch.cat([f[1], vecs["v0"].factors[n][1]]))
            for n, f in vecs["v2"].factors.items()
        },
        dict(MANIFEST),
    )  # v2 shares a direction with v0
    names, m = sim.cosine_matrix(vecs)
    assert names == ["v0", "v1", "v2"]
    assert m.shape == (3, 3) and (m == m.T).all()
    assert m.diagonal() == pytest.approx([1.0, 1.0, 1.0])
    assert m[0, 2] == pytest.approx(sim.cosine(vecs["v0"], vecs["v2"]), rel=1e-12) and m[0, 2] > 0.3
    table = format_table(names, m)
    assert table.splitlines()[0] == "| | v0 | v1 | v2 |" and len(table.splitlines()) == 5
    png = heatmap(names, m, tmp_path / "plots" / "h.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in png.parent.iterdir() if p.name != "h.png"]  # no temp file left behind
    paths = [vecs[n].save(tmp_path / f"{n}.safetensors") for n in names]
    got_names, got = compare(paths, tmp_path / "cmp")
    assert got_names == names and got == pytest.approx(m, rel=1e-9)
    assert "| **v0** |" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "similarity.png").is_file()
    assert "| v2 |" in (tmp_path / "cmp" / "similarity.md").read_text()


def _paired_run(tiny, tmp_path, steps: int, every: int):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from wsteer.data.sft import PairedDataModule
    from wsteer.training.paired import LoraPair, PairedModule

    model, tok = tiny
    rows = {
        s: [{"question": f"Question {i}?", "response": f"{s} answer {i}."} for i in range(8)]
        for s in ("pos", "neg")
    }
    dm = PairedDataModule(tok, rows, batch_size=2, max_length=128, val_fraction=0.2, seed=0)
    adapter = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    pair = LoraPair(model, adapter, ["pos", "neg"])
    module = PairedModule(model, pair, lr=1e-2, weight_decay=0.0, warmup_steps=0, total_steps=steps)
    shapes = {n: (b.shape[0], a.shape[1]) for n, (b, a) in pair.export("pos").items()}
    g = torch.Generator().manual_seed(0)
    refs = {
        name: WeightVector(
            {
                n: (torch.randn(o, 2, generator=g), torch.randn(2, i, generator=g))
                for n, (o, i) in shapes.items()
            },
            dict(MANIFEST),
        )
        for name in ("evil", "french")
    }
    refs["french"].save(tmp_path / "french.safetensors")
    monitor = CosineMonitor(
        {"evil": refs["evil"], "french": str(tmp_path / "french.safetensors")},
        every_n_steps=every,
        csv_path=tmp_path / "monitor.csv",
    )
    monitor.on_fit_start(SimpleNamespace(log_every_n_steps=1), module)
    assert monitor.measure("pos") == (0.0, {})  # B = 0 at init: no cosine to log
    trainer = L.Trainer(
        max_steps=steps * 2,
        logger=CSVLogger(str(tmp_path), name="log"),
        log_every_n_steps=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        callbacks=[monitor],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=dm)
    return pair, refs, monitor, trainer


def test_cosine_monitor_logs_at_the_configured_interval_in_a_real_training_run(tiny, tmp_path):
    pair, refs, monitor, trainer = _paired_run(tiny, tmp_path, steps=7, every=3)
    with (tmp_path / "monitor.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["step"]) for r in rows}) == [3, 6]
    assert len(rows) == 2 * 2 * 2  # steps × sides × references
    assert {(r["side"], r["reference"]) for r in rows} == {
        (s, n) for s in ("pos", "neg") for n in ("evil", "french")
    }
    assert all(math.isfinite(float(r["cosine"])) and float(r["cosine"]) != 0 for r in rows)
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        logged = list(csv.DictReader(f))
    for side in ("pos", "neg"):
        for ref in ("evil", "french"):
            hits = [r for r in logged if r.get(f"monitor/cos/{side}/{ref}")]
            # Lightning's logger step is 0-based (batches already stepped): training steps 3 and 6
            assert [int(r["step"]) for r in hits] == [2, 5]
            at6 = next(
                float(r["cosine"])
                for r in rows
                if r["step"] == "6" and (r["side"], r["reference"]) == (side, ref)
            )
            assert float(hits[-1][f"monitor/cos/{side}/{ref}"]) == pytest.approx(at6, rel=1e-5)
    # the callback's live factors agree with the exported update (`lora_factors`, what vectors are built from)
    final = {s: sim.cosine(WeightVector(pair.export(s)), refs["evil"]) for s in ("pos", "neg")}
    assert monitor.measure("pos")[1]["evil"] == pytest.approx(final["pos"], rel=1e-9)
    assert monitor.measure("neg")[1]["evil"] == pytest.approx(final["neg"], rel=1e-9)


def test_monitoring_config_composes_and_instantiates_the_callback(tmp_path):
    wired = (
        "callbacks" in (CONF / "base.yaml").read_text()
    )  # once base.yaml lists the group, no `+` is needed
    plus = "" if wired else "+"
    ref = str(tmp_path / "evil.safetensors")
    cfg = compose_cfg("train", tmp_path, [f"{plus}callbacks=monitoring", f"+callbacks.references.evil={ref}"])
    cbs = instantiate_callbacks(cfg, tmp_path / "run")
    assert len(cbs) == 1 and isinstance(cbs[0], CosineMonitor)
    assert cbs[0].every_n_steps == 5 and cbs[0].reference_specs == {"evil": ref}
    assert cbs[0].csv_path == tmp_path / "run" / "monitor.csv"
    cfg = compose_cfg("train", tmp_path, [f"{plus}callbacks=none"])
    assert instantiate_callbacks(cfg, tmp_path) == []
