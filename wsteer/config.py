"""The one place objects are built from config (Hydra `_target_`), restricted to trusted modules."""

from __future__ import annotations

from hydra.utils import instantiate as _instantiate
from omegaconf import DictConfig, OmegaConf

from wsteer.errors import WsteerError

ALLOWED_PREFIXES = ("wsteer.",)


def instantiate(node: DictConfig, exclude: tuple[str, ...] = (), **kwargs):
    """`hydra.utils.instantiate` for `wsteer.*` targets only (a config file must not run arbitrary code).

    `exclude` drops keys that describe how to build the inputs rather than the object (e.g. a method's
    `source`). Run-time objects (a model, a vector) go in `kwargs`: they are passed to the constructor
    directly, never merged into the config (OmegaConf cannot hold tensors).
    """
    target = node.get("_target_", "")
    if not str(target).startswith(ALLOWED_PREFIXES):
        raise WsteerError(f"refusing to build {target!r}: config targets must live in wsteer.*")
    node = OmegaConf.create({k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in exclude})
    return _instantiate(node, _partial_=True)(**kwargs)
