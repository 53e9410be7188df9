"""What a recipe run holds: its config, the loaded model and tokenizer, the behavior, the run dir, stage timings.

A leaf module (no wsteer imports beyond the behavior type), so training, steering and evaluation code can take a
Context without importing the recipes that build one (`wsteer.recipes._common.prepare`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from wsteer.behaviors import Behavior


@dataclass
class Context:
    cfg: DictConfig
    model: object
    tokenizer: object
    fingerprint: str
    behavior: Behavior
    out_dir: Path
    timings: dict[str, float] = field(default_factory=dict)
    ft_fingerprint: str | None = None  # set when a task fine-tune (base_adapter) is merged in

    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0
