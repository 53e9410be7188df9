"""The artifact cache (paper §1–2): reuse a method's steering artifacts for the same base model, behavior, data and
settings, or build them once with the method's builder (`training/builder.py`, built-ins in `training/builders.py`).

Artifacts are cached under `<cache>/vectors/<model>-<fingerprint>/<behavior>/<kind>/<data>-<settings>/`, built
once under a cross-process lock, with a `COMPLETE` marker written last.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import DictConfig

from wsteer.artifacts import stable_hash, write_json
from wsteer.context import Context
from wsteer.data.pairs import ensure_pairs
from wsteer.errors import WsteerError
from wsteer.locks import building
from wsteer.training.builder import ArtifactBuilder
from wsteer.training.builders import BUILT_IN

SOURCES = tuple(BUILT_IN)  # the artifact kinds `train.py source=` builds


def builder_for(kind: str | ArtifactBuilder) -> ArtifactBuilder:
    """A builder, or the built-in builder of an artifact kind (`lora`, `bias`, `activation`, `finetune`)."""
    if isinstance(kind, ArtifactBuilder):
        return kind
    if kind not in BUILT_IN:
        raise WsteerError(f"unknown source {kind!r}; choose one of {', '.join(SOURCES)}")
    return BUILT_IN[kind]()


def artifact_settings(cfg: DictConfig, kind: str | ArtifactBuilder) -> dict:
    """The settings that shape an artifact besides the data (part of its cache key)."""
    return builder_for(kind).settings(cfg)


def artifact_dir(cfg: DictConfig, fp: str, behavior: str, data_hash: str, kind: str | ArtifactBuilder) -> Path:
    """Cache key: (base model fingerprint, behavior, kind, data, settings)."""
    builder = builder_for(kind)
    return (Path(cfg.paths.cache_dir).expanduser() / "vectors" / f"{cfg.model.name}-{fp[:12]}" / behavior
            / builder.kind / f"{data_hash[:12]}-{stable_hash(builder.settings(cfg), 8)}")


def resume_checkpoint_path(cfg: DictConfig, folder: Path) -> Path:
    """Where a paired training for the artifacts in `folder` keeps its resume checkpoint.

    Keyed exactly like the artifacts (same relative path under `checkpoints/` instead of `vectors/`), so rerunning
    the same command finds it wherever Hydra puts the new run dir, and any change of data or settings starts
    fresh. Kept outside `vectors/` so the vector library never lists a half-trained folder.
    """
    cache = Path(cfg.paths.cache_dir).expanduser()
    return cache / "checkpoints" / folder.relative_to(cache / "vectors") / "last.ckpt"


def ensure_artifacts(ctx: Context, builder: str | ArtifactBuilder = "lora", run=None,
                     force: bool = False) -> tuple[dict, Path, bool]:
    """Reuse the cached artifacts for (model, behavior, kind, data, settings), or build and cache them.

    `builder` is a method's builder (`conf/method/<name>.yaml`: `artifact`) or a built-in kind's name.
    Returns (name → artifact, the cache folder, whether they were built in this call).
    """
    builder = builder_for(builder)
    cfg = ctx.cfg
    with ctx.timed("data"):
        pairs, data_manifest = ensure_pairs(cfg, ctx.model, ctx.tokenizer, ctx.behavior, ctx.fingerprint)
    folder = artifact_dir(cfg, ctx.fingerprint, ctx.behavior.name, data_manifest["data_hash"], builder)
    # concurrent jobs of a sweep build each artifact once: the others wait here, then find it COMPLETE
    with building(cfg.paths.cache_dir, folder, f"the {builder.kind} artifacts"):
        return _ensure_artifacts(ctx, builder, run, force, pairs, data_manifest, folder)


def _ensure_artifacts(ctx: Context, builder: ArtifactBuilder, run, force: bool, pairs, data_manifest: dict,
                      folder: Path):
    done = folder / "COMPLETE"
    if done.is_file() and not force:
        print(f"wsteer: reusing cached {builder.kind} artifacts in {folder}")
        return builder.load(folder), folder, False
    resume = resume_checkpoint_path(ctx.cfg, folder)
    artifacts = builder.build(ctx, pairs, data_manifest, run, resume)
    folder.mkdir(parents=True, exist_ok=True)
    for name, art in artifacts.items():
        art.save(folder / f"{name}.safetensors")
    write_json(done, {"artifacts": sorted(artifacts)})  # written last: a half-saved folder is never reused
    # The artifacts are safe on disk: the resume checkpoint has served its purpose.
    shutil.rmtree(resume.parent, ignore_errors=True)
    print(f"wsteer: saved {builder.kind} artifacts to {folder}")
    return artifacts, folder, True
