"""The one place objects are built from config (Hydra `_target_`), restricted to trusted modules."""

from __future__ import annotations

from hydra.utils import instantiate as _instantiate
from omegaconf import DictConfig

from wsteer.errors import WsteerError

ALLOWED_PREFIXES = ("wsteer.",)


def instantiate(node: DictConfig, **kwargs):
    """`hydra.utils.instantiate` for `wsteer.*` targets only (a config file must not run arbitrary code).

    Run-time objects (a model, a vector) go in `kwargs`: they are passed to the constructor directly, never
    merged into the config (OmegaConf cannot hold tensors).
    """
    target = node.get("_target_", "")
    if not str(target).startswith(ALLOWED_PREFIXES):
        raise WsteerError(f"refusing to build {target!r}: config targets must live in wsteer.*")
    return _instantiate(node, _partial_=True)(**kwargs)
