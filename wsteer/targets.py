"""Which classes a method's or a callback's `_target_` may name: `wsteer.*`, plus the modules the person running
wsteer trusts.

A steering method of your own (its Steerer and its artifact builder) lives outside the package, e.g. in
`myproject/methods.py` with `conf/method/mine.yaml` on Hydra's search path. Config files alone must not be able to
run arbitrary code (`wsteer.config.instantiate`), so a config cannot widen this: the environment does, as
`WSTEER_PLUGINS=myproject` (comma-separated module prefixes).
"""

from __future__ import annotations

import os

from hydra.utils import get_class
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from wsteer.config import ALLOWED_PREFIXES
from wsteer.errors import WsteerError

PLUGINS_ENV = "WSTEER_PLUGINS"


def trusted_prefixes() -> tuple[str, ...]:
    extra = [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]
    # "myproject" trusts myproject and myproject.*, not myproject_evil
    return (*ALLOWED_PREFIXES, *[p if p.endswith(".") else p + "." for p in extra])


def checked_target(node: DictConfig, what: str) -> str:
    target = str(node.get("_target_") or "")
    if not target:
        raise WsteerError(f"{what} has no _target_ (the class that builds it)")
    if not (target + ".").startswith(trusted_prefixes()):
        raise WsteerError(f"refusing to build {target!r} for {what}: config targets must live in wsteer.* or in a "
                          f"module listed in {PLUGINS_ENV} (e.g. {PLUGINS_ENV}={target.split('.')[0]})")
    return target


def target_class(node: DictConfig, what: str) -> type:
    """The class `node._target_` names, imported, without building anything."""
    target = checked_target(node, what)
    try:
        return get_class(target)
    except Exception as e:  # noqa: BLE001 - Hydra wraps import errors in several types; one message names the fix
        raise WsteerError(f"cannot import {target!r} for {what}: {e}") from e


def settings(node: DictConfig, exclude: tuple[str, ...] = ()) -> dict:
    """The node's keys as constructor arguments: resolved, without `_target_` and `exclude`."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ("_target_", *exclude)}


def instantiate(node: DictConfig, what: str, **kwargs):
    """`hydra.utils.instantiate` for a trusted target; run-time objects go in `kwargs`, never into the config."""
    checked_target(node, what)
    # not recursive: a `_target_` nested in the arguments would be built without the check above
    node = OmegaConf.create(settings(node) | {"_target_": node._target_})
    return hydra_instantiate(node, _partial_=True, _recursive_=False)(**kwargs)
