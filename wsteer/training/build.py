"""Building a behavior's steering artifacts from D⁺/D⁻ and caching them (paper §1–2).

Sources: `lora` (paired LoRA fine-tunes → τ⁺, τ⁻ and w = τ⁺ − τ⁻), `bias` (paired bias-only fine-tunes → Δb),
`activation` (per-layer mean activation differences aˡ), `finetune` (the paired LoRAs saved every few steps).
Artifacts are cached under `<cache>/vectors/<model>-<fingerprint>/<behavior>/<source>/<data>-<settings>/`, built
once under a cross-process lock, with a `COMPLETE` marker written last.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsteer.artifacts import git_commit, stable_hash, write_json
from wsteer.behaviors import SIDES
from wsteer.context import Context
from wsteer.data.pairs import ensure_pairs
from wsteer.data.sft import PairedDataModule
from wsteer.errors import WsteerError
from wsteer.locks import building
from wsteer.models import stays_on_its_device
from wsteer.steering.activation import ActivationCollector
from wsteer.training.paired import BiasPair, LoraPair, PairedModule, stop_helper_ranks
from wsteer.training.resume import fit_resumably
from wsteer.training.trainer import build_trainer
from wsteer.vectors import DenseVector, WeightVector

MIN_EXAMPLES = 4  # per side; fewer cannot give both a training and a validation split worth the name
SOURCES = ("lora", "bias", "activation", "finetune")


def artifact_settings(cfg: DictConfig, source: str) -> dict:
    """The settings that shape an artifact besides the data (part of its cache key)."""
    c = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    if source == "activation":
        return {"max_length": cfg.trainer.max_length}
    s = {"trainer": c(cfg.trainer), "seed": cfg.seed}
    if s["trainer"].get("devices") in (-1, "-1", "auto") and s["trainer"].get("accelerator") in ("gpu", "cuda"):
        # "all visible GPUs": the global batch is batch_size × their number, so the key holds the number
        import torch

        s["trainer"]["devices"] = torch.cuda.device_count()
    if source in ("lora", "finetune"):
        s["adapter"] = c(cfg.adapter)
    if source == "bias":
        s["bias"] = c(cfg.bias)
    if source == "finetune":
        s["finetune"] = c(cfg.finetune)
    return s


def artifact_dir(cfg: DictConfig, fp: str, behavior: str, data_hash: str, source: str) -> Path:
    """Cache key: (base model fingerprint, behavior, source, data, settings)."""
    return (Path(cfg.paths.cache_dir).expanduser() / "vectors" / f"{cfg.model.name}-{fp[:12]}" / behavior
            / source / f"{data_hash[:12]}-{stable_hash(artifact_settings(cfg, source), 8)}")


def resume_checkpoint_path(cfg: DictConfig, folder: Path) -> Path:
    """Where a paired training for the artifacts in `folder` keeps its resume checkpoint.

    Keyed exactly like the artifacts (same relative path under `checkpoints/` instead of `vectors/`), so rerunning
    the same command finds it wherever Hydra puts the new run dir, and any change of data or settings starts
    fresh. Kept outside `vectors/` so the vector library never lists a half-trained folder.
    """
    cache = Path(cfg.paths.cache_dir).expanduser()
    return cache / "checkpoints" / folder.relative_to(cache / "vectors") / "last.ckpt"


def _manifest(ctx: Context, source: str, data_manifest: dict, **extra) -> dict:
    return {
        "base_model": ctx.cfg.model.path,
        "model_name": ctx.cfg.model.name,
        "base_fingerprint": ctx.fingerprint,
        "behavior": ctx.behavior.name,
        "behavior_version": ctx.behavior.version,
        "method": source,
        # the training seed (split, LoRA init, batch order) and the seed the data was sampled with (paper §1)
        "seed": ctx.cfg.seed,
        "data_seed": data_manifest["key"]["sampling"]["seed"],
        "settings": artifact_settings(ctx.cfg, source),
        "data_hash": data_manifest["data_hash"],
        "data_counts": data_manifest["counts"],
        "data_key": data_manifest["key"],
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def _datamodule(ctx: Context, pairs, with_system: bool = False) -> PairedDataModule:
    counts = {s: len(pairs[s]) for s in SIDES}
    if min(counts.values()) < MIN_EXAMPLES:
        raise WsteerError(f"too little data to train: {counts} examples (need ≥ {MIN_EXAMPLES} per side); "
                          "raise sampling.n_samples or relax the judge thresholds")
    t = ctx.cfg.trainer
    return PairedDataModule(ctx.tokenizer, {s: list(pairs[s]) for s in SIDES}, batch_size=t.batch_size,
                            max_length=t.max_length, val_fraction=t.val_fraction, seed=ctx.cfg.seed,
                            with_system=with_system, group_by_length=bool(t.get("group_by_length", False)))


def train_pair(ctx: Context, pairs, data_manifest: dict, source: str, run=None,
               resume_ckpt: Path | None = None) -> dict[str, object]:
    """Fit one trainable parameter set per side on D⁺/D⁻ with one base model; return the artifacts.

    With `resume_ckpt`, a checkpoint is kept there after every validation and, if one is already there (a killed
    earlier run of the same command), training continues from it instead of from step 0.
    """
    cfg, t = ctx.cfg, ctx.cfg.trainer
    dm = _datamodule(ctx, pairs)
    if source == "bias":
        pair, lr = BiasPair(ctx.model, SIDES), cfg.bias.lr  # biases train fully, with their own LR (paper §1)
    else:
        pair, lr = LoraPair(ctx.model, cfg.adapter, SIDES), t.lr
    every = cfg.finetune.checkpoint_every if source == "finetune" else None
    module = PairedModule(ctx.model, pair, lr=lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
                          total_steps=t.steps, grad_clip=t.grad_clip, checkpoint_every=every)
    try:  # the base model must come back clean even if training fails
        with stays_on_its_device(ctx.model):
            return _fit_and_export(ctx, pair, module, dm, data_manifest, source, run, resume_ckpt)
    finally:
        pair.remove()
        ctx.model.eval()


def _fit_and_export(ctx: Context, pair, module: PairedModule, dm, data_manifest: dict, source: str, run,
                    resume_ckpt: Path | None = None):
    """Validate at step 0, fit, keep each side's best weights, and export them as artifacts."""
    cfg, t = ctx.cfg, ctx.cfg.trainer
    # manual optimization counts one global step per optimizer, i.e. per side
    trainer = build_trainer(ctx, run, max_steps=t.steps * len(SIDES), val_every=t.eval_every, resume_ckpt=resume_ckpt)
    t0 = time.perf_counter()
    fit_resumably(trainer, module, dm, resume_ckpt, "paired training", t.steps, steps_per_global=len(SIDES))
    stop_helper_ranks(trainer)
    ctx.timings["train"] = time.perf_counter() - t0
    for side in SIDES:
        ctx.timings[f"train_{side}"] = module.side_seconds[side]
    with ctx.timed("build_vector"):
        extra = {"val_history": module.history, "train_tokens": dm.train_tokens(), "dropped_too_long": dm.dropped}
        out: dict[str, object] = {}
        if source == "finetune":
            for step, by_side in module.checkpoints.items():
                for side in SIDES:
                    m = _manifest(ctx, "finetune", data_manifest, side=side, step=step, **extra)
                    out[f"{side}_step{step}"] = WeightVector(dict(by_side[side]), m)
        else:
            best = module.restore_best()
            extra["best"] = best
            exported = {s: pair.export(s) for s in SIDES}
            if source == "bias":
                delta = {n: exported["pos"][n] - exported["neg"][n] for n in exported["pos"]}
                out["bias"] = DenseVector(delta, _manifest(ctx, "bias", data_manifest, **extra))
            else:
                m = _manifest(ctx, "lora", data_manifest, lora=OmegaConf.to_container(cfg.adapter, resolve=True),
                              schedule=OmegaConf.to_container(t, resolve=True), **extra)
                out["contrastive"] = WeightVector.contrastive(exported["pos"], exported["neg"], {**m, "variant": "contrastive"})
                out["pos"] = WeightVector(exported["pos"], {**m, "variant": "tau_pos"})
                out["neg"] = WeightVector(exported["neg"], {**m, "variant": "tau_neg"})
                for v in out.values():
                    v.manifest["norm"] = v.norm()
    return out


def collect_activations(ctx: Context, pairs, data_manifest: dict) -> dict[str, object]:
    """aˡ for every layer, via `Trainer.test` over D⁺ and D⁻ with the eliciting system prompts present."""
    dm = _datamodule(ctx, pairs, with_system=True)
    collector = ActivationCollector(ctx.model, SIDES)
    with ctx.timed("collect_activations"):
        # one device: a forward pass over a few hundred rows, and DDP would rerun the whole command per rank
        with stays_on_its_device(ctx.model):
            build_trainer(ctx, None, one_device=True).test(collector, dataloaders=dm.all_dataloaders(), verbose=False)
    a = collector.difference()
    tensors = {str(i): a[i].cpu() for i in range(a.shape[0])}
    return {"activation": DenseVector(tensors, _manifest(ctx, "activation", data_manifest, n_layers=a.shape[0] - 1))}


def load_artifacts(folder: Path, source: str) -> dict[str, object]:
    if source == "lora":
        return {k: WeightVector.load(folder / f"{k}.safetensors") for k in ("contrastive", "pos", "neg")}
    if source == "finetune":
        return {p.stem: WeightVector.load(p) for p in sorted(folder.glob("*_step*.safetensors"))}
    return {source: DenseVector.load(folder / f"{source}.safetensors")}


def ensure_artifacts(ctx: Context, source: str = "lora", run=None, force: bool = False) -> tuple[dict, Path, bool]:
    """Reuse the cached artifacts for (model, behavior, source, data, settings), or build and cache them."""
    if source not in SOURCES:
        raise WsteerError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    cfg = ctx.cfg
    with ctx.timed("data"):
        pairs, data_manifest = ensure_pairs(cfg, ctx.model, ctx.tokenizer, ctx.behavior, ctx.fingerprint)
    folder = artifact_dir(cfg, ctx.fingerprint, ctx.behavior.name, data_manifest["data_hash"], source)
    # concurrent jobs of a sweep build each artifact once: the others wait here, then find it COMPLETE
    with building(cfg.paths.cache_dir, folder, f"the {source} artifacts"):
        return _ensure_artifacts(ctx, source, run, force, pairs, data_manifest, folder)


def _ensure_artifacts(ctx: Context, source: str, run, force: bool, pairs, data_manifest: dict, folder: Path):
    cfg = ctx.cfg
    done = folder / "COMPLETE"
    if done.is_file() and not force:
        print(f"wsteer: reusing cached {source} artifacts in {folder}")
        return load_artifacts(folder, source), folder, False
    if source == "activation":
        artifacts = collect_activations(ctx, pairs, data_manifest)
    else:
        artifacts = train_pair(ctx, pairs, data_manifest, source, run, resume_checkpoint_path(cfg, folder))
    folder.mkdir(parents=True, exist_ok=True)
    for name, art in artifacts.items():
        art.save(folder / f"{name}.safetensors")
    write_json(done, {"artifacts": sorted(artifacts)})  # written last: a half-saved folder is never reused
    # The artifacts are safe on disk: the resume checkpoint has served its purpose.
    shutil.rmtree(resume_checkpoint_path(cfg, folder).parent, ignore_errors=True)
    print(f"wsteer: saved {source} artifacts to {folder}")
    return artifacts, folder, True
