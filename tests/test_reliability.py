"""Safety of inputs and outputs: secrets never written anywhere, pickles never executed (issue 8, first cases)."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env
from tests.loopback import start_http, stop_http

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
    # A judge run against a local endpoint that rejects the key, with W&B logging on: it must fail with one clear
    # line, and nothing it wrote (Hydra's saved config, logs, the W&B offline run, caches) may contain the key.
    srv = _BadJudgeServer("bad_key")  # reachable at startup (GET), rejects every chat request with HTTP 401
    try:
        proc = _cli(tmp_path, "train.py", "logger=wandb", "judge=openai", f"judge.base_url={srv.url}",
                    "judge.max_retries=1", "judge.timeout=2", env_extra={"OPENAI_API_KEY": SENTINEL})
    finally:
        srv.close()
    assert proc.returncode == 2 and "rejected the API key (HTTP 401); check OPENAI_API_KEY" in proc.stderr, proc.stderr
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

    steps, every = 60, 5
    args = [sys.executable, "train.py", "debug=smoke", "logger=none", f"trainer.steps={steps}",
            f"trainer.eval_every={every}"]
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
    assert val_steps == list(range(0, steps + 1, every))  # the history from before the kill was carried over
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


# --- bad inputs: each one clear error naming the fix --------------------------------------------------------------

def _assert_one_line(proc: subprocess.CompletedProcess, pattern: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert pattern in proc.stderr, proc.stderr


def test_unknown_config_group_option_lists_the_available_ones(tmp_path):
    proc = _cli(tmp_path, "train.py", "logger=none", "behavior=sycophanty")
    _assert_one_line(proc, "Could not find 'behavior/sycophanty'", code=1)  # Hydra's own message and exit status
    assert "Available options in 'behavior'" in proc.stderr and "sycophancy" in proc.stderr


def test_misspelled_config_key_is_named(tmp_path):
    proc = _cli(tmp_path, "train.py", "logger=none", "trainer.stpes=3")
    _assert_one_line(proc, "Key 'stpes' is not in struct", code=1)


def test_unwritable_run_dir_is_one_line_before_hydra_writes_anything(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "train.py", "debug=smoke", "logger=none",
                           f"hydra.run.dir={blocker / 'run'}"], cwd=ROOT, env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    _assert_one_line(proc, f"wsteer: error: hydra.run.dir {blocker / 'run'} is not writable (Not a directory)")


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "plain_file"
    path.write_text("not a folder")
    return path


BAD_VALUES = [  # (override, what the one error line must say)
    ("sampling.n_samples=-1", "sampling.n_samples must be a positive integer, got -1 (e.g. sampling.n_samples=2)"),
    ("sampling.n_samples=many", "sampling.n_samples must be a positive integer, got 'many'"),
    ("sampling.temperature=-0.5", "sampling.temperature must be a finite number ≥ 0"),
    ("adapter.r=0", "adapter.r must be a positive integer (the paper uses 32), got 0"),
    ("trainer.lr=nan", "trainer.lr must be a finite number > 0"),
    ("trainer.steps=0", "trainer.steps must be a positive integer"),
    ("trainer.val_fraction=1.5", "trainer.val_fraction must be a number strictly between 0 and 1"),
    ("eval.batch_size=0", "eval.batch_size must be a positive integer"),
    ("device=tpu", "device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("source=lroa", "unknown source='lroa'; choose one of lora, bias"),
    ("stage=sample", "unknown stage='sample'; use stage=all"),
    ("judge.thresholds.trait=150", "judge.thresholds.trait must be a number from 0 to 100, got 150"),
    ("+judge.thresholds.coherance=50", "unknown judge threshold judge.thresholds.coherance"),
    ("model.source=onnx", "model.source must be one of gguf, hf, tiny; got 'onnx'"),
    ("judge._target_=os.system", "refusing to build 'os.system': config targets must live in wsteer.*"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_config_values_fail_fast_with_one_error_naming_the_fix(smoke_cfg, override, message):
    from wsteer.errors import WsteerError
    from wsteer.recipes import train as train_recipe

    judge = ["judge=rules"] if "thresholds" in override else []
    with pytest.raises(WsteerError) as err:
        train_recipe.run(smoke_cfg("train", [*judge, override]))
    assert message in str(err.value)


def test_cuda_requested_without_a_gpu_fails_before_loading_the_model(smoke_cfg):
    import torch

    from wsteer.errors import WsteerError
    from wsteer.recipes import train as train_recipe

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(WsteerError, match="device=cuda but torch sees no CUDA GPU here; use device=auto"):
        train_recipe.run(smoke_cfg("train", ["device=cuda"]))


@pytest.mark.parametrize("which", ["output_dir", "paths.cache_dir"])
def test_unwritable_output_or_cache_dir_is_refused_before_any_work(smoke_cfg, a_file, which):
    from wsteer.errors import WsteerError
    from wsteer.recipes import train as train_recipe

    with pytest.raises(WsteerError, match=r"dir .*plain_file/x is not writable \(Not a directory\); set "):
        train_recipe.run(smoke_cfg("train", [f"{which}={a_file / 'x'}"]))


def test_a_model_folder_that_does_not_exist_names_the_download_or_local_path_fix(smoke_cfg, tmp_path):
    from wsteer.errors import WsteerError
    from wsteer.recipes import train as train_recipe

    with pytest.raises(WsteerError, match="could not load model .*set model.path to a local folder"):
        train_recipe.run(smoke_cfg("train", ["model.source=hf", f"model.path={tmp_path / 'no_model'}"]))


def test_a_behavior_missing_its_questions_or_with_wrong_fixed_texts_is_refused():
    from wsteer.behaviors import Behavior
    from wsteer.errors import WsteerError

    with pytest.raises(WsteerError, match="behavior 'x' is missing build_questions, heldout_questions"):
        Behavior.from_cfg({"name": "x", "pos_system_prompts": ["a"], "neg_system_prompts": ["b"]})
    with pytest.raises(WsteerError, match=r"fixed_responses.neg needs one text per build question \(2\), got 1"):
        Behavior.from_cfg({"name": "x", "pos_system_prompts": ["a"], "neg_system_prompts": ["b"],
                           "build_questions": ["q1", "q2"], "heldout_questions": ["h"],
                           "fixed_responses": {"neg": ["only one"]}})


def test_base_adapter_that_is_not_a_peft_folder_is_refused(smoke_cfg, tmp_path):
    from wsteer.errors import WsteerError
    from wsteer.recipes._common import merge_base_adapter, prepare

    ctx = prepare(smoke_cfg("steer", [f"base_adapter={tmp_path}"]))
    with pytest.raises(WsteerError, match="is not a PEFT adapter folder"):
        merge_base_adapter(ctx)


def _save_vector(path: Path, manifest: dict, factors: dict | None = None) -> Path:
    import json

    import torch
    from safetensors.torch import save_file

    factors = factors or {"model.layers.0.mlp.down_proj.weight": (torch.zeros(64, 2), torch.zeros(2, 128))}
    tensors = {f"{n}::{k}": t for n, (b, a) in factors.items() for k, t in (("B", b), ("A", a))}
    save_file(tensors, str(path), metadata={"format": "wsteer.weight_vector/1", "manifest": json.dumps(manifest)})
    return path


def test_a_vector_whose_manifest_lacks_fields_is_refused(tmp_path):
    from wsteer.errors import WsteerError
    from wsteer.vectors import WeightVector

    path = _save_vector(tmp_path / "v.safetensors", {"behavior": "sycophancy", "method": "weight"})
    with pytest.raises(WsteerError, match="manifest lacks base_model, base_fingerprint; rebuild it"):
        WeightVector.load(path)


def test_a_dense_vector_given_where_a_weight_vector_is_needed_is_refused(tmp_path):
    import torch

    from wsteer.errors import WsteerError
    from wsteer.vectors import DenseVector, WeightVector

    manifest = {"base_model": "m", "base_fingerprint": "f", "behavior": "b", "method": "bias"}
    path = DenseVector({"x": torch.zeros(3)}, manifest).save(tmp_path / "bias.safetensors")
    with pytest.raises(WsteerError, match="is not a wsteer weight vector"):
        WeightVector.load(path)


def test_a_vector_for_modules_or_shapes_the_model_lacks_is_refused(tiny, tmp_path):
    import torch

    from wsteer.errors import WsteerError
    from wsteer.models import fingerprint
    from wsteer.steering.weight import WeightSteerer
    from wsteer.vectors import WeightVector

    model, _ = tiny
    base = {"base_model": "m", "base_fingerprint": fingerprint(model), "behavior": "b", "method": "weight"}
    missing = WeightVector({"model.layers.9.mlp.down_proj.weight": (torch.zeros(64, 2), torch.zeros(2, 128))}, base)
    with pytest.raises(WsteerError, match="which the loaded model does not have; wrong model="):
        WeightSteerer(missing).check_compatible(model, fingerprint(model))
    shape = WeightVector({"model.layers.0.mlp.down_proj.weight": (torch.zeros(32, 2), torch.zeros(2, 128))}, base)
    with pytest.raises(WsteerError, match=r"shape mismatch at model.layers.0.mlp.down_proj.weight"):
        WeightSteerer(shape).check_compatible(model, fingerprint(model))


def test_a_truncated_dataset_file_is_refused(tmp_path):
    from wsteer.data.pairs import load_pairs, save_pairs
    from wsteer.errors import WsteerError

    rows = {s: [{"question": f"q{i}", "response": "an answer " * 10, "system_prompt": "s", "system_prompt_index": 0,
                 "sample_index": 0, "finished": True} for i in range(20)] for s in ("pos", "neg")}
    save_pairs(rows, tmp_path / "ds", {"key": {}})
    arrow = next((tmp_path / "ds" / "pos").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(WsteerError, match="is unreadable .*delete it and rerun"):
        load_pairs(tmp_path / "ds")


def test_too_little_data_to_train_and_all_prompts_too_long_are_clear_errors(smoke_cfg):
    from wsteer.data.sft import PairedDataModule
    from wsteer.errors import WsteerError
    from wsteer.recipes._common import prepare
    from wsteer.training.builder import paired_datamodule

    ctx = prepare(smoke_cfg("train"))
    few = {s: [{"question": "q", "response": "a"}] * 2 for s in ("pos", "neg")}
    with pytest.raises(WsteerError, match=r"too little data to train: \{'pos': 2, 'neg': 2\} examples"):
        paired_datamodule(ctx, few)
    rows = {s: [{"question": "a long question " * 5, "response": "x"}] * 8 for s in ("pos", "neg")}
    with pytest.raises(WsteerError, match="longer than trainer.max_length=8 tokens; raise it"):
        PairedDataModule(ctx.tokenizer, rows, batch_size=2, max_length=8)


# --- judge endpoints that misbehave: a real HTTP server on loopback that answers badly -----------------------------

class _BadJudgeServer:
    """A stdlib HTTP server posing as an OpenAI-compatible endpoint, answering every request in one bad way."""

    def __init__(self, mode: str):
        import json
        import time
        from http.server import BaseHTTPRequestHandler

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                code, ctype = 200, "application/json"
                if mode == "slow":
                    time.sleep(3)
                if mode == "html":
                    body, ctype = b"<html><body>502 proxy error</body></html>", "text/html"
                elif mode == "bad_json":
                    body = b'{"choices": [ {"message": '
                elif mode == "bad_key":
                    code, body = 401, json.dumps({"error": {"message": "invalid api key"}}).encode()
                else:  # "words": a well-formed completion whose text holds no score
                    body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                       "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                           "role": "assistant", "content": "I would rather not rate that."}}]}).encode()
                self.send_response(code)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout case)
                    pass

        self.server, self.url = start_http(Handler)

    def close(self):
        stop_http(self.server)


@pytest.fixture
def bad_judge_server(request):
    srv = _BadJudgeServer(request.param)
    yield srv
    srv.close()


JUDGE_FAILURES = [
    ("slow", r"did not answer within judge.timeout=1 s, 2 attempts; raise judge.timeout"),
    ("html", r"answered with something that is not a chat completion \('<html>.*point judge.base_url at an "
             r"OpenAI-compatible API root"),
    ("bad_json", r"answered with something that is not a chat completion \(JSONDecodeError\)"),
    ("bad_key", r"rejected the API key \(HTTP 401\); check OPENAI_API_KEY"),
]


@pytest.mark.parametrize(("bad_judge_server", "message"), JUDGE_FAILURES, indirect=["bad_judge_server"],
                         ids=[m for m, _ in JUDGE_FAILURES])
def test_a_misbehaving_judge_endpoint_is_one_clear_error(bad_judge_server, message, tmp_path):
    from wsteer.errors import WsteerError
    from wsteer.judges.base import JudgeItem
    from wsteer.judges.openai_judge import OpenAIJudge

    judge = OpenAIJudge(bad_judge_server.url, "judge-model", cache_dir=tmp_path, timeout=1, max_retries=1,
                        retry_backoff=0.05, progress=False)
    with pytest.raises(WsteerError, match=message):
        judge.judge([JudgeItem("sycophancy", "flatters", "Q?", "A.")])
    assert len(judge.cache) == 0  # nothing bogus was cached as a verdict


@pytest.mark.parametrize("bad_judge_server", ["words"], indirect=True)
def test_a_judge_whose_verdicts_carry_no_score_stops_the_run_quoting_a_reply(bad_judge_server, smoke_cfg):
    from wsteer.errors import WsteerError
    from wsteer.recipes import train as train_recipe

    cfg = smoke_cfg("train", ["stage=data", "judge=openai", f"judge.base_url={bad_judge_server.url}",
                              "judge.model=m", "sampling.max_questions=2", "sampling.max_prompts=2"])
    with pytest.raises(WsteerError, match=r"gave no usable 0–100 score for most answers .*"
                                          r"a reply: 'I would rather not rate that.'.*fix judge.prompts"):
        train_recipe.run(cfg)


# --- resources: the disk fills up while an artifact is saved -------------------------------------------------------

_DISK_FULL = r'''
import json, resource, signal, sys, torch
from wsteer.errors import WsteerError
from wsteer.vectors import WeightVector
from wsteer.artifacts import write_json
path = sys.argv[1]
manifest = {"base_model": "m", "base_fingerprint": "f", "behavior": "b", "method": "weight"}
WeightVector({"w": (torch.ones(8, 2), torch.ones(2, 8))}, {**manifest, "version": "old"}).save(path)
write_json(path + ".json", {"version": "old"})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, writes fail with EFBIG like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
for what in ("vector", "manifest"):
    try:
        if what == "vector":
            WeightVector({"w": (torch.ones(4096, 2), torch.ones(2, 8))}, {**manifest, "version": "new"}).save(path)
        else:
            write_json(path + ".json", {"version": "new", "pad": "x" * 10000})
    except WsteerError as e:
        print(f"wsteer: error: {e}")
'''


def test_disk_full_while_saving_is_a_clear_error_and_the_previous_artifact_survives(tmp_path):
    import json

    from wsteer.vectors import WeightVector

    path = tmp_path / "out" / "vector.safetensors"
    proc = subprocess.run([sys.executable, "-c", _DISK_FULL, str(path)], cwd=ROOT, env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("wsteer: error: could not write")]
    assert len(lines) == 2 and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
    assert all("file too large" in x and "point output_dir / paths.cache_dir at another disk" in x for x in lines)
    assert WeightVector.load(path).manifest["version"] == "old"  # the old artifact is intact, not half-replaced
    assert json.loads((path.parent / "vector.safetensors.json").read_text()) == {"version": "old"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["vector.safetensors", "vector.safetensors.json"]


# --- atomic artifacts: a kill at any moment of a save never leaves a file that loads as valid but is not -----------

_SAVE_LOOP = r'''
import sys, torch
from wsteer.vectors import WeightVector
from wsteer.artifacts import write_json
path = sys.argv[1]
manifest = {"base_model": "m", "base_fingerprint": "f", "behavior": "b", "method": "weight"}
print("ready", flush=True)
i = 0
while True:  # every save writes a complete, self-consistent vector: B = i everywhere, manifest says i
    i += 1
    WeightVector({f"w{j}": (torch.full((512, 8), float(i)), torch.ones(8, 512)) for j in range(6)},
                 {**manifest, "i": i}).save(path)
    write_json(path + ".json", {"i": i, "pad": [i] * 20000})
'''


def test_a_save_killed_at_random_moments_never_leaves_a_partial_artifact(tmp_path):
    import json
    import random
    import signal
    import time

    from wsteer.vectors import WeightVector

    path = tmp_path / "vector.safetensors"
    rng = random.Random(0)
    seen = set()
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(path)], cwd=ROOT,
                                env=subprocess_env(tmp_path), stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5 + rng.random())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        vec = WeightVector.load(path)  # whatever is at the final name is one whole save
        i = vec.manifest["i"]
        assert all(float(b.min()) == float(b.max()) == i for b, _ in vec.factors.values())
        assert len(vec.factors) == 6
        data = json.loads((tmp_path / "vector.safetensors.json").read_text())
        assert data["i"] in (i, i - 1, i + 1) and set(data["pad"]) == {data["i"]}
        seen.add(i)
    assert len(seen) > 1  # the kills landed at different points of the save loop


def test_an_unreadable_resume_checkpoint_is_discarded_and_training_starts_over(smoke_cfg, tmp_path, capsys):
    from wsteer.recipes import train as train_recipe

    cfg = smoke_cfg("train")
    train_recipe.run(cfg)
    folder = next((tmp_path / "cache" / "vectors").rglob("COMPLETE")).parent
    from wsteer.training.build import resume_checkpoint_path

    ckpt = resume_checkpoint_path(cfg, folder)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    capsys.readouterr()
    train_recipe.run(cfg)  # the same command again: the bad checkpoint must not stop it
    out = capsys.readouterr().out
    assert f"discarding unreadable training checkpoint {ckpt}" in out and "training starts from step 0" in out
    assert "resuming paired training" not in out and not ckpt.exists()


# --- numerical guards: a real divergence, not a patched loss --------------------------------------------------------

def test_a_diverging_training_stops_with_a_clear_message(smoke_cfg):
    from wsteer.errors import WsteerError
    from wsteer.recipes import train as train_recipe

    with pytest.raises(WsteerError, match=r"training loss of '(pos|neg)' became (nan|inf) at step \d+; lower the "
                                          r"learning rate \(trainer.lr\)"):
        train_recipe.run(smoke_cfg("train", ["trainer.lr=1e30"]))


def test_multi_device_training_without_ddp_is_refused(smoke_cfg):
    from wsteer.errors import WsteerError
    from wsteer.recipes import train as train_recipe

    # DDP itself is tested in tests/test_ddp.py; devices > 1 with no data-parallel strategy is refused up front
    with pytest.raises(WsteerError, match="trainer.devices=2 with trainer.strategy=auto"):
        train_recipe.run(smoke_cfg("train", ["+trainer.devices=2"]))
