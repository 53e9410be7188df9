"""Every config in conf/ composes with each primary, resolves, and names importable targets."""

from __future__ import annotations

import importlib

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_cfg
from wsteer.behaviors import Behavior

PRIMARIES = ["train", "steer", "evaluate"]
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
CHOICES = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def _targets(node):
    if isinstance(node, dict):
        if "_target_" in node:
            yield node["_target_"]
        for v in node.values():
            yield from _targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _targets(v)


def _experiment_primaries(choice: str) -> tuple[str, ...]:
    """An experiment's second line is the command that runs it (the first is Hydra's package header)."""
    command = (CONF / "experiment" / f"{choice}.yaml").read_text().splitlines()[1]
    return ("train",) if "train.py" in command.split("&&")[0] else ("steer", "evaluate")


def test_every_experiment_starts_with_its_command():
    for f in sorted((CONF / "experiment").glob("*.yaml")):
        first, second = f.read_text().splitlines()[:2]
        assert first == "# @package _global_" and second.startswith("# python "), f


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_config_composes_and_resolves(primary, tmp_path):
    cfg = compose_cfg(primary, tmp_path)
    OmegaConf.to_container(cfg, resolve=True)
    Behavior.from_cfg(cfg.behavior)


@pytest.mark.parametrize(("group", "choice"), CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
@pytest.mark.parametrize("primary", PRIMARIES)
def test_every_group_option_composes_with_every_primary(primary, group, choice, tmp_path):
    if ((group in ("method", "evaluator", "suite") and primary == "train")
            or (group == "experiment" and primary not in _experiment_primaries(choice))
            or (group == "search" and primary != "steer")):
        pytest.skip(f"{primary}.py has no {group}={choice} axis")
    override = f"{group}={choice}" if group != "debug" else f"debug={choice}"
    cfg = compose_cfg(primary, tmp_path, [override])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for target in _targets(resolved):
        module, _, attr = target.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), target


def test_groups_have_the_paper_axes():
    for group in ["model", "behavior", "method", "adapter", "trainer", "judge", "logger"]:
        assert group in GROUPS
