"""Setup shared by the recipes: seed, output dir, model, fingerprint, behavior; stage timings."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from wsteer.behaviors import Behavior
from wsteer.models import fingerprint, load_model


@dataclass
class Context:
    cfg: DictConfig
    model: object
    tokenizer: object
    fingerprint: str
    behavior: Behavior
    out_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0


def prepare(cfg: DictConfig) -> Context:
    behavior = Behavior.from_cfg(cfg.behavior)  # validate cheap things before the model load
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg.model, cfg.paths.cache_dir, cfg.device)
    ctx = Context(cfg, model, tokenizer, fingerprint(model), behavior, out_dir)
    ctx.timings["load_model"] = time.perf_counter() - t0
    return ctx
