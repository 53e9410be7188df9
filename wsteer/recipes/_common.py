"""Setup shared by the recipes: seed, output dir, model, fingerprint, behavior; stage timings."""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from wsteer.behaviors import Behavior
from wsteer.config import validate
from wsteer.context import Context
from wsteer.errors import WsteerError
from wsteer.models import fingerprint, load_model
from wsteer.training.build import SOURCES
from wsteer.training.builder import MIN_EXAMPLES

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
    if _may_build_pairs(cfg):
        check_enough_questions(cfg, behavior)
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = ensure_writable(Path(cfg.output_dir), "output dir",
                              "set output_dir=... (or hydra.run.dir=...) to a writable folder")
    ensure_writable(Path(cfg.paths.cache_dir).expanduser(), "cache dir",
                    "set WSTEER_CACHE or paths.cache_dir=... to a writable folder")
    if _may_use_judge(cfg):
        check_judge(cfg)
    if isinstance(cfg.get("vector"), str) and cfg.vector:
        from wsteer.vectors import load_vector

        load_vector(Path(cfg.vector))  # a missing, corrupt or non-finite vector file fails before the model load
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg.model, cfg.paths.cache_dir, cfg.device)
    ctx = Context(cfg, model, tokenizer, fingerprint(model), behavior, out_dir)
    ctx.timings["load_model"] = time.perf_counter() - t0
    return ctx


def _may_build_pairs(cfg: DictConfig) -> bool:
    """Whether this run may sample D±: train.py for a vector (or stage=data), steer.py building its vector."""
    if "stage" in cfg and "source" in cfg:  # train.py
        return cfg.stage == "data" or cfg.source in (*SOURCES, "joint")
    method = cfg.get("method")
    if "report" in cfg or method is None:  # evaluate.py only applies a given vector=
        return False
    return not cfg.get("vector") and method.get("artifact") is not None and not isinstance(cfg.get("k"), DictConfig)


def check_enough_questions(cfg: DictConfig, behavior: Behavior) -> None:
    """Refuse, before the model loads, a behavior whose questions cannot give enough pairs whatever the judge keeps.

    A pair is (build question, system prompt index, sample index) answered on both sides, so there are at most
    questions × prompts per side × `sampling.n_samples` of them; training needs 4 per side, and `sampling.min_kept`
    (default 4) are needed to keep a dataset at all.
    """
    trains = not ("stage" in cfg and cfg.stage == "data") and cfg.get("source") != "joint"
    min_kept = int(cfg.sampling.get("min_kept", 4))
    need = max(min_kept, MIN_EXAMPLES if trains else 0)
    q = len(behavior.build_questions)
    p = min(len(behavior.pos_system_prompts), len(behavior.neg_system_prompts))
    n = int(cfg.sampling.n_samples)
    if q * p * n >= need:
        return
    limited = [f"sampling.{k}={cfg.sampling.get(k)}" for k in ("max_questions", "max_prompts")
               if cfg.sampling.get(k) is not None]
    raise WsteerError(
        f"behavior {behavior.name!r} can give at most {q * p * n} D+/D- pair(s) ({q} build question(s) × {p} system "
        f"prompt(s) per side × sampling.n_samples={n}), fewer than the {need} needed ("
        + ", ".join([f"sampling.min_kept={min_kept}"] * bool(min_kept) + [f"training needs {MIN_EXAMPLES}"] * trains)
        + f"); add build_questions to conf/behavior/{behavior.name}.yaml or raise sampling.n_samples"
        + (f" (or drop {', '.join(limited)})" if limited else ""))


def _may_use_judge(cfg: DictConfig) -> bool:
    """Every run may judge (D± filtering, judged evaluators) except a plain task fine-tune."""
    return cfg.get("judge") is not None and not ("stage" in cfg and cfg.get("source") == "task")


def check_judge(cfg: DictConfig) -> None:
    """Build the configured judge and let it check its endpoint (judge=openai: one `GET …/models`), so that an
    unreachable endpoint or a rejected key fails at startup, not after minutes of sampling or generation."""
    from wsteer.data.pairs import build_judge

    judge = build_judge(cfg.judge)
    check = getattr(judge, "check_reachable", None)
    if check is not None:
        check()


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
