"""train.py: sample (or reuse) D⁺/D⁻, then build a steering artifact from them (paper §1–2).

`source=` is an artifact kind, built by its builder in `wsteer/training/builders.py` (the one the methods in
conf/method/ name): `lora` (paired LoRAs → τ⁺, τ⁻, w = τ⁺ − τ⁻; the default), `bias` (Δb = b⁺ − b⁻), `activation`
(aˡ), `finetune` (the paired LoRAs every `finetune.checkpoint_every` steps). Or a job: `task` / `joint` (a task
fine-tune θ_ft, optionally mixed with up-sampled D⁻: `wsteer.recipes.task_finetune`), `monitoring` (paper §5).
A method with a builder of its own builds its artifact on first use in steer.py.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wsteer.artifacts import write_json
from wsteer.data.pairs import ensure_pairs
from wsteer.errors import WsteerError
from wsteer.recipes._common import Context, prepare
from wsteer.tracking import start_run
from wsteer.training.build import SOURCES, builder_for, ensure_artifacts
from wsteer.training.trainer import build_trainer


def export_pairs(ctx: Context, dest: str) -> dict[str, float]:
    """`stage=data`: sample (or reuse) D⁺/D⁻ only, and copy the dataset folder to `dest` if given."""
    import shutil

    from wsteer.artifacts import atomic_path

    _, manifest = ensure_pairs(ctx.cfg, ctx.model, ctx.tokenizer, ctx.behavior, ctx.fingerprint)
    if dest and Path(dest).resolve() != Path(manifest["path"]).resolve():
        with atomic_path(dest) as tmp:
            shutil.copytree(manifest["path"], tmp)
        print(f"wsteer: D+/D- written to {dest}")
    return {f"data/count_{s}": float(n) for s, n in manifest["counts"].items()}


RECIPE_SOURCES = (*SOURCES, "task", "joint", "monitoring")


def run(cfg: DictConfig) -> dict[str, float]:
    # Names are checked before the model load and sampling, so a typo costs a second.
    if cfg.source not in RECIPE_SOURCES:
        raise WsteerError(f"unknown source={cfg.source!r}; choose one of {', '.join(RECIPE_SOURCES)}")
    if cfg.stage not in ("all", "data"):
        raise WsteerError(f"unknown stage={cfg.stage!r}; use stage=all (build the artifacts) or stage=data "
                          "(only sample D+/D-)")
    ctx = prepare(cfg)
    if cfg.stage == "data":
        return export_pairs(ctx, cfg.pairs_out)
    wb = start_run(cfg, "train")
    try:
        if cfg.source == "monitoring":
            from wsteer.recipes.monitoring import run_experiment

            return run_experiment(ctx, wb)
        if cfg.source in ("task", "joint"):
            from wsteer.recipes.task_finetune import train_task

            _, summary = train_task(ctx, cfg.source, build_trainer, wb)
            return {"val/best_loss_task": summary["best"]["val_loss"]}
        builder = builder_for(cfg.source)
        artifacts, folder, _ = ensure_artifacts(ctx, builder, wb, force=True)
        # In the run dir the main artifact is vector.safetensors (w, Δb or a), next to τ± for LoRA.
        names = {name: builder.run_names.get(name, name) for name in artifacts}
        for name, art in artifacts.items():
            art.save(ctx.out_dir / f"{names[name]}.safetensors")
        main = next((artifacts[n] for n, stem in names.items() if stem == "vector"), next(iter(artifacts.values())))
        write_json(ctx.out_dir / "vector_manifest.json", main.manifest)
        write_json(ctx.out_dir / "timings.json", ctx.timings)
        metrics = {"vector/norm": main.norm()}
        for s, b in main.manifest.get("best", {}).items():
            metrics[f"val/best_loss_{s}"] = b["val_loss"]
        if wb is not None:
            wb.summary.update({**metrics, "vector_dir": str(folder)})
        print(f"wsteer: {cfg.source} artifacts in {folder}; " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics
    finally:
        if wb is not None:
            wb.finish()
