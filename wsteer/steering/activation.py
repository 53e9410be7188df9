"""Activation steering baselines (paper §1, "Activation steering", the persona-vectors recipe).

aˡ = mean over D⁺ − mean over D⁻ of the residual stream after block l (l = 0 is the embeddings), where each
example is first averaged over its *response* tokens only, collected with the eliciting system prompt present.

- `activation`: add k·aˡ at one layer l, at the last position of every forward pass (the last prompt token
  during prefill, then each generated token), as the authors' code does ("response" mode).
- `activation_all_layers`: add k·(aˡ − aˡ⁻¹) after every block (with a⁰ := 0), so the accumulated shift
  at layer l is k·aˡ.

`positions="all"` (opt-in; the default stays "last") adds the shift at every position instead, prompt included:
what llama.cpp's control vectors do (`llama_adapter_cvec::apply_to` adds to the whole residual tensor), so an
exported control vector (`wsteer.control_vector.export_control_vector`) can be compared like for like.

Collection runs as a LightningModule through `Trainer.test`, with the means as torchmetrics states, so it
runs unchanged on CPU, one GPU, or data-parallel on several with correct reduction.
"""

from __future__ import annotations

from contextlib import contextmanager

import lightning as L
import torch
import torchmetrics
from torch import nn

from wsteer.errors import WsteerError
from wsteer.models import decoder_layers
from wsteer.steering.base import Steerer
from wsteer.vectors import DenseVector


class VectorMean(torchmetrics.Metric):
    """Running mean of fixed-shape tensors (one per example), summed across processes."""

    full_state_update = False

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.add_state("total", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        self.total += values.double().sum(0)
        self.count += values.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


class ActivationCollector(L.LightningModule):
    """Per-layer mean residual activation over response tokens, one mean per side (dataloader)."""

    def __init__(self, model, sides=("pos", "neg")):
        super().__init__()
        self.model = model
        self.sides = list(sides)
        self.layers = decoder_layers(model)
        shape = (len(self.layers) + 1, model.config.hidden_size)
        self.means = nn.ModuleDict({s: VectorMean(shape) for s in self.sides})
        self._captured: list[torch.Tensor] = []

    def on_test_start(self):
        self.model.eval()
        capture = lambda m, a, out: self._captured.append(_hidden(out))  # noqa: E731
        self._hooks = [self.model.get_input_embeddings().register_forward_hook(capture)]
        self._hooks += [layer.register_forward_hook(capture) for layer in self.layers]

    def on_test_end(self):
        for h in self._hooks:
            h.remove()

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._captured.clear()
        self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hs = torch.stack(self._captured, dim=1).float()  # (B, L+1, T, d)
        mask = batch["response_mask"][:, None, :, None].to(hs.dtype)  # prompt tokens never enter the mean
        per_example = (hs * mask).sum(2) / mask.sum(2).clamp(min=1)  # (B, L+1, d)
        self.means[self.sides[dataloader_idx]].update(per_example)

    def difference(self) -> torch.Tensor:
        """a = mean(D⁺) − mean(D⁻), shape (L+1, d)."""
        return self.means[self.sides[0]].compute() - self.means[self.sides[1]].compute()


class ActivationSteerer(Steerer):
    name = "activation"

    POSITIONS = ("last", "all")

    def __init__(self, vector: DenseVector, layer: int | None = None, all_layers: bool = False,
                 name: str = "activation", positions: str = "last"):
        super().__init__(vector.manifest, name)
        if positions not in self.POSITIONS:
            raise WsteerError(f"method.positions must be one of {', '.join(self.POSITIONS)}, got {positions!r}")
        self.positions = positions
        self.vector = vector
        self.a = torch.stack([vector.tensors[str(i)] for i in range(len(vector.tensors))])  # (L+1, d)
        self.n_layers = self.a.shape[0] - 1
        self.all_layers = all_layers
        self.layer = self.n_layers // 2 if layer is None else int(layer)
        if not all_layers and not 1 <= self.layer <= self.n_layers:
            raise WsteerError(f"method.layer={layer} is out of range: this model has layers 1..{self.n_layers} "
                              "(0 is the embeddings, which activation steering does not edit)")

    def check_compatible(self, model, fingerprint: str, allow_transfer: bool = False) -> None:
        super().check_compatible(model, fingerprint, allow_transfer)
        if len(decoder_layers(model)) != self.n_layers or model.config.hidden_size != self.a.shape[1]:
            raise WsteerError(f"the activation vector has {self.n_layers} layers × {self.a.shape[1]} dims, which does "
                              "not match the loaded model; wrong model=?")

    def shifts(self) -> dict[int, torch.Tensor]:
        """{block index (0-based): vector added to its output} for k = 1."""
        if not self.all_layers:
            return {self.layer - 1: self.a[self.layer]}
        return {i - 1: self.a[i] - (self.a[i - 1] if i > 1 else 0) for i in range(1, self.n_layers + 1)}

    @contextmanager
    def _steer(self, model, k: float):
        layers = decoder_layers(model)
        hooks = []

        def make(shift):
            def add_at_last_position(module, args, output):
                h = _hidden(output).clone()
                h[:, -1, :] += shift.to(h.dtype)
                return (h, *output[1:]) if isinstance(output, tuple) else h

            def add_at_every_position(module, args, output):
                h = _hidden(output) + shift.to(_hidden(output).dtype)
                return (h, *output[1:]) if isinstance(output, tuple) else h

            return add_at_every_position if self.positions == "all" else add_at_last_position

        try:
            for idx, vec in self.shifts().items():
                hooks.append(layers[idx].register_forward_hook(make(k * vec.to(next(model.parameters()).device))))
            yield model
        finally:
            for h in hooks:
                h.remove()

    def describe(self) -> str:
        where = "every position" if self.positions == "all" else "last position of each forward pass"
        if self.all_layers:  # the norm of the shifts actually added, Σ over layers of ‖aˡ − aˡ⁻¹‖²
            norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in self.shifts().values())))
            return (f"{self.name}: + k·(aˡ − aˡ⁻¹) at every layer, {where}, "
                    f"‖shifts‖ = {norm:.4g} over {self.n_layers} layers")
        # the steered layer's own vector, not the norm of every layer's vectors together
        return (f"{self.name}: + k·a at layer {self.layer} of {self.n_layers}, {where}, "
                f"‖a_{self.layer}‖ = {float(self.a[self.layer].double().norm()):.4g}")
