"""Paired training (paper §1–2): one base model in memory, one trainable parameter set per side (`pos`, `neg`).

Each step trains every side on its own batch with its own AdamW and LR schedule (manual optimization), so the
two fine-tunes are independent exactly as in the paper while sharing the frozen base weights. Each side keeps
its best-by-validation weights (paper App. B: early stopping on a 5% validation split).

What is trained is a `ParamPair`: `LoraPair` (PEFT LoRA adapters, for weight steering and task vectors) or
`BiasPair` (zero-initialised biases on every MLP output projection, for bias-only steering). Training a single
side (the fine-tuning baseline) is the same module with `sides=("pos",)`. The LoRA config and the read-out
of trained factors (`lora_config`, `lora_factors`) are `wsteer.lora_layout`'s, shared with export and monitoring.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from peft import get_peft_model
from torch import nn
from transformers import get_linear_schedule_with_warmup

from wsteer.errors import WsteerError
from wsteer.lora_layout import lora_config, lora_factors
from wsteer.models import mlp_output_projections


class LoraPair:
    """One PEFT LoRA adapter per side on the same base model."""

    kind = "lora"

    def __init__(self, model, adapter_cfg, sides):
        config = lora_config(adapter_cfg)
        self.sides = list(sides)
        self._flags = [(p, p.requires_grad) for p in model.parameters()]  # PEFT freezes the base weights
        # Every adapter starts from the same random lora_A (B starts at 0): updates then differ only in what was
        # learned, so cosines between LoRA updates (paper §5) are not an artefact of different random A's.
        seed = adapter_cfg.get("init_seed")
        for i, side in enumerate(sides):
            if seed is not None:
                torch.manual_seed(int(seed))
            if i == 0:
                self.peft = get_peft_model(model, config, adapter_name=side)
            else:
                self.peft.add_adapter(side, config)
        self.activate(self.sides[0])

    def activate(self, side: str) -> None:
        self.peft.set_adapter(side)  # routes the forward through this adapter only
        # PEFT's set_adapter also freezes the inactive adapters. Keep every side trainable instead: DDP registers
        # only the parameters that require grad when it wraps the model, so a side frozen at wrap time would
        # never have its gradients averaged. An inactive side is not in the forward, so it gets no gradient.
        for side_ in self.sides:
            for p in self.params(side_).values():
                p.requires_grad_(True)

    def params(self, side: str) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.peft.named_parameters() if "lora_" in n and f".{side}." in n}

    def export(self, side: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return lora_factors(self.peft, side)

    def remove(self) -> None:
        self.peft.unload()  # drop the LoRA layers; the base weights were never modified
        for p, flag in self._flags:
            p.requires_grad_(flag)


class BiasPair(nn.Module):
    """Zero-initialised biases on every layer's MLP output projection, one set per side (paper §1, "Bias-only").

    Llama and Qwen2 MLPs have no bias, so instead of patching the architecture the bias is added by a forward
    hook on each `down_proj`: the same function, and removing the hooks restores the model exactly.
    """

    kind = "bias"

    def __init__(self, model, sides):
        super().__init__()
        self.targets = mlp_output_projections(model)
        self.sides = list(sides)
        self.bias = nn.ParameterDict({
            f"{side}__{i}": nn.Parameter(torch.zeros(m.out_features, device=m.weight.device, dtype=torch.float32))
            for side in self.sides for i, (_, m) in enumerate(self.targets)
        })
        self.active = self.sides[0]
        self._frozen = [(p, p.requires_grad) for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)  # only the biases train
        self._hooks = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.targets)]

    def _hook(self, i: int):
        def add_bias(module, args, output):
            return output + self.bias[f"{self.active}__{i}"].to(output.dtype)

        return add_bias

    def activate(self, side: str) -> None:
        self.active = side

    def params(self, side: str) -> dict[str, nn.Parameter]:
        return {k: p for k, p in self.bias.items() if k.startswith(f"{side}__")}

    def export(self, side: str) -> dict[str, torch.Tensor]:
        return {name: self.bias[f"{side}__{i}"].detach().float().cpu().clone() for i, (name, _) in enumerate(self.targets)}

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        for p, flag in self._frozen:
            p.requires_grad_(flag)


class PairedModule(L.LightningModule):
    def __init__(self, model, pair, *, lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
                 grad_clip: float | None = 1.0, checkpoint_every: int | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.pair = pair  # registered as a submodule when it is one (BiasPair), so Lightning moves it
        self.sides = list(pair.sides)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps, self.grad_clip = warmup_steps, total_steps, grad_clip
        self.checkpoint_every = checkpoint_every
        self.model.train()  # HF models load in eval mode; Lightning expects train mode here
        self.best: dict[str, tuple[float, dict[str, torch.Tensor]]] = {}
        self.history: list[dict] = []  # one row per validation: step, side, loss
        self.checkpoints: dict[int, dict[str, object]] = {}  # step -> side -> exported weights
        self.side_seconds = {s: 0.0 for s in self.sides}  # wall time spent training each side
        self.val_seconds = 0.0  # wall time spent validating (both sides, every eval_every steps)
        self._val_t0 = 0.0
        self._val_sums: dict[str, list[float]] = {}
        # Resume checkpoints hold only the trained parameters (the frozen base is reloaded from the model source),
        # so loading them must not demand the base weights.
        self.strict_loading = False

    def _loss(self, side: str, batch) -> tuple[torch.Tensor, int]:
        self.pair.activate(side)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss, int((batch["labels"][:, 1:] != -100).sum())

    def configure_optimizers(self):
        opts, scheds = [], []
        for side in self.sides:
            opt = torch.optim.AdamW(list(self.pair.params(side).values()), lr=self.lr, weight_decay=self.weight_decay)
            opts.append(opt)
            scheds.append(get_linear_schedule_with_warmup(opt, self.warmup_steps, self.total_steps))
        return opts, scheds

    def training_step(self, batch, batch_idx):
        opts, scheds = self.optimizers(), self.lr_schedulers()
        opts = opts if isinstance(opts, list) else [opts]
        scheds = scheds if isinstance(scheds, list) else [scheds]
        for side, opt, sched in zip(self.sides, opts, scheds, strict=True):
            t0 = time.perf_counter()
            loss, _ = self._loss(side, batch[side])
            if not torch.isfinite(loss):
                raise WsteerError(f"training loss of {side!r} became {loss.item()} at step "
                                  f"{self.training_steps_done + 1}; lower the learning rate (trainer.lr) or check "
                                  "the data")
            self.manual_backward(loss)
            if self.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            self.side_seconds[side] += time.perf_counter() - t0
            self.log(f"train/loss_{side}", loss.detach(), prog_bar=True, on_step=True)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = self.training_steps_done  # not batch_idx + 1: after a resume batch_idx restarts mid-run
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            self.checkpoints[step] = {s: self.pair.export(s) for s in self.sides}

    def on_validation_epoch_start(self):
        self._val_sums = {s: [0.0, 0] for s in self.sides}
        self._val_t0 = time.perf_counter()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        side = self.sides[dataloader_idx]
        loss, n = self._loss(side, batch)
        self._val_sums[side][0] += loss.item() * n
        self._val_sums[side][1] += n

    def on_validation_epoch_end(self):
        self.val_seconds += time.perf_counter() - self._val_t0
        if self.trainer.sanity_checking:
            return
        for side in self.sides:
            total, n = self._val_sums[side]
            val = total / max(n, 1)
            # every DDP rank validates on all rows (PairedDataModule._shard), so the mean over ranks is this value
            self.log(f"val/loss_{side}", val, prog_bar=True, sync_dist=True)
            self.history.append({"step": self.training_steps_done, "side": side, "loss": val})
            if side not in self.best or val < self.best[side][0]:
                self.best[side] = (val, {k: p.detach().clone() for k, p in self.pair.params(side).items()})

    @property
    def training_steps_done(self) -> int:
        # Manual optimization counts one global step per optimizer.step(): one per side.
        return self.trainer.global_step // len(self.sides) if self._trainer is not None else 0

    # --- resume checkpoints (Lightning saves optimizers, schedulers and loop progress; we add our own state) ---

    def _trained_names(self) -> set[str]:
        ids = {id(p) for side in self.sides for p in self.pair.params(side).values()}
        return {n for n, p in self.named_parameters() if id(p) in ids}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self._trained_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["wsteer_paired"] = {
            "sides": self.sides,
            "best": {s: [val, snap] for s, (val, snap) in self.best.items()},
            "history": self.history,
            "checkpoints": self.checkpoints,
            "side_seconds": self.side_seconds,
            "val_seconds": self.val_seconds,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("wsteer_paired")
        missing = self._trained_names() - set(checkpoint.get("state_dict", {}))
        if state is None or state["sides"] != self.sides or missing:
            raise WsteerError("the training checkpoint does not match this run (different sides or adapters); "
                              "delete it to train from scratch")
        self.best = {s: (float(val), snap) for s, (val, snap) in state["best"].items()}
        self.history = list(state["history"])
        self.checkpoints = {int(k): v for k, v in state["checkpoints"].items()}
        self.side_seconds = dict(state["side_seconds"])
        self.val_seconds = float(state.get("val_seconds", 0.0))  # absent in checkpoints written before it existed

    def restore_best(self) -> dict[str, dict]:
        """Load each side's best-by-validation weights; return {side: {"val_loss", "step"}}."""
        summary = {}
        with torch.no_grad():
            for side, (val, snap) in self.best.items():
                params = self.pair.params(side)
                for k, t in snap.items():
                    params[k].copy_(t)
                step = min(h["step"] for h in self.history if h["side"] == side and math.isclose(h["loss"], val))
                summary[side] = {"val_loss": val, "step": step}
        return summary


def stop_helper_ranks(trainer: L.Trainer) -> None:
    """Under DDP every rank runs the whole command; ranks other than 0 only help train.

    Call it after the last collective step (the final validation): the other ranks exit there, so artifacts,
    evaluation and the W&B run happen once, on rank 0, which holds the same trained weights.
    """
    if trainer.world_size == 1:
        return
    if not trainer.is_global_zero:
        raise SystemExit(0)
    import torch.distributed as dist

    if dist.is_initialized():
        # rank 0 goes on alone: torchmetrics (the evaluators) would otherwise wait for the departed ranks to sync
        dist.destroy_process_group()


class ResumeCheckpoint(L.Callback):
    """Save a resume checkpoint after every in-training validation, atomically, at one fixed path.

    Saving right after validation (not on a training batch) means the restored run already holds that
    validation in its history, and Lightning knows not to repeat it. The file is written under a temporary name
    and renamed, so a kill mid-save leaves the previous checkpoint intact rather than a truncated one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _tmp(self, pid: int | str) -> Path:
        return self.path.with_name(f".{self.path.name}.{pid}.tmp")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A run killed mid-save (SIGKILL, power loss) leaves its temporary file: remove those of dead processes,
        # so reruns do not pile them up.
        if stage != "fit" or not trainer.is_global_zero or not self.path.parent.is_dir():
            return
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            pid = tmp.name[len(self.path.name) + 2 : -len(".tmp")]
            if not (pid.isdigit() and _alive(int(pid))):
                tmp.unlink(missing_ok=True)

    def _save(self, trainer: L.Trainer) -> None:
        from wsteer.artifacts import storage_failure

        tmp = self._tmp(os.getpid())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(tmp, weights_only=False)  # optimizer and LR schedule states are needed to resume
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        except Exception as e:
            tmp.unlink(missing_ok=True)  # never leave a partial file behind
            reason = storage_failure(e)
            if reason is None:
                raise
            kept = "the previous checkpoint is unchanged" if self.path.is_file() else "no checkpoint was kept"
            raise WsteerError(
                f"could not write the training checkpoint {self.path}: {reason} (at step "
                f"{getattr(trainer.lightning_module, 'training_steps_done', trainer.global_step)}; {kept}); free "
                "some space or point paths.cache_dir at another disk, then rerun the same command") from e

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning turns SIGTERM into this exception only between steps (the state is consistent there), so the
        # steps since the last validation are kept too. A crash or Ctrl+C mid-step keeps the last checkpoint.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            self._save(trainer)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True

