"""Bias-only contrastive steering (paper §1, "Bias-only"): every MLP output projection gets bias = k·(b⁺ − b⁻).

The biases are added with forward hooks (Llama/Qwen2 MLPs have no bias parameter); removing the hooks restores
the model exactly. Effectively a learned, all-layer, all-position additive residual-stream vector.
"""

from __future__ import annotations

from contextlib import contextmanager

from wsteer.errors import WsteerError
from wsteer.models import mlp_output_projections
from wsteer.steering.base import Steerer
from wsteer.vectors import DenseVector


class BiasSteerer(Steerer):
    name = "bias"

    def __init__(self, vector: DenseVector, name: str = "bias"):
        super().__init__(vector.manifest, name)
        self.vector = vector

    def check_compatible(self, model, fingerprint: str, allow_transfer: bool = False) -> None:
        super().check_compatible(model, fingerprint, allow_transfer)
        targets = dict(mlp_output_projections(model))
        for name, delta in self.vector.tensors.items():
            if name not in targets or targets[name].out_features != delta.shape[0]:
                raise WsteerError(f"the bias vector targets {name} {tuple(delta.shape)}, which the loaded model "
                                  "does not have; wrong model=?")

    @contextmanager
    def _steer(self, model, k: float):
        targets = dict(mlp_output_projections(model))
        hooks = []
        try:
            for name, delta in self.vector.tensors.items():
                module = targets[name]
                shift = (k * delta).to(module.weight.device)
                hooks.append(module.register_forward_hook(lambda m, a, out, s=shift: out + s.to(out.dtype)))
            yield model
        finally:
            for h in hooks:
                h.remove()

    def describe(self) -> str:
        return f"{self.name}: MLP output bias = k·(b⁺ − b⁻), ‖Δb‖ = {self.vector.norm():.4g}"
