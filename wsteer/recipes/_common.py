"""Setup shared by the recipes: seed, output dir, model, fingerprint, behavior; stage timings."""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from wsteer.behaviors import Behavior
from wsteer.config import validate
from wsteer.errors import WsteerError
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
    ft_fingerprint: str | None = None  # set when a task fine-tune (base_adapter) is merged in

    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0


# Library deprecation chatter that says nothing about the user's run (Lightning's pytree internals, a
# transformers rename that PEFT still calls); everything else is left visible.
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def ensure_writable(folder: Path, what: str, fix: str) -> Path:
    """Create `folder` and prove a file can be written in it, or raise one error naming `fix`.

    Checked at start-up: a read-only or mistyped output path should cost a second, not a finished training
    whose artifacts then cannot be saved.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".wsteer-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WsteerError(f"{what} {folder} is not writable ({e.strerror or e}); {fix}") from e
    return folder


def prepare(cfg: DictConfig) -> Context:
    validate(cfg)  # numbers and names first: a typo fails in a second, before the model load
    behavior = Behavior.from_cfg(cfg.behavior).limited(
        cfg.sampling.get("max_questions"), cfg.sampling.get("max_prompts"))
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = ensure_writable(Path(cfg.output_dir), "output dir",
                              "set output_dir=... (or hydra.run.dir=...) to a writable folder")
    ensure_writable(Path(cfg.paths.cache_dir).expanduser(), "cache dir",
                    "set WSTEER_CACHE or paths.cache_dir=... to a writable folder")
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg.model, cfg.paths.cache_dir, cfg.device)
    ctx = Context(cfg, model, tokenizer, fingerprint(model), behavior, out_dir)
    ctx.timings["load_model"] = time.perf_counter() - t0
    return ctx


def merge_base_adapter(ctx: Context) -> None:
    """θ_ft = θ_pre + the task fine-tune in `base_adapter` (a PEFT folder), merged in place.

    Call it after the steering artifacts exist: they are built on, and checked against, θ_pre
    (`ctx.fingerprint`), and are meant to be added to its fine-tunes (paper §3.2, §3.4: θ_ft + k·w).
    """
    path = ctx.cfg.get("base_adapter")
    if not path:
        return
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise WsteerError(f"base_adapter={path} is not a PEFT adapter folder (no adapter_config.json)")
    with ctx.timed("merge_base_adapter"):
        PeftModel.from_pretrained(ctx.model, path).merge_and_unload()
        ctx.model.eval()
        ctx.ft_fingerprint = fingerprint(ctx.model)
