"""Fine-tuning baseline (paper §1): the model fine-tuned on D⁺ (k > 0) or D⁻ (k < 0), at checkpoint step |k|.

Each checkpoint is stored as its task vector τ_step, so the fine-tuned model is θ + τ_step, applied and undone
exactly like weight steering; one loaded model walks the whole checkpoint curve.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from wsteer.errors import WsteerError
from wsteer.steering.base import Steerer
from wsteer.steering.weight import WeightSteerer
from wsteer.vectors import WeightVector


class FinetuneSteerer(Steerer):
    name = "finetune"

    def __init__(self, checkpoints: dict[str, WeightVector], name: str = "finetune"):
        self.checkpoints: dict[tuple[str, int], WeightVector] = {}
        for key, vec in checkpoints.items():
            m = re.fullmatch(r"(pos|neg)_step(\d+)", key)
            if m:
                self.checkpoints[(m.group(1), int(m.group(2)))] = vec
        if not self.checkpoints:
            raise WsteerError("no fine-tuning checkpoints were saved; set finetune.checkpoint_every ≤ trainer.steps")
        super().__init__(next(iter(self.checkpoints.values())).manifest, name)

    @classmethod
    def from_artifacts(cls, artifacts, ctx, **settings):
        return cls(artifacts, **settings)  # every `<side>_step<n>` checkpoint

    def steps(self) -> list[int]:
        return sorted({s for _, s in self.checkpoints})

    @contextmanager
    def _steer(self, model, k: float):
        side, step = ("pos" if k > 0 else "neg"), abs(k)
        if step != int(step) or (side, int(step)) not in self.checkpoints:
            raise WsteerError(f"method=finetune reads k as ±checkpoint step; saved steps are {self.steps()} "
                              f"(k > 0: D+ fine-tune, k < 0: D- fine-tune), got k={k:g}")
        with WeightSteerer(self.checkpoints[(side, int(step))]).apply(model, 1.0):
            yield model

    def describe(self) -> str:
        return f"{self.name}: θ + τ at checkpoint step |k| (D+ for k > 0, D- for k < 0), steps {self.steps()}"
