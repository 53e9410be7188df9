"""train.py: sample (or reuse) D⁺/D⁻, fine-tune the paired LoRAs, and save w = τ⁺ − τ⁻ (paper §1–2)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from wsteer.artifacts import git_commit, stable_hash, write_json
from wsteer.behaviors import SIDES
from wsteer.data.pairs import ensure_pairs
from wsteer.data.sft import PairedDataModule
from wsteer.errors import WsteerError
from wsteer.recipes._common import Context, prepare
from wsteer.tracking import start_run
from wsteer.training.paired import PairedLoRAModule, lora_factors
from wsteer.vectors import WeightVector

MIN_EXAMPLES = 4  # per side; fewer cannot give both a training and a validation split worth the name


def vector_path(cfg: DictConfig, fp: str, data_hash: str) -> Path:
    """Cache key: (base model fingerprint, behavior, method, data, training settings)."""
    train_hash = stable_hash({"adapter": OmegaConf.to_container(cfg.adapter, resolve=True),
                              "trainer": OmegaConf.to_container(cfg.trainer, resolve=True), "seed": cfg.seed}, 8)
    return (Path(cfg.paths.cache_dir).expanduser() / "vectors" / f"{cfg.model.name}-{fp[:12]}" / cfg.behavior.name
            / "weight" / f"{data_hash[:12]}-{train_hash}" / "vector.safetensors")


def train_vector(ctx: Context, pairs, data_manifest: dict, run=None) -> WeightVector:
    """Fit the `pos` and `neg` LoRAs on D⁺/D⁻ with one base model and return their contrastive weight vector."""
    cfg, t = ctx.cfg, ctx.cfg.trainer
    counts = {s: len(pairs[s]) for s in SIDES}
    if min(counts.values()) < MIN_EXAMPLES:
        raise WsteerError(f"too little data to train: {counts} examples (need ≥ {MIN_EXAMPLES} per side); "
                          "raise sampling.n_samples or relax the judge thresholds")
    dm = PairedDataModule(ctx.tokenizer, {s: list(pairs[s]) for s in SIDES}, batch_size=t.batch_size,
                          max_length=t.max_length, val_fraction=t.val_fraction, seed=cfg.seed)
    module = PairedLoRAModule(ctx.model, cfg.adapter, lr=t.lr, weight_decay=t.weight_decay,
                              warmup_steps=t.warmup_steps, total_steps=t.steps, grad_clip=t.grad_clip)
    loggers = [CSVLogger(str(ctx.out_dir), name="train_log")]
    if run is not None:
        loggers.append(WandbLogger(experiment=run))
    trainer = L.Trainer(
        max_steps=t.steps * len(SIDES),  # manual optimization counts one step per optimizer, i.e. per side
        val_check_interval=t.eval_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        accelerator=t.accelerator, devices=1, precision=t.precision, logger=loggers, log_every_n_steps=1,
        enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(ctx.out_dir),
    )
    t0 = time.perf_counter()
    trainer.validate(module, datamodule=dm, verbose=False)  # step 0: the untrained adapters' val loss
    trainer.fit(module, datamodule=dm)
    if module.history[-1]["step"] != t.steps:
        trainer.validate(module, datamodule=dm, verbose=False)
    ctx.timings["train"] = time.perf_counter() - t0
    for side in SIDES:
        ctx.timings[f"train_{side}"] = module.side_seconds[side]
    best = module.restore_best()
    with ctx.timed("build_vector"):
        factors = {s: lora_factors(module.model, s) for s in SIDES}
        module.model.unload()  # drop the LoRA layers; the base weights were never modified
        ctx.model.eval()
        manifest = {
            "base_model": cfg.model.path,
            "model_name": cfg.model.name,
            "base_fingerprint": ctx.fingerprint,
            "behavior": ctx.behavior.name,
            "behavior_version": ctx.behavior.version,
            "method": "weight",
            "variant": "contrastive",
            "lora": OmegaConf.to_container(cfg.adapter, resolve=True),
            "schedule": OmegaConf.to_container(t, resolve=True),
            "data_hash": data_manifest["data_hash"],
            "data_counts": counts,
            "dropped_too_long": dm.dropped,
            "data_key": data_manifest["key"],
            "best": best,
            "val_history": module.history,
            "train_tokens": dm.train_tokens(),
            "git_commit": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        vector = WeightVector.contrastive(factors["pos"], factors["neg"], manifest)
        vector.manifest["norm"] = vector.norm()
    return vector


def ensure_vector(ctx: Context, run=None, force: bool = False) -> tuple[WeightVector, Path, bool]:
    """Reuse the cached vector for (model, behavior, method, data, settings), or train and cache it."""
    cfg = ctx.cfg
    with ctx.timed("data"):
        pairs, data_manifest = ensure_pairs(cfg, ctx.model, ctx.tokenizer, ctx.behavior, ctx.fingerprint)
    path = vector_path(cfg, ctx.fingerprint, data_manifest["data_hash"])
    if path.is_file() and not force:
        print(f"wsteer: reusing cached vector {path}")
        return WeightVector.load(path), path, False
    vector = train_vector(ctx, pairs, data_manifest, run)
    vector.save(path)
    print(f"wsteer: saved vector to {path}")
    return vector, path, True


def run(cfg: DictConfig) -> dict[str, float]:
    ctx = prepare(cfg)
    wb = start_run(cfg, "train")
    try:
        vector, path, _ = ensure_vector(ctx, wb, force=True)
        vector.save(ctx.out_dir / "vector.safetensors")
        write_json(ctx.out_dir / "vector_manifest.json", vector.manifest)
        write_json(ctx.out_dir / "timings.json", ctx.timings)
        metrics = {f"val/best_loss_{s}": vector.manifest["best"][s]["val_loss"] for s in SIDES}
        metrics["vector/norm"] = vector.manifest["norm"]
        if wb is not None:
            wb.summary.update({**metrics, "vector_path": str(path)})
        print(f"wsteer: vector ‖w‖ = {metrics['vector/norm']:.4g}; best val loss "
              + ", ".join(f"{s} {vector.manifest['best'][s]['val_loss']:.3f} (step {vector.manifest['best'][s]['step']})"
                          for s in SIDES))
        return metrics
    finally:
        if wb is not None:
            wb.finish()
