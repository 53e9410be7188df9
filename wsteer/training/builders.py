"""The built-in artifact builders (paper §1–2), named by the methods in conf/method/ as `artifact: {_target_: ...}`.

- `LoraPairs` (kind `lora`): paired LoRA fine-tunes → τ⁺, τ⁻ and w = τ⁺ − τ⁻ (weight, task_vector_pos/neg);
- `BiasPairs` (kind `bias`): paired bias-only fine-tunes → Δb = b⁺ − b⁻ (bias);
- `FinetuneCheckpoints` (kind `finetune`): the paired LoRAs saved every few steps (the fine-tuning baseline);
- `ActivationMeans` (kind `activation`): per-layer mean activation differences aˡ (activation, activation_all_layers).

The settings each puts in its cache key are exactly those of the string-keyed builder they replace, so vectors
cached before still match.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsteer.behaviors import SIDES
from wsteer.context import Context
from wsteer.models import stays_on_its_device
from wsteer.steering.activation import ActivationCollector
from wsteer.training.builder import ArtifactBuilder, paired_datamodule
from wsteer.training.paired import BiasPair, LoraPair, PairedModule, stop_helper_ranks
from wsteer.training.resume import fit_resumably
from wsteer.training.trainer import build_trainer
from wsteer.vectors import DenseVector, WeightVector


def _c(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def training_settings(cfg: DictConfig) -> dict:
    """The key of every paired fine-tune: the trainer settings and the training seed."""
    s = {"trainer": _c(cfg.trainer), "seed": cfg.seed}
    if str(cfg.model.get("dtype", "float32")) != "float32":
        # a fine-tune of bf16 base weights is another vector (float32: the key vectors have always had)
        s["model_dtype"] = str(cfg.model.dtype)
    if s["trainer"].get("devices") in (-1, "-1", "auto") and s["trainer"].get("accelerator") in ("gpu", "cuda"):
        # "all visible GPUs": the global batch is batch_size × their number, so the key holds the number
        import torch

        s["trainer"]["devices"] = torch.cuda.device_count()
    return s


class PairedFineTune(ArtifactBuilder):
    """One trainable parameter set per side, fit on D⁺/D⁻ with one base model (`PairedModule`)."""

    def make_pair(self, ctx: Context):
        """(the pair of trainable parameter sets, its learning rate)."""
        return LoraPair(ctx.model, ctx.cfg.adapter, SIDES), ctx.cfg.trainer.lr

    def checkpoint_every(self, cfg: DictConfig) -> int | None:
        return None

    def export(self, ctx: Context, module: PairedModule, pair, data_manifest: dict, extra: dict) -> dict:
        raise NotImplementedError

    def build(self, ctx, pairs, data_manifest, run=None, resume_ckpt=None):
        """With `resume_ckpt`, a checkpoint is kept there after every validation and, if one is already there (a
        killed earlier run of the same command), training continues from it instead of from step 0."""
        t = ctx.cfg.trainer
        dm = paired_datamodule(ctx, pairs)
        pair, lr = self.make_pair(ctx)
        module = PairedModule(ctx.model, pair, lr=lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
                              total_steps=t.steps, grad_clip=t.grad_clip, checkpoint_every=self.checkpoint_every(ctx.cfg))
        try:  # the base model must come back clean even if training fails
            with stays_on_its_device(ctx.model):
                return self._fit_and_export(ctx, pair, module, dm, data_manifest, run, resume_ckpt)
        finally:
            pair.remove()
            ctx.model.eval()

    def _fit_and_export(self, ctx: Context, pair, module: PairedModule, dm, data_manifest: dict, run,
                        resume_ckpt: Path | None):
        """Validate at step 0, fit, and export the artifacts."""
        t = ctx.cfg.trainer
        # manual optimization counts one global step per optimizer, i.e. per side
        trainer = build_trainer(ctx, run, max_steps=t.steps * len(SIDES), val_every=t.eval_every,
                                resume_ckpt=resume_ckpt)
        t0 = time.perf_counter()
        fit_resumably(trainer, module, dm, resume_ckpt, "paired training", t.steps, steps_per_global=len(SIDES))
        stop_helper_ranks(trainer)
        ctx.timings["train"] = time.perf_counter() - t0
        for side in SIDES:
            ctx.timings[f"train_{side}"] = module.side_seconds[side]
        ctx.timings["train_validation"] = module.val_seconds
        with ctx.timed("build_vector"):
            extra = {"val_history": module.history, "train_tokens": dm.train_tokens(), "dropped_too_long": dm.dropped}
            return self.export(ctx, module, pair, data_manifest, extra)


class LoraPairs(PairedFineTune):
    """τ⁺, τ⁻ (each side's best LoRA weights as a task vector) and w = τ⁺ − τ⁻."""

    kind = "lora"
    run_names = {"contrastive": "vector", "pos": "tau_pos", "neg": "tau_neg"}

    def settings(self, cfg):
        return {**training_settings(cfg), "adapter": _c(cfg.adapter)}

    def accepts_file(self, made_by):
        return made_by in ("lora", "weight")  # "weight": vectors saved before the kind had its name

    def load(self, folder):
        return {k: WeightVector.load(folder / f"{k}.safetensors") for k in ("contrastive", "pos", "neg")}

    def export(self, ctx, module, pair, data_manifest, extra):
        extra["best"] = module.restore_best()
        exported = {s: pair.export(s) for s in SIDES}
        m = self.manifest(ctx, data_manifest, lora=_c(ctx.cfg.adapter), schedule=_c(ctx.cfg.trainer), **extra)
        out = {"contrastive": WeightVector.contrastive(exported["pos"], exported["neg"], {**m, "variant": "contrastive"}),
               "pos": WeightVector(exported["pos"], {**m, "variant": "tau_pos"}),
               "neg": WeightVector(exported["neg"], {**m, "variant": "tau_neg"})}
        for v in out.values():
            v.manifest["norm"] = v.norm()
        return out


class BiasPairs(PairedFineTune):
    """Δb = b⁺ − b⁻ of every MLP output projection, trained fully with `bias.lr` (paper §1)."""

    kind = "bias"
    run_names = {"bias": "vector"}

    def settings(self, cfg):
        return {**training_settings(cfg), "bias": _c(cfg.bias)}

    def make_pair(self, ctx):
        return BiasPair(ctx.model, SIDES), ctx.cfg.bias.lr

    def load(self, folder):
        return {"bias": DenseVector.load(folder / "bias.safetensors")}

    def export(self, ctx, module, pair, data_manifest, extra):
        extra["best"] = module.restore_best()
        exported = {s: pair.export(s) for s in SIDES}
        delta = {n: exported["pos"][n] - exported["neg"][n] for n in exported["pos"]}
        return {"bias": DenseVector(delta, self.manifest(ctx, data_manifest, **extra))}


class FinetuneCheckpoints(LoraPairs):
    """Each side's LoRA weights every `finetune.checkpoint_every` steps, as `<side>_step<n>` task vectors."""

    kind = "finetune"
    run_names = {}

    def settings(self, cfg):
        return {**super().settings(cfg), "finetune": _c(cfg.finetune)}

    def accepts_file(self, made_by):
        return False  # a checkpoint curve is many files: it is read from the cache only

    def load(self, folder):
        return {p.stem: WeightVector.load(p) for p in sorted(folder.glob("*_step*.safetensors"))}

    def checkpoint_every(self, cfg):
        return cfg.finetune.checkpoint_every

    def export(self, ctx, module, pair, data_manifest, extra):
        return {f"{side}_step{step}": WeightVector(dict(by_side[side]), self.manifest(ctx, data_manifest, side=side,
                                                                                    step=step, **extra))
                for step, by_side in module.checkpoints.items() for side in SIDES}


class ActivationMeans(ArtifactBuilder):
    """aˡ for every layer, via `Trainer.test` over D⁺ and D⁻ with the eliciting system prompts present."""

    kind = "activation"
    run_names = {"activation": "vector"}

    def settings(self, cfg):
        return {"max_length": cfg.trainer.max_length}

    def load(self, folder):
        return {"activation": DenseVector.load(folder / "activation.safetensors")}

    def build(self, ctx, pairs, data_manifest, run=None, resume_ckpt=None):
        dm = paired_datamodule(ctx, pairs, with_system=True)
        collector = ActivationCollector(ctx.model, SIDES)
        with ctx.timed("collect_activations"):
            # one device: a forward pass over a few hundred rows, and DDP would rerun the whole command per rank
            with stays_on_its_device(ctx.model):
                build_trainer(ctx, None, one_device=True).test(collector, dataloaders=dm.all_dataloaders(),
                                                               verbose=False)
        a = collector.difference()
        tensors = {str(i): a[i].cpu() for i in range(a.shape[0])}
        return {"activation": DenseVector(tensors, self.manifest(ctx, data_manifest, n_layers=a.shape[0] - 1))}


# What `train.py source=<kind>` builds (and `ensure_artifacts(ctx, "<kind>")`); a method names its builder itself.
BUILT_IN: dict[str, type[ArtifactBuilder]] = {b.kind: b for b in (LoraPairs, BiasPairs, ActivationMeans,
                                                                 FinetuneCheckpoints)}
