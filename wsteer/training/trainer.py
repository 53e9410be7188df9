"""The trainer factory shared by the paired vector fine-tunes, the task fine-tunes and the monitoring experiment."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig

from wsteer.context import Context
from wsteer.monitoring.callback import CosineMonitor
from wsteer.targets import instantiate
from wsteer.training.paired import ResumeCheckpoint


def instantiate_callbacks(cfg: DictConfig, out_dir: Path) -> list[Callback]:
    """The training callbacks of `cfg.callbacks`: a dict name → `{_target_: ..., ...}` (conf/callbacks/), every
    node with a `_target_` built; other entries are settings that the nodes interpolate (`callbacks=none`: {})."""
    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            cb = instantiate(node, f"callbacks.{name}")
            if isinstance(cb, CosineMonitor) and cb.csv_path is None:
                cb.csv_path = Path(out_dir) / "monitor.csv"  # `csv_path: null` means the run dir's monitor.csv
            out.append(cb)
    return out


def strategy(t):
    """`trainer.strategy`, with FSDP wrapping each decoder layer when `trainer.wrap_layers` names them."""
    s = t.get("strategy", "auto")
    if s == "fsdp" and t.get("wrap_layers"):
        import transformers
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy={getattr(transformers, n) for n in t.wrap_layers
                                              if hasattr(transformers, n)})
    if s == "ddp":
        # each backward of a paired step uses one side's LoRA weights only; plain DDP would stop on the other's
        return "ddp_find_unused_parameters_true"
    return s


def warn_if_slow_bf16(precision: str, accelerator: str) -> None:
    """bf16 training on the CPU was measured (BENCHMARKS.md "Issue 19 study") only on a CPU with native bf16
    (AVX512-BF16/AMX), where it was 1.08-1.48x faster; without native bf16 it has no measured speed-up at all."""
    if not precision.startswith("bf16"):
        return  # nothing to probe: fp32 training never touches the CUDA/MPS/oneDNN checks below
    import torch

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                      and not torch.backends.mps.is_available())
    if on_cpu and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn(f"trainer.precision={precision} on a CPU without native bf16 (no AVX512-BF16 or AMX): "
                      "the bf16 speed-up was measured only with native bf16, without it training may be slower than "
                      "in float32 (trainer.precision=32-true)", stacklevel=2)


def build_trainer(ctx: Context, run, max_steps: int = -1, val_every: int | None = None,
             resume_ckpt: Path | None = None, one_device: bool = False) -> L.Trainer:
    """The Lightning Trainer every fine-tune of a run uses: CSV (+ W&B) logging, the configured callbacks, a
    resume checkpoint when given; `one_device` for passes that must not fan out (activation collection)."""
    t = ctx.cfg.trainer
    warn_if_slow_bf16(str(t.precision), str(t.accelerator))
    loggers = [CSVLogger(str(ctx.out_dir), name="train_log")]
    if run is not None:
        loggers.append(WandbLogger(experiment=run))
    callbacks = instantiate_callbacks(ctx.cfg, ctx.out_dir)
    if resume_ckpt is not None:
        callbacks = [*callbacks, ResumeCheckpoint(resume_ckpt)]
    return L.Trainer(
        callbacks=callbacks,
        max_steps=max_steps, val_check_interval=val_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        accelerator=t.accelerator, devices=1 if one_device else t.get("devices", 1),
        strategy="auto" if one_device else strategy(t), precision=t.precision,
        logger=loggers, log_every_n_steps=1,
        use_distributed_sampler=False,  # PairedDataModule shards training rows per rank itself (see _shard)
        enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(ctx.out_dir),
    )
