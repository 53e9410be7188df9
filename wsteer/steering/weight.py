"""Weight steering: θ + k·w applied in place and undone exactly (paper §1, "Weight steering").

One loaded model serves a whole k sweep: `apply` adds k·w to every covered weight and, on exit, copies the
saved originals back, so the model is bitwise what it was before. The same class applies the
non-contrastive task vectors (θ + k·τ⁺, θ − k·τ⁻): only the vector differs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from wsteer.errors import WsteerError
from wsteer.steering.base import GIVEN, Steerer
from wsteer.vectors import WeightVector


class WeightSteerer(Steerer):
    name = "weight"

    def __init__(self, vector: WeightVector, name: str = "weight"):
        super().__init__(vector.manifest, name)
        self.vector = vector

    @classmethod
    def from_artifacts(cls, artifacts, ctx, which: str = "contrastive", **settings):
        """`which` of the paired LoRAs' artifacts: `contrastive` (w = τ⁺ − τ⁻), `pos` (τ⁺) or `neg` (applied as −τ⁻)."""
        if which not in ("contrastive", "pos", "neg"):
            raise WsteerError(f"method.which must be contrastive, pos or neg, got {which!r}")
        vector = artifacts[GIVEN] if GIVEN in artifacts else artifacts[which]
        if which == "neg" and vector.manifest.get("variant") == "tau_neg":
            vector = vector.scaled(-1.0, variant="minus_tau_neg")  # θ − k·τ⁻
        return cls(vector, **settings)

    def check_compatible(self, model, fingerprint: str, allow_transfer: bool = False) -> None:
        super().check_compatible(model, fingerprint, allow_transfer)
        params = dict(model.named_parameters())
        for name, (b, a) in self.vector.factors.items():
            if name not in params:
                raise WsteerError(f"the vector edits {name}, which the loaded model does not have; wrong model=?")
            if tuple(params[name].shape) != (b.shape[0], a.shape[1]):
                raise WsteerError(f"shape mismatch at {name}: vector {(b.shape[0], a.shape[1])}, "
                                  f"model {tuple(params[name].shape)}; wrong model=?")
        note = coverage_warning(model, self.vector)
        if note:
            print(note)

    @contextmanager
    def _steer(self, model, k: float):
        params = dict(model.named_parameters())
        saved: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for name in self.vector.factors:
                    p = params[name]
                    saved[name] = p.detach().clone()
                    # the factors live on the CPU; B·A is formed where the weight lives (on a GPU, not the CPU)
                    b, a = (t.to(p.device, torch.float32) for t in self.vector.factors[name])
                    if p.dtype == torch.float32:
                        # fused W += k·B·A: no dense delta or fp32 copy of W is materialised (k switches are cheap)
                        p.addmm_(b, a, alpha=k)
                    else:
                        # Sum in fp32 and round once, so bf16 models lose no more precision than necessary.
                        p.copy_((p.float() + k * (b @ a)).to(p.dtype))
            yield model
        finally:
            with torch.no_grad():
                for name, orig in saved.items():
                    params[name].copy_(orig)

    def describe(self) -> str:
        return f"{self.name}: θ + k·w, ‖w‖ = {self.vector.norm():.4g}"


def decoder_linear_weights(model) -> list[str]:
    """Names of the weight matrices of every linear layer inside the decoder blocks (what `all-linear` targets)."""
    from wsteer.models import decoder_layers

    try:
        layers = {id(m) for m in decoder_layers(model)}
    except WsteerError:
        return []
    out, inside = [], None
    for name, module in model.named_modules():
        if id(module) in layers:
            inside = name + "."
        if inside and name.startswith(inside) and isinstance(module, torch.nn.Linear):
            out.append(f"{name}.weight")
    return out


def coverage_warning(model, vector: WeightVector) -> str | None:
    """A warning line when `vector` edits only part of the model's decoder linear weights, else None.

    A vector trained with `adapter.target_modules=all-linear` edits all of them; one that edits a few (a file
    cut down by hand, a foreign tool's export) still applies, but its effect is that of a small part of the model.
    """
    linear = decoder_linear_weights(model)
    if not linear:
        return None
    edited = len(set(linear) & set(vector.factors))
    if edited >= len(linear):
        return None
    targets = (vector.manifest.get("lora") or {}).get("target_modules")
    why = (f"it was built with adapter.target_modules={targets}" if isinstance(targets, list) else
           "a vector built with adapter.target_modules=all-linear edits all of them: check vector=")
    return (f"wsteer: warning: the vector edits {edited} of the model's {len(linear)} decoder linear weight "
            f"matrices ({edited / len(linear):.0%}); {why}")
