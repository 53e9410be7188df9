"""Live weight monitoring (paper §5, Fig 36; design §4): cos(update so far, reference) during training.

`CosineMonitor` is a Lightning callback for any fine-tune whose trainable weights are PEFT LoRA adapters (the
paired vector fine-tunes, the task and joint fine-tunes of `train.py`, or any LightningModule holding a
PEFT-wrapped or LoRA-injected HF model). Every `every_n_steps` training steps it reads the current LoRA
factors of each monitored adapter, as low-rank factors (B·scaling, A) exactly as
`wsteer.lora_layout.lora_factors` exports them (plus dense deltas of `modules_to_save` copies), and
computes the global cosine to every reference delta in factored form (`wsteer.monitoring.similarity`): no
dense ΔW is ever built, so it is cheap even for 7B models. The paper tracks cos(w_evil, θ_t − θ_pre) per
checkpoint; here the same number is logged live.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from peft.tuners.lora import LoraLayer

from wsteer.errors import WsteerError
from wsteer.lora_layout import base_name, live_factors
from wsteer.monitoring.deltas import Delta, Entry, LowRank
from wsteer.monitoring.loading import as_delta
from wsteer.monitoring.similarity import inner_entry, sq_norm_entry
from wsteer.vectors import WeightVector

CSV_FIELDS = ("step", "side", "reference", "cosine")


def model_root(module: torch.nn.Module) -> torch.nn.Module:
    """The outermost HF `PreTrainedModel` inside `module`, whose parameter names the reference vectors use.

    `PairedModule.model` is the base model with LoRA layers injected; a PeftModel wraps one (PeftModel itself
    is not a PreTrainedModel). Either way, names below this root are `model.layers.N.…`, as in saved vectors.
    """
    from transformers import PreTrainedModel

    for m in module.modules():
        if isinstance(m, PreTrainedModel):
            return m
    return module


class LiveLoraDelta(Delta):
    """The update so far of one LoRA adapter of a live model, read from its parameters on demand.

    Linear LoRA layers give `{name}.weight → (B·scaling, A)`; embedding LoRA layers (delta = (B A)ᵀ·scaling)
    and fan_in_fan_out layers are transposed in factored form; `modules_to_save` copies give dense deltas
    (trained copy − original), computed one module at a time.
    """

    def __init__(self, root: torch.nn.Module, adapter: str):
        from peft.utils import ModulesToSaveWrapper

        self.adapter = adapter
        self.label = adapter
        self._lora: dict[str, LoraLayer] = {}
        self._saved: dict[str, tuple[torch.nn.Module, str]] = {}
        for name, module in root.named_modules():
            name = base_name(name)
            if isinstance(module, LoraLayer):
                if (getattr(module, "use_dora", None) or {}).get(adapter):
                    raise WsteerError(
                        f"adapter {adapter!r} uses DoRA, whose update is not low-rank; "
                        "CosineMonitor supports plain LoRA"
                    )
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    self._lora[f"{name}.weight"] = module
            elif isinstance(module, ModulesToSaveWrapper) and adapter in module.modules_to_save:
                for pname, _ in module.modules_to_save[adapter].named_parameters():
                    self._saved[f"{name}.{pname}"] = (module, pname)
        self._names = [*self._lora, *self._saved]

    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._lora or name in self._saved

    def kind(self, name: str) -> str:
        return "lowrank" if name in self._lora else "dense"

    def entry(self, name: str) -> Entry:
        ad = self.adapter
        if name in self._lora:
            return LowRank(*live_factors(self._lora[name], ad))
        wrapper, pname = self._saved[name]
        trained = wrapper.modules_to_save[ad].get_parameter(pname).detach()
        return trained.float() - wrapper.original_module.get_parameter(pname).detach().float()


class _DeviceCachedDelta(Delta):
    """A reference delta whose low-rank entries are kept on the training device; dense entries stay lazy."""

    def __init__(self, inner: Delta, device):
        self.inner = inner
        self.label = inner.label
        self._names = inner.names()
        self._set = set(self._names)
        self._cache = {n: inner.entry(n).to(device) for n in self._names if inner.kind(n) == "lowrank"}

    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._set

    def kind(self, name: str) -> str:
        return self.inner.kind(name)

    def entry(self, name: str) -> Entry:
        return self._cache[name] if name in self._cache else self.inner.entry(name)


def _load_reference(ref, name: str) -> Delta:
    if isinstance(ref, (str, Path)):
        path = Path(ref).expanduser()
        if path.is_file() and path.suffix == ".safetensors":
            try:
                return as_delta(
                    WeightVector.load(path), label=name
                )  # validates the wsteer format and manifest
            except WsteerError:
                pass  # not a wsteer weight vector: a dense delta file, read lazily below
        d = as_delta(path)
        d.label = name
        return d
    if ref is None:
        raise WsteerError(f"reference {name!r} is empty; give a vector path or a WeightVector")
    return as_delta(ref, label=name)


class CosineMonitor(Callback):
    """Log the cosine of a LoRA fine-tune's update so far to reference deltas every N training steps.

    Logged as `monitor/cos/<side>/<reference>` through `pl_module.log` (so W&B, CSV and any other Lightning
    logger get it) and as `monitor/norm/<side>` (‖update‖, to read the cosines against); rows
    (step, side, reference, cosine) are appended to `csv_path` when given, and kept in `self.history`.

    Sides: a `PairedModule` monitors each of its `sides` (`pos`/`neg`, or the single `task` side); any other
    module monitors the active adapter(s) of its LoRA layers. While an update is exactly zero (B = 0 at LoRA
    init) its cosine is undefined and nothing is logged for it.

    Args:
        references: `{name: delta}`; a delta is a path (wsteer `.safetensors` vector, PEFT adapter folder,
            dense safetensors delta) or an in-memory `WeightVector` / delta mapping.
        every_n_steps: monitor after every N-th training step (optimizer steps per side for `PairedModule`).
        csv_path: where to append the rows (created with a header if missing); None writes no file.
        sides: adapter names to monitor, overriding the automatic choice.
    """

    def __init__(
        self,
        references: Mapping[str, object] | None = None,
        every_n_steps: int = 10,
        csv_path: str | Path | None = None,
        sides: list[str] | None = None,
    ):
        super().__init__()
        if int(every_n_steps) < 1:
            raise WsteerError(f"callbacks.every_n_steps must be a positive integer; got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.reference_specs = dict(references or {})
        self.csv_path = Path(csv_path) if csv_path else None
        self.sides = list(sides) if sides else None
        self.history: list[dict] = []
        self._refs: dict[str, Delta] = {}
        self._ref_sq: dict[str, float] = {}
        self._root: torch.nn.Module | None = None
        self._active: list[str] = []
        self._last_step = -1

    # -- setup ------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        self._root = model_root(pl_module)
        self._active = self._choose_sides(pl_module, self._root)
        if not self._active:
            warnings.warn(
                "CosineMonitor: the model has no LoRA adapter to monitor; no cosines will be logged",
                stacklevel=2,
            )
            return
        device = next((p.device for p in self._root.parameters()), torch.device("cpu"))
        for name, ref in self.reference_specs.items():
            if name in self._refs:
                continue  # a second fit() on the same trainer reuses the loaded references
            d = _DeviceCachedDelta(_load_reference(ref, name), device)
            sq = math.fsum(sq_norm_entry(d.entry(n)) for n in d.names())
            if sq == 0:
                warnings.warn(f"CosineMonitor: reference {name!r} is zero; skipping it", stacklevel=2)
                continue
            self._refs[name], self._ref_sq[name] = d, sq
        probe = LiveLoraDelta(self._root, self._active[0])
        for name, d in self._refs.items():
            if not any(n in d for n in probe.names()):
                warnings.warn(
                    f"CosineMonitor: reference {name!r} shares no parameter name with the monitored LoRA "
                    f"layers (e.g. {probe.names()[:1]} vs {d.names()[:1]}); its cosine will be 0 — was it "
                    "built on another model?",
                    stacklevel=2,
                )
        every_log = getattr(trainer, "log_every_n_steps", 1) or 0
        if every_log and self.every_n_steps % every_log:
            warnings.warn(
                f"CosineMonitor: trainer log_every_n_steps={every_log} does not divide every_n_steps="
                f"{self.every_n_steps}; some cosines reach csv_path but not the Lightning loggers",
                stacklevel=2,
            )

    def _choose_sides(self, pl_module, root) -> list[str]:
        layers = [m for m in root.modules() if isinstance(m, LoraLayer)]
        if not layers:
            return []
        present = {a for m in layers for a in (*m.lora_A.keys(), *getattr(m, "lora_embedding_A", {}).keys())}
        if self.sides:
            wanted = self.sides
        elif getattr(pl_module, "sides", None):
            # PairedModule switches the active adapter per side inside each step: monitor every side
            wanted = list(pl_module.sides)
        else:
            wanted = list(layers[0].active_adapters)
        missing = [s for s in wanted if s not in present]
        if missing:
            raise WsteerError(
                f"CosineMonitor: adapter(s) {missing} not found; the model has {sorted(present)}"
            )
        return wanted

    # -- every N steps ----------------------------------------------------------------------------------

    @staticmethod
    def _step(trainer, pl_module) -> int:
        # PairedModule uses manual optimization with one global step per side; it exposes the real step count.
        done = getattr(pl_module, "training_steps_done", None)
        return int(done) if done is not None else int(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active or not self._refs:
            return
        step = self._step(trainer, pl_module)
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return  # also skips repeats while gradient accumulation holds the step count
        self._last_step = step
        rows = []
        for side in self._active:
            norm, cosines = self.measure(side)
            if norm == 0:
                continue  # B = 0 at LoRA init: the cosine is undefined, log nothing rather than NaN
            pl_module.log(f"monitor/norm/{side}", norm, on_step=True, on_epoch=False, batch_size=1)
            for ref, cos in cosines.items():
                pl_module.log(f"monitor/cos/{side}/{ref}", cos, on_step=True, on_epoch=False, batch_size=1)
                rows.append({"step": step, "side": side, "reference": ref, "cosine": cos})
        self.history.extend(rows)
        if rows and self.csv_path is not None and trainer.is_global_zero:
            self._append(rows)

    @torch.no_grad()
    def measure(self, side: str) -> tuple[float, dict[str, float]]:
        """(‖update‖, {reference: cosine}) for one adapter right now; no cosines while the update is zero."""
        update = LiveLoraDelta(self._root, side)
        sq, dots = [], {r: [] for r in self._refs}
        for name in update.names():
            e = update.entry(name)  # one module at a time (dense modules_to_save deltas can be large)
            sq.append(sq_norm_entry(e))
            for r, d in self._refs.items():
                if name in d:
                    dots[r].append(inner_entry(e, d.entry(name), name))
            del e
        sq_u = math.fsum(sq)
        if sq_u == 0:
            return 0.0, {}
        return math.sqrt(sq_u), {
            r: math.fsum(dots[r]) / math.sqrt(sq_u * self._ref_sq[r]) for r in self._refs
        }

    def _append(self, rows: list[dict]) -> None:
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.csv_path.is_file() or self.csv_path.stat().st_size == 0
        with self.csv_path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
