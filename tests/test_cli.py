"""The entry scripts as a user runs them: bad input is one clear line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.reliability


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "steer.py", "debug=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", *args],
        cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300,
    )


def _assert_one_clear_line(proc, pattern: str):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("wsteer: error:")]
    assert len(lines) == 1 and pattern in lines[0], proc.stderr


@pytest.mark.parametrize("k", ["nan", "inf", "abc"])
def test_non_finite_k_is_one_clear_error(tmp_path, k):
    _assert_one_clear_line(_run(tmp_path, f"k={k}"), "k must be a finite number")


def test_missing_and_corrupt_vector_files_are_one_clear_error(tmp_path):
    _assert_one_clear_line(_run(tmp_path, f"vector={tmp_path / 'nope.safetensors'}"), "does not exist")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    _assert_one_clear_line(_run(tmp_path, f"vector={bad}"), "truncated or corrupt")


def test_vector_for_another_base_model_is_one_clear_error(tmp_path):
    import json

    manifest = {"base_model": "Qwen/Qwen2.5-7B-Instruct", "base_fingerprint": "f" * 24, "behavior": "sycophancy",
                "method": "weight"}
    path = tmp_path / "other.safetensors"
    save_file({"model.layers.0.mlp.down_proj.weight::B": torch.zeros(64, 2),
               "model.layers.0.mlp.down_proj.weight::A": torch.zeros(2, 128)}, str(path),
              metadata={"format": "wsteer.weight_vector/1", "manifest": json.dumps(manifest)})
    _assert_one_clear_line(_run(tmp_path, f"vector={path}"), "built for base model 'Qwen/Qwen2.5-7B-Instruct'")


def test_a_path_valued_override_names_one_multirun_folder_not_a_nest(tmp_path):
    """conf/base.yaml names each job's folder after its overrides; `base_adapter=outputs/ft/adapter` must give one
    folder (with "_" for "/"), not outputs/ft/adapter,... nested three deep. A real Hydra multirun over the real
    config, with a job that only reports its folder."""
    app = tmp_path / "app.py"
    app.write_text(
        "import hydra\nimport wsteer.cli  # noqa: F401  (registers the folder-name resolver, as every entry script)\n"
        "from hydra.core.hydra_config import HydraConfig\n\n"
        f"@hydra.main(version_base='1.3', config_path={str(ROOT / 'conf')!r}, config_name='steer')\n"
        "def main(cfg):\n    print('JOB', HydraConfig.get().runtime.output_dir)\n\nmain()\n")
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(app), "-m", "base_adapter=outputs/ft/adapter", "k=-1,1",
                           f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("JOB "))
    assert [Path(j).name for j in jobs] == ["base_adapter=outputs_ft_adapter,k=-1", "base_adapter=outputs_ft_adapter,k=1"]
    assert all(Path(j).parent == sweep for j in jobs)
