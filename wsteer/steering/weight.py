"""Weight steering: θ + k·w applied in place and undone exactly (paper §1, "Weight steering").

One loaded model serves a whole k sweep: `with steerer.apply(model, k): ...` adds k·w to every covered
weight and, on exit, copies the saved originals back, so the model is bitwise what it was before.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from wsteer.errors import WsteerError
from wsteer.vectors import WeightVector


def check_k(k) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k):
        raise WsteerError(f"k must be a finite number (e.g. k=-2), got {k!r}")
    return float(k)


class WeightSteerer:
    def __init__(self, vector: WeightVector, name: str = "weight"):
        self.vector = vector
        self.name = name

    def check_compatible(self, model, fingerprint: str, allow_transfer: bool = False) -> None:
        """Refuse a vector built on other base weights, unless the user deliberately transfers it."""
        made_for = self.vector.manifest.get("base_fingerprint")
        if made_for != fingerprint and not allow_transfer:
            raise WsteerError(
                f"this vector was built for base model {self.vector.manifest.get('base_model')!r} "
                f"(fingerprint {made_for}), but the loaded model has fingerprint {fingerprint}; load the matching "
                "model=..., or pass allow_transfer=true to apply it anyway"
            )
        params = dict(model.named_parameters())
        for name, (b, a) in self.vector.factors.items():
            if name not in params:
                raise WsteerError(f"the vector edits {name}, which the loaded model does not have; wrong model=?")
            if tuple(params[name].shape) != (b.shape[0], a.shape[1]):
                raise WsteerError(f"shape mismatch at {name}: vector {(b.shape[0], a.shape[1])}, "
                                  f"model {tuple(params[name].shape)}; wrong model=?")

    @contextmanager
    def apply(self, model, k: float):
        """θ ← θ + k·w inside the block; originals restored bitwise on exit (also on error)."""
        k = check_k(k)
        if k == 0:  # adding 0·w could still flip −0.0 to +0.0; k = 0 must change nothing
            yield model
            return
        params = dict(model.named_parameters())
        saved: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for name in self.vector.factors:
                    p = params[name]
                    saved[name] = p.detach().clone()
                    delta = self.vector.delta(name).to(p.device)
                    # Sum in fp32 and round once, so bf16 models lose no more precision than necessary.
                    p.copy_((p.float() + k * delta).to(p.dtype))
            yield model
        finally:
            with torch.no_grad():
                for name, orig in saved.items():
                    params[name].copy_(orig)
