"""Safety of inputs and outputs: secrets never written anywhere, pickles never executed (issue 8, first cases)."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.reliability

SENTINEL = "sk-wsteer-sentinel-9f8e7d6c5b4a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(tmp_path: Path, script: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**subprocess_env(tmp_path), **(env_extra or {})}
    return subprocess.run([sys.executable, script, "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_an_api_key_from_the_environment_never_reaches_configs_logs_manifests_or_wandb(tmp_path):
    # A judge run against a dead local endpoint, with W&B logging on: it must fail with one clear line, and
    # nothing it wrote (Hydra's saved config, logs, the W&B offline run, caches) may contain the key.
    proc = _cli(tmp_path, "train.py", "logger=wandb", "judge=openai",
                f"judge.base_url=http://127.0.0.1:{_free_port()}/v1", "judge.max_retries=1", "judge.timeout=2",
                env_extra={"OPENAI_API_KEY": SENTINEL})
    assert proc.returncode == 2 and "unreachable" in proc.stderr, proc.stderr
    assert SENTINEL not in proc.stdout + proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(".hydra" in str(p) for p in written) and any("offline-run" in str(p) for p in written)
    leaks = [p for p in written if SENTINEL.encode() in p.read_bytes()]
    assert not leaks, leaks


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_passed_as_a_vector_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "vector.safetensors"
    bad.write_bytes(pickle.dumps(_Exploit(marker)))
    proc = _cli(tmp_path, "steer.py", "logger=none", f"vector={bad}")
    assert proc.returncode == 2 and "truncated or corrupt" in proc.stderr, proc.stderr
    assert not marker.exists()
    torch_pickle = tmp_path / "vector.pt"
    import torch

    torch.save({"x": _Exploit(marker)}, torch_pickle)
    proc = _cli(tmp_path, "steer.py", "logger=none", f"vector={torch_pickle}")
    assert proc.returncode == 2 and not marker.exists(), proc.stderr


def test_no_module_loads_weights_with_pickle():
    # Every tensor file goes through safetensors; torch.load (pickle) appears nowhere in the package.
    offenders = [p for p in (ROOT / "wsteer").rglob("*.py")
                 if "torch.load(" in p.read_text() or "pickle.load" in p.read_text()]
    assert not offenders, offenders


# --- interruption: a killed paired training resumes from its last checkpoint -------------------------------------

@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_paired_training_killed_midway_resumes_from_its_last_checkpoint(tmp_path, sig):
    import csv
    import signal
    import time

    from wsteer.vectors import WeightVector

    steps = 120
    args = [sys.executable, "train.py", "debug=smoke", "logger=none", f"trainer.steps={steps}",
            "trainer.eval_every=10"]
    env = subprocess_env(tmp_path)
    first = subprocess.Popen([*args, f"hydra.run.dir={tmp_path / 'run1'}"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpts: list[Path] = []
    deadline = time.time() + 180
    while not ckpts and time.time() < deadline and first.poll() is None:
        ckpts = list((tmp_path / "cache" / "checkpoints").rglob("last.ckpt"))
        time.sleep(0.05)
    first.send_signal(getattr(signal, sig))
    _, err = first.communicate(timeout=120)
    assert ckpts, "training never wrote a resume checkpoint"
    if sig == "SIGTERM":  # stopped between steps: a checkpoint of that very step, a clear line, exit 128 + 15
        assert first.returncode == 143 and "Traceback" not in err, err
        assert "wsteer: error: stopped by SIGTERM at step" in err and "rerun the same command" in err, err
    assert not list((tmp_path / "cache" / "vectors").rglob("COMPLETE"))  # killed before the vector existed

    done = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'run2'}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "resuming paired training at step" in x)
    resumed_at = int(line.split("at step ")[1].split()[0])
    assert 0 < resumed_at < steps, line
    if sig == "SIGTERM":  # nothing after the last validation was lost either
        assert resumed_at == int(err.split("stopped by SIGTERM at step ")[1].split()[0]), (line, err)
    # Only the remaining steps ran: the resumed run logged training losses for steps after `resumed_at` only.
    with next((tmp_path / "run2" / "train_log").rglob("metrics.csv")).open() as f:
        logged = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_pos")]
    assert len(logged) == steps - resumed_at, (resumed_at, len(logged))
    vec = WeightVector.load(tmp_path / "run2" / "vector.safetensors")
    assert vec.norm() > 0 and vec.manifest["behavior"] == "sycophancy"
    val_steps = sorted({h["step"] for h in vec.manifest["val_history"]})
    assert val_steps == list(range(0, steps + 1, 10))  # the history from before the kill was carried over
    assert not list((tmp_path / "cache" / "checkpoints").rglob("*.ckpt"))  # removed once the vector was saved


# --- numerical guards -----------------------------------------------------------------------------------------------

def test_a_steered_model_whose_logits_overflow_is_reported_with_k_and_a_smaller_k(tiny):
    import torch

    from tests.conftest import assert_bitwise, snapshot
    from wsteer.errors import WsteerError
    from wsteer.steering.guards import assert_finite_logits
    from wsteer.steering.weight import WeightSteerer
    from wsteer.vectors import WeightVector

    model, tok = tiny
    g = torch.Generator().manual_seed(0)
    factors = {n: (torch.randn(p.shape[0], 2, generator=g), torch.randn(2, p.shape[1], generator=g))
               for n, p in model.named_parameters() if n.endswith("proj.weight")}
    steerer = WeightSteerer(WeightVector(factors, {"base_fingerprint": None}))
    before = snapshot(model)
    with steerer.apply(model, 0.01):
        assert_finite_logits(model, tok, 0.01, "weight")  # a sane k passes silently
    with pytest.raises(WsteerError, match=r"weight steering at k=1e\+30 makes the model's logits (NaN|inf).*"
                                          r"use a smaller \|k\| \(e\.g\. k=5e\+29\)"), steerer.apply(model, 1e30):
        assert_finite_logits(model, tok, 1e30, "weight")
    assert_bitwise(model, before)  # the refused steering was still undone exactly
