"""Paired LoRA training (paper §1–2): one base model in memory, one PEFT adapter per side (`pos`, `neg`).

Each step trains every adapter on its own batch with its own AdamW and LR schedule (manual optimization),
so the two fine-tunes are independent exactly as in the paper, while sharing the frozen base weights.
Each adapter keeps the weights of its best validation loss (paper App. B: early stopping on 5% val).
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import get_linear_schedule_with_warmup

from wsteer.errors import WsteerError


def lora_config(adapter_cfg) -> LoraConfig:
    if int(adapter_cfg.r) < 1:
        raise WsteerError(f"adapter.r must be a positive integer (the paper uses 32); got {adapter_cfg.r}")
    return LoraConfig(
        r=int(adapter_cfg.r),
        lora_alpha=float(adapter_cfg.alpha),
        lora_dropout=float(adapter_cfg.dropout),
        target_modules=list(adapter_cfg.target_modules) if not isinstance(adapter_cfg.target_modules, str)
        else adapter_cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


class PairedLoRAModule(L.LightningModule):
    def __init__(self, model, adapter_cfg, *, sides=("pos", "neg"), lr: float, weight_decay: float,
                 warmup_steps: int, total_steps: int, grad_clip: float | None = 1.0):
        super().__init__()
        self.automatic_optimization = False
        self.sides = list(sides)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps, self.grad_clip = warmup_steps, total_steps, grad_clip
        config = lora_config(adapter_cfg)
        self.model = get_peft_model(model, config, adapter_name=self.sides[0])
        for side in self.sides[1:]:
            self.model.add_adapter(side, config)
        self.model.train()  # HF models load in eval mode; Lightning expects train mode here
        self.best: dict[str, tuple[float, dict[str, torch.Tensor]]] = {}
        self.history: list[dict] = []  # one row per validation: step, side, loss
        self._val_sums: dict[str, list[float]] = {}
        self.side_seconds = {s: 0.0 for s in self.sides}  # wall time spent training each adapter

    # -- parameters of one side -------------------------------------------------------------
    def side_params(self, side: str) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if "lora_" in n and f".{side}." in n}

    def _loss(self, side: str, batch) -> tuple[torch.Tensor, int]:
        self.model.set_adapter(side)  # also makes only this adapter's weights trainable
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        n_tokens = int((batch["labels"][:, 1:] != -100).sum())
        return out.loss, n_tokens

    # -- training ---------------------------------------------------------------------------
    def configure_optimizers(self):
        opts, scheds = [], []
        for side in self.sides:
            opt = torch.optim.AdamW(list(self.side_params(side).values()), lr=self.lr, weight_decay=self.weight_decay)
            opts.append(opt)
            scheds.append(get_linear_schedule_with_warmup(opt, self.warmup_steps, self.total_steps))
        return opts, scheds

    def training_step(self, batch, batch_idx):
        opts = self.optimizers()
        scheds = self.lr_schedulers()
        opts = opts if isinstance(opts, list) else [opts]
        scheds = scheds if isinstance(scheds, list) else [scheds]
        for side, opt, sched in zip(self.sides, opts, scheds, strict=True):
            t0 = time.perf_counter()
            loss, _ = self._loss(side, batch[side])
            if not torch.isfinite(loss):
                raise WsteerError(f"training loss of adapter {side!r} became {loss.item()} at step {batch_idx}; "
                                  "lower trainer.lr or check the data")
            self.manual_backward(loss)
            if self.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            self.side_seconds[side] += time.perf_counter() - t0
            self.log(f"train/loss_{side}", loss.detach(), prog_bar=True, on_step=True)

    # -- validation and best-checkpoint tracking --------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sums = {s: [0.0, 0] for s in self.sides}

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        side = self.sides[dataloader_idx]
        loss, n = self._loss(side, batch)
        self._val_sums[side][0] += loss.item() * n
        self._val_sums[side][1] += n

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        for side in self.sides:
            total, n = self._val_sums[side]
            val = total / max(n, 1)
            self.log(f"val/loss_{side}", val, prog_bar=True)
            self.history.append({"step": self.training_steps_done, "side": side, "loss": val})
            if side not in self.best or val < self.best[side][0]:
                snap = {n_: p.detach().clone() for n_, p in self.side_params(side).items()}
                self.best[side] = (val, snap)

    @property
    def training_steps_done(self) -> int:
        # Manual optimization counts one global step per optimizer.step(): one per side.
        return self.trainer.global_step // len(self.sides) if self._trainer is not None else 0

    def restore_best(self) -> dict[str, dict]:
        """Load each adapter's best-by-validation weights; return {side: {"val_loss", "step"}}."""
        summary = {}
        with torch.no_grad():
            for side, (val, snap) in self.best.items():
                params = self.side_params(side)
                for n, t in snap.items():
                    params[n].copy_(t)
                step = min(h["step"] for h in self.history if h["side"] == side and math.isclose(h["loss"], val))
                summary[side] = {"val_loss": val, "step": step}
        return summary


def lora_factors(peft_model, side: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{param name in the base model: (B·scaling, A)}` for one adapter, so that ΔW = B @ A exactly as PEFT merges it."""
    out = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and side in module.lora_A:
            base_name = name.removeprefix("base_model.model.") + ".weight"
            a = module.lora_A[side].weight.detach().float().cpu().clone()
            b = module.lora_B[side].weight.detach().float().cpu().clone() * module.scaling[side]
            out[base_name] = (b, a)
    if not out:
        raise WsteerError(f"adapter {side!r} has no LoRA layers; check adapter.target_modules")
    return out
