"""What a steering method's artifact builder is: the contract `ensure_artifacts` (training/build.py) caches.

A method names its builder in `conf/method/<name>.yaml` as `artifact: {_target_: ...}` next to its Steerer, so a
method with a new kind of artifact is one Python file (Steerer + builder) and one YAML. The built-in builders are
in `training/builders.py`; a test adds one from outside the package (tests/test_new_method.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from wsteer.artifacts import git_commit
from wsteer.behaviors import SIDES
from wsteer.context import Context
from wsteer.data.sft import PairedDataModule
from wsteer.errors import WsteerError
from wsteer.vectors import load_vector

MIN_EXAMPLES = 4  # per side; fewer cannot give both a training and a validation split worth the name


class ArtifactBuilder:
    """Makes one kind of artifact from D⁺/D⁻, says what enters its cache key, and loads it back.

    Cached under `<cache>/vectors/<model>-<fp>/<behavior>/<kind>/<data hash>-<hash of settings(cfg)>/`, one
    `<name>.safetensors` per artifact that `build` returns (anything with `save(path)`, `manifest` and `norm()`).
    """

    kind: str = ""  # the cache folder and the manifest's "method"; two builders of one kind must make the same thing
    # train.py's run dir: artifact name → file stem (the main artifact is vector.safetensors); others keep their name
    run_names: dict[str, str] = {}

    def settings(self, cfg: DictConfig) -> dict:
        """Everything besides the data that shapes the artifact: its cache key (and the manifest's `settings`)."""
        raise NotImplementedError

    def build(self, ctx: Context, pairs, data_manifest: dict, run=None, resume_ckpt: Path | None = None) -> dict:
        """name → artifact. `run` is the W&B run (or None); `resume_ckpt` is where a long fit may keep a
        checkpoint so that a killed rerun of the same command continues (`build_trainer(resume_ckpt=...)`)."""
        raise NotImplementedError

    def load(self, folder: Path) -> dict:
        return {p.stem: load_vector(p) for p in sorted(folder.glob("*.safetensors"))}

    def accepts_file(self, made_by: str | None) -> bool:
        """Whether a `vector=FILE` whose manifest says `method: made_by` can stand in for this builder's artifact."""
        return made_by == self.kind

    def manifest(self, ctx: Context, data_manifest: dict, **extra) -> dict:
        """The provenance every artifact carries: base model, behavior, seeds, settings, data, commit, time."""
        return {
            "base_model": ctx.cfg.model.path,
            "model_name": ctx.cfg.model.name,
            "base_fingerprint": ctx.fingerprint,
            "behavior": ctx.behavior.name,
            "behavior_version": ctx.behavior.version,
            "method": self.kind,
            # the training seed (split, LoRA init, batch order) and the seed the data was sampled with (paper §1)
            "seed": ctx.cfg.seed,
            "data_seed": data_manifest["key"]["sampling"]["seed"],
            "settings": self.settings(ctx.cfg),
            "data_hash": data_manifest["data_hash"],
            "data_counts": data_manifest["counts"],
            "data_key": data_manifest["key"],
            "git_commit": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }


def paired_datamodule(ctx: Context, pairs, with_system: bool = False) -> PairedDataModule:
    """D⁺/D⁻ as a LightningDataModule (train/validation split by `seed`); refuses too little data."""
    counts = {s: len(pairs[s]) for s in SIDES}
    if min(counts.values()) < MIN_EXAMPLES:
        raise WsteerError(f"too little data to train: {counts} examples (need ≥ {MIN_EXAMPLES} per side); "
                          "raise sampling.n_samples or relax the judge thresholds")
    t = ctx.cfg.trainer
    return PairedDataModule(ctx.tokenizer, {s: list(pairs[s]) for s in SIDES}, batch_size=t.batch_size,
                            max_length=t.max_length, val_fraction=t.val_fraction, seed=ctx.cfg.seed,
                            with_system=with_system, group_by_length=bool(t.get("group_by_length", False)))
