"""Config handling: building objects (Hydra `_target_`, trusted modules only) and checking values up front."""

from __future__ import annotations

import math
import re

from hydra.utils import instantiate as _instantiate
from omegaconf import DictConfig, OmegaConf

from wsteer.errors import WsteerError

ALLOWED_PREFIXES = ("wsteer.",)


def instantiate(node: DictConfig, exclude: tuple[str, ...] = (), **kwargs):
    """`hydra.utils.instantiate` for `wsteer.*` targets only (a config file must not run arbitrary code).

    `exclude` drops keys that describe how to build the inputs rather than the object (e.g. a method's
    `source`). Run-time objects (a model, a vector) go in `kwargs`: they are passed to the constructor
    directly, never merged into the config (OmegaConf cannot hold tensors).
    """
    target = node.get("_target_", "")
    if not str(target).startswith(ALLOWED_PREFIXES):
        raise WsteerError(f"refusing to build {target!r}: config targets must live in wsteer.*")
    node = OmegaConf.create({k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in exclude})
    return _instantiate(node, _partial_=True)(**kwargs)


# --- value checks: a typo in a number costs seconds, not a sampling run ----------------------------------------

def _int_at_least(lo: int):
    def ok(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo
    return ok


def _number(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok


def _optional(check):
    return lambda v: v is None or check(v)


# (config path, check, what it must be, an example of a good value)
CHECKS = (
    ("seed", _int_at_least(0), "a non-negative integer", "seed=0"),
    ("data_seed", _int_at_least(0), "a non-negative integer", "data_seed=0"),
    ("sampling.n_samples", _int_at_least(1), "a positive integer", "sampling.n_samples=2"),
    ("sampling.batch_size", _int_at_least(1), "a positive integer", "sampling.batch_size=50"),
    ("sampling.max_new_tokens", _int_at_least(1), "a positive integer", "sampling.max_new_tokens=80"),
    ("sampling.temperature", _number(0), "a finite number ≥ 0", "sampling.temperature=0.8"),
    ("sampling.max_questions", _optional(_int_at_least(1)), "null or a positive integer", "sampling.max_questions=2"),
    ("sampling.max_prompts", _optional(_int_at_least(1)), "null or a positive integer", "sampling.max_prompts=2"),
    ("sampling.min_kept", _int_at_least(0), "a non-negative integer", "sampling.min_kept=4"),
    ("trainer.steps", _int_at_least(1), "a positive integer", "trainer.steps=25"),
    ("trainer.batch_size", _int_at_least(1), "a positive integer", "trainer.batch_size=8"),
    ("trainer.lr", _number(0, lo_open=True), "a finite number > 0", "trainer.lr=3e-4"),
    ("trainer.weight_decay", _number(0), "a finite number ≥ 0", "trainer.weight_decay=0.01"),
    ("trainer.warmup_steps", _int_at_least(0), "a non-negative integer", "trainer.warmup_steps=5"),
    ("trainer.max_length", _int_at_least(8), "an integer ≥ 8", "trainer.max_length=160"),
    ("trainer.eval_every", _int_at_least(1), "a positive integer", "trainer.eval_every=5"),
    ("trainer.val_fraction", _number(0, 1, lo_open=True, hi_open=True), "a number strictly between 0 and 1",
     "trainer.val_fraction=0.05"),
    ("trainer.grad_clip", _optional(_number(0, lo_open=True)), "null or a finite number > 0", "trainer.grad_clip=1.0"),
    ("adapter.r", _int_at_least(1), "a positive integer (the paper uses 32)", "adapter.r=32"),
    ("adapter.alpha", _number(0, lo_open=True), "a finite number > 0", "adapter.alpha=16"),
    ("adapter.dropout", _number(0, 1, hi_open=True), "a number in [0, 1)", "adapter.dropout=0"),
    ("bias.lr", _number(0, lo_open=True), "a finite number > 0", "bias.lr=1e-3"),
    ("finetune.checkpoint_every", _int_at_least(1), "a positive integer", "finetune.checkpoint_every=5"),
    ("eval.max_new_tokens", _int_at_least(1), "a positive integer", "eval.max_new_tokens=80"),
    ("eval.batch_size", _int_at_least(1), "a positive integer", "eval.batch_size=20"),
    ("eval.bootstrap", _int_at_least(100), "an integer ≥ 100", "eval.bootstrap=1000"),
    ("eval.bootstrap_seed", _int_at_least(0), "a non-negative integer", "eval.bootstrap_seed=0"),
)
_MISSING = object()


def validate(cfg: DictConfig) -> None:
    """Check every numeric setting a recipe relies on; raise one `WsteerError` naming the first bad one.

    Called before the model is loaded, so a wrong value fails in about a second instead of after sampling or
    training has started. Settings absent from a config (e.g. a primary config without `trainer`) are skipped.
    """
    for path, ok, what, example in CHECKS:
        value = OmegaConf.select(cfg, path, default=_MISSING)
        if value is _MISSING:
            continue
        if not ok(value):
            raise WsteerError(f"{path} must be {what}, got {value!r} (e.g. {example})")
    device = OmegaConf.select(cfg, "device", default="auto")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise WsteerError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    dtype = str(OmegaConf.select(cfg, "model.dtype", default="float32"))
    if dtype not in MODEL_DTYPES:
        raise WsteerError(f"model.dtype must be one of {', '.join(MODEL_DTYPES)}, got {dtype!r}")
    trainer = OmegaConf.select(cfg, "trainer")
    if trainer is not None:
        check_precision(str(trainer.get("precision", "32-true")), dtype)
        check_multi_device(trainer, paired=OmegaConf.select(cfg, "source", default=None) not in ("task", "joint"))
        eval_devices = OmegaConf.select(cfg, "eval.devices", default=1)
        if trainer.get("devices", 1) != 1 and eval_devices != 1:
            # Lightning leaves rank 0 marked as a launched rank after training: a second data-parallel launch
            # in the same process would wait for helper ranks that have already left
            raise WsteerError(f"trainer.devices={trainer.devices} and eval.devices={eval_devices} in one run: train "
                              "on several devices first (python train.py trainer=ddp ...), then evaluate on several "
                              "in a separate run (python evaluate.py vector=PATH eval.devices=N eval.strategy=ddp)")


# Lightning's "-true" precisions cast the whole LightningModule, and with it the shared base model, to their dtype
# in place: an fp32 base would be rounded to bf16 for the rest of the run (answers, evaluators) and its fp32 values
# lost. They are allowed only where the model is loaded in that dtype already; "-mixed" autocast leaves it as is.
MODEL_DTYPES = ("float32", "bfloat16", "float16")  # wsteer.models.DTYPES
TRUE_PRECISIONS = {"bf16-true": "bfloat16", "16-true": "float16", "64-true": "float64"}


def check_precision(precision: str, model_dtype: str) -> None:
    """Refuse a `trainer.precision` that would silently change the dtype of the loaded model."""
    wanted = TRUE_PRECISIONS.get(precision)
    if wanted is not None and wanted != model_dtype:
        fix = (f"load the model in it too (model.dtype={wanted} trainer.precision={precision})"
               if wanted != "float64" else "use 32-true")
        raise WsteerError(f"trainer.precision={precision} casts the base model to {wanted} in place, but "
                          f"model.dtype={model_dtype}: evaluation would then run on rounded weights. Either {fix}, "
                          f"or keep the model's dtype and train under autocast (trainer.precision=bf16-mixed)")


DDP_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true")


def check_multi_device(t, paired: bool = False) -> None:
    """Several devices train adapters with DDP (tests/test_ddp.py: two CPU processes, equal to the one-process
    reference) or, for one adapter (task fine-tunes), FSDP (GPU only, untested here); anything else is refused."""
    devices, strategy = t.get("devices", 1), str(t.get("strategy", "auto"))
    if devices != 1 and _in_multirun():
        # Lightning starts the other ranks by rerunning the command line, which here holds the whole sweep
        raise WsteerError(f"trainer.devices={devices} inside a Hydra multirun (-m): each rank would rerun the whole "
                          "sweep. Train once with several devices (python train.py trainer=ddp ...), then sweep "
                          "over its vector: python steer.py -m vector=PATH/contrastive.safetensors k=...")
    if devices == 1 or strategy in DDP_STRATEGIES or (strategy == "fsdp" and not paired):
        return
    if strategy.startswith("ddp"):
        # ddp_spawn trains in child processes whose best weights and history never come back; *_false stops on
        # the inactive side's parameters; fork/notebook variants cannot start once CUDA is initialised
        raise WsteerError(f"trainer.strategy={strategy}: use trainer.strategy=ddp (Lightning's subprocess DDP with "
                          "unused parameters allowed, which paired training needs)")
    if strategy == "fsdp":
        raise WsteerError(f"trainer.devices={devices} with trainer.strategy={strategy}: the paired adapters train "
                          "on several devices with DDP; use trainer=ddp (FSDP is for one-adapter task fine-tunes)")
    raise WsteerError(f"trainer.devices={devices} with trainer.strategy={strategy}: adapters train on several "
                      "devices with trainer=ddp (or trainer=fsdp for a task fine-tune); or use trainer.devices=1")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
