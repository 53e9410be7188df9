"""A steering method added from the test folder alone (issue 15): its Steerer and artifact builder in
tests/plugin_method.py, its YAML in tests/plugin_conf/method/ on Hydra's search path, nothing in wsteer/ touched.
steer.py builds its artifact through the artifact cache, steers with it, and reuses it on the next run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from tests.conftest import compose_cfg
from wsteer.errors import WsteerError
from wsteer.recipes import steer as steer_recipe

PLUGIN_CONF = Path(__file__).resolve().parent / "plugin_conf"
SEARCH = f"hydra.searchpath=[file://{PLUGIN_CONF}]"


def _cfg(tmp_path, *overrides):
    return compose_cfg("steer", tmp_path, ["debug=smoke", "logger=none", SEARCH, "method=embedding_shift",
                                           *overrides])


def test_a_method_from_the_test_folder_runs_steer_end_to_end_and_caches_its_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("WSTEER_PLUGINS", "tests")  # the person running wsteer trusts these modules
    cfg = _cfg(tmp_path, "k=-20")
    metrics = steer_recipe.run(cfg)
    out = Path(cfg.output_dir)
    report = (out / "report.md").read_text()
    assert "embedding_shift: token embeddings + k·v" in report and "built in this run" in report
    assert "| k = 0 | k = -20 |" in report
    assert "eval/heldout_tone/changed_vs_k0@k=-20" in metrics
    # cached like every built-in artifact: <cache>/vectors/<model>-<fp>/<behavior>/<kind>/<data>-<settings>/
    (folder,) = Path(cfg.paths.cache_dir).glob("vectors/*/sycophancy/embedding_shift/*")
    assert json.loads((folder / "COMPLETE").read_text()) == {"artifacts": ["shift"]}
    steered = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {r["k"] for r in steered} == {0.0, -20.0}

    again = _cfg(tmp_path, "k=-20", f"output_dir={tmp_path / 'again'}")
    steer_recipe.run(again)
    assert "(reused)" in (Path(again.output_dir) / "report.md").read_text()
    # a builder setting enters the cache key: another value builds another artifact
    steer_recipe.run(_cfg(tmp_path, "k=-20", "method.artifact.max_tokens=8", f"output_dir={tmp_path / 'other'}"))
    assert len(list(Path(cfg.paths.cache_dir).glob("vectors/*/sycophancy/embedding_shift/*"))) == 2


def test_a_method_outside_wsteer_needs_the_user_to_trust_its_module(tmp_path, monkeypatch):
    """Refused before the model loads: a config file alone cannot make wsteer import and run code."""
    monkeypatch.delenv("WSTEER_PLUGINS", raising=False)
    monkeypatch.setattr("wsteer.recipes.steer.prepare", lambda cfg: pytest.fail("the model was loaded"))
    with pytest.raises(WsteerError, match=r"refusing to build 'tests\.plugin_method\.EmbeddingShiftSteerer' for method=embedding_shift.*"
                                          r"WSTEER_PLUGINS=tests"):
        steer_recipe.run(_cfg(tmp_path))


def test_an_unknown_method_names_the_available_ones_including_the_added_one(tmp_path):
    with pytest.raises(MissingConfigException) as err:
        compose_cfg("steer", tmp_path, [SEARCH, "method=embeding_shift"])
    assert "embedding_shift" in str(err.value) and "weight" in str(err.value)
