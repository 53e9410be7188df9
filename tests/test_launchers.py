"""Cluster fan-out: every launcher config composes, and a multirun through Hydra's submitit launcher (local mode:
real submitit processes) shares one vector cache, built once under the cross-process lock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, ROOT, subprocess_env


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")))
def test_every_launcher_config_composes_with_its_plugin_installed(launcher):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="steer", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert "submitit" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.submitit_folder.endswith(".submitit/%j")


def test_a_submitit_local_multirun_runs_its_jobs_and_builds_the_shared_vector_once(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "steer.py", "-m", "hydra/launcher=local", "debug=smoke", "logger=none",
                           "evaluator=[]", "method=weight", "k=-1,1", f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                          env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2
    ks = {next(key.rpartition("@k=")[2] for key in json.loads((j / "metrics.json").read_text()) if "@k=" in key
               and not key.endswith("@k=0")) for j in jobs}
    assert ks == {"-1", "1"}
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    assert len(list(sweep.glob(".submitit/*/*_log.out"))) == 2  # two submitit jobs, each with its own log
    assert logs.count("saved lora artifacts") == 1 and logs.count("reusing cached lora artifacts") == 1, logs
    vectors = list((tmp_path / "cache" / "vectors").rglob("COMPLETE"))
    assert len(vectors) == 1
