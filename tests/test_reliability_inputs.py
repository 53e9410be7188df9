"""Bad inputs that used to crash or pass silently, and judge endpoints that misbehave (issue 22).

Everything here runs for real: a loopback HTTP judge server, the tiny model, files on disk, train.py subprocesses.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, subprocess_env
from tests.loopback import start_http, stop_http
from wsteer.errors import WsteerError

pytestmark = pytest.mark.reliability


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_model_load(monkeypatch):
    """Make any model load fail loudly: a refusal must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr("wsteer.recipes._common.load_model", refuse)


# --- a judge endpoint on loopback whose behaviour the test switches -----------------------------------------------

class JudgeServer:
    """An OpenAI-compatible chat-completions endpoint on 127.0.0.1 (stdlib only), answering in `mode`:

    - ``good``: text replies (no logprobs): trait 0 for an answer that opens "Sure, here is" (refusal's D⁻), else
      100; coherence 100;
    - ``empty``: a well-formed completion whose content is empty;
    - ``no_choices``: a JSON object without ``choices`` (not a chat completion);
    - ``trickle_body`` / ``trickle_headers``: the reply (or its status line and headers) one byte every 0.3 s,
      so that no single read ever waits as long as the judge's timeout.
    """

    def __init__(self, mode: str = "good"):
        from http.server import BaseHTTPRequestHandler

        self.mode = mode
        self.posts = 0
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, payload: dict) -> None:
                body = json.dumps(payload).encode()
                head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                        ).encode()
                try:
                    if server.mode.startswith("trickle"):
                        slow = head + body if server.mode == "trickle_headers" else body
                        if server.mode == "trickle_body":
                            self.wfile.write(head)
                        for i in range(len(slow)):
                            if server.stop.wait(0.3):
                                return
                            self.wfile.write(slow[i : i + 1])
                            self.wfile.flush()
                        return
                    self.wfile.write(head + body)
                except OSError:  # the client gave up
                    pass

            def do_GET(self):  # GET /v1/models: the judge's startup probe
                self._reply({"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                server.posts += 1
                prompt = request["messages"][-1]["content"]
                if server.mode == "no_choices":
                    return self._reply({"id": "x", "object": "chat.completion", "created": 0, "model": "m"})
                if server.mode == "empty":
                    text = ""
                elif "coherence" in prompt.split("\n", 1)[0]:
                    text = "100"
                else:
                    text = "0" if "[REPLY START]\nSure, here is" in prompt else "100"
                self._reply({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]})

        self.httpd, self.url = start_http(Handler)

    def close(self):
        self.stop.set()
        stop_http(self.httpd)


@pytest.fixture
def judge_server():
    srv = JudgeServer()
    yield srv
    srv.close()


def _cache_lines(folder: Path) -> list[dict]:
    return [json.loads(x) for p in folder.rglob("*.jsonl") for x in p.read_text().splitlines() if x.strip()]


def test_a_judge_answering_empty_or_off_schema_caches_nothing_and_the_fixed_endpoint_then_succeeds(
        judge_server, smoke_cfg, tmp_path):
    from wsteer.recipes import train as train_recipe

    cfg = smoke_cfg("train", ["stage=data", "behavior=refusal", "judge=openai", f"judge.base_url={judge_server.url}",
                              "judge.model=m", "judge.max_retries=0", "sampling.max_questions=2",
                              "sampling.max_prompts=2", "sampling.min_kept=1"])
    verdicts, pairs = tmp_path / "cache" / "verdicts", tmp_path / "cache" / "pairs"

    judge_server.mode = "empty"  # the endpoint answers, but with nothing to score
    with pytest.raises(WsteerError, match=r"gave no usable 0–100 score for most answers .*a reply: '\(an empty reply\)'"
                                          r".*unusable verdict\(s\) were not cached, so rerunning the same command "
                                          r"after fixing the judge asks for them again.*holds 0 scored verdict"):
        train_recipe.run(cfg)
    assert judge_server.posts > 0 and _cache_lines(verdicts) == []
    assert not list(pairs.rglob("manifest.json"))  # no dataset a later run could reuse

    judge_server.mode = "no_choices"  # JSON, but not a chat completion
    with pytest.raises(WsteerError, match=r"not a chat completion \(no choices\); point judge.base_url at an "
                                          r"OpenAI-compatible chat-completions API root .*nothing was cached"):
        train_recipe.run(cfg)
    assert _cache_lines(verdicts) == []

    judge_server.mode, before = "good", judge_server.posts  # fixed: the same command now succeeds, nothing deleted
    result = train_recipe.run(cfg)
    assert result["data/count_pos"] >= 1 and judge_server.posts > before
    lines = _cache_lines(verdicts)
    assert lines and all(r["trait"] is not None and r["coherence"] is not None for r in lines)


def test_an_unusable_verdict_cached_by_an_older_version_is_asked_again(judge_server, tmp_path):
    from wsteer.judges.base import JudgeItem, Verdict
    from wsteer.judges.openai_judge import OpenAIJudge

    judge = OpenAIJudge(judge_server.url, "m", cache_dir=tmp_path, max_retries=0, progress=False)
    item = JudgeItem("refusal", "declines", "Q?", "I cannot help with that.")
    judge.cache.put(item, Verdict(None, None))  # what the old code stored for an empty reply
    again = OpenAIJudge(judge_server.url, "m", cache_dir=tmp_path, max_retries=0, progress=False)
    assert again.judge([item]) == [Verdict(100.0, 100.0)] and again.requests_made > 0
    third = OpenAIJudge(judge_server.url, "m", cache_dir=tmp_path, max_retries=0, progress=False)
    assert third.judge([item]) == [Verdict(100.0, 100.0)] and third.requests_made == 0


@pytest.mark.parametrize("mode", ["trickle_body", "trickle_headers"])
def test_a_judge_that_trickles_its_reply_is_cut_off_at_judge_timeout(judge_server, tmp_path, mode):
    from wsteer.judges.base import JudgeItem
    from wsteer.judges.openai_judge import OpenAIJudge

    judge_server.mode = mode
    judge = OpenAIJudge(judge_server.url, "m", cache_dir=tmp_path, timeout=1, max_retries=0, progress=False)
    start = time.monotonic()
    with pytest.raises(WsteerError, match=r"did not answer within judge.timeout=1 s, 1 attempts"):
        judge.judge([JudgeItem("refusal", "declines", "Q?", "A.")])
    assert time.monotonic() - start < 3 and len(judge.cache) == 0
    start = time.monotonic()
    with pytest.raises(WsteerError, match=r"did not answer within judge.timeout=1 s"):
        judge.check_reachable()  # the startup probe is bounded the same way
    assert time.monotonic() - start < 3


# --- checks that used to come late: before the model loads -------------------------------------------------------

def test_an_unreachable_judge_is_refused_before_the_model_loads(smoke_cfg, monkeypatch):
    from wsteer.recipes import train as train_recipe

    _no_model_load(monkeypatch)
    start = time.monotonic()
    with pytest.raises(WsteerError, match=r"judge endpoint http://127.0.0.1:\d+/v1 is unreachable after 1 attempts "
                                          r".*start the server or fix judge.base_url"):
        train_recipe.run(smoke_cfg("train", ["judge=openai", f"judge.base_url=http://127.0.0.1:{_free_port()}/v1",
                                             "judge.max_retries=0"]))
    assert time.monotonic() - start < 5


def test_too_few_behavior_questions_are_refused_before_the_model_loads(smoke_cfg, monkeypatch):
    from wsteer.recipes import steer as steer_recipe
    from wsteer.recipes import train as train_recipe

    _no_model_load(monkeypatch)
    with pytest.raises(WsteerError, match=r"behavior 'sycophancy' can give at most 1 D\+/D- pair\(s\) \(1 build "
                                          r"question\(s\) × 1 system prompt\(s\) per side × sampling.n_samples=1\), "
                                          r"fewer than the 4 needed \(sampling.min_kept=4, training needs 4\); add build_questions to "
                                          r"conf/behavior/sycophancy.yaml or raise sampling.n_samples \(or drop "
                                          r"sampling.max_questions=1, sampling.max_prompts=1\)"):
        train_recipe.run(smoke_cfg("train", ["sampling.max_questions=1", "sampling.max_prompts=1"]))
    with pytest.raises(WsteerError, match=r"at most 2 D\+/D- pair.*fewer than the 3 needed \(sampling.min_kept=3\)"):
        train_recipe.run(smoke_cfg("train", ["stage=data", "sampling.max_questions=2", "sampling.max_prompts=1",
                                             "sampling.min_kept=3"]))
    with pytest.raises(WsteerError, match="can give at most 1 D"):  # steer.py building its vector
        steer_recipe.run(smoke_cfg("steer", ["sampling.max_questions=1", "sampling.max_prompts=1"]))


@pytest.mark.parametrize(("override", "message"), [
    ("evaluator.mmlu.n=-5", r"evaluator mmlu: n=-5 must be a positive integer, the number of questions drawn "
                            r"\(e.g. evaluator.mmlu.n=100\), or null"),
    ("evaluator.mmlu.n=many", r"evaluator mmlu: n='many' must be a positive integer"),
    ("evaluator.mmlu.source=tinymmlu", r"evaluator mmlu: unknown source='tinymmlu'; use evaluator.mmlu.source=local"),
])
def test_mmlu_settings_are_refused_before_the_model_loads_naming_the_setting(smoke_cfg, monkeypatch, override,
                                                                              message):
    from wsteer.recipes import steer as steer_recipe

    _no_model_load(monkeypatch)
    with pytest.raises(WsteerError, match=message) as err:
        steer_recipe.run(smoke_cfg("steer", ["evaluator=[mmlu]", override]))
    assert "limit" not in str(err.value)


# --- data files: behaviors, task rows, the sampling progress file --------------------------------------------------

def _behavior(**changes) -> dict:
    base = {"name": "x", "version": 1, "pos_system_prompts": ["a"], "neg_system_prompts": ["b"],
            "build_questions": ["q1", "q2"], "heldout_questions": ["h"]}
    return {**base, **changes}


@pytest.mark.parametrize(("changes", "message"), [
    ({"build_questions": ["q1", 42]}, r"behavior 'x': build_questions\[1\] is 42 \(int\), not a text; quote it in "
                                      r"conf/behavior/x.yaml"),
    ({"heldout_questions": [None]}, r"heldout_questions\[0\] is None \(NoneType\), not a text"),
    ({"pos_system_prompts": [{"a": 1}]}, r"pos_system_prompts\[0\] is \{'a': 1\} \(dict\), not a text"),
    ({"build_questions": "just one question"}, r"build_questions must be a list of texts, got str"),
    ({"version": "one"}, r"behavior 'x': version must be an integer \(e.g. version: 2\), got 'one'"),
    ({"version": [1]}, r"version must be an integer .*got \[1\]"),
    ({"fixed_responses": {"neg": ["ok", 7]}}, r"fixed_responses.neg\[1\] is 7 \(int\), not a text"),
])
def test_a_behavior_with_questions_that_are_not_texts_or_a_bad_version_is_refused(changes, message):
    from wsteer.behaviors import Behavior

    with pytest.raises(WsteerError, match=message):
        Behavior.from_cfg(_behavior(**changes))


def test_a_behavior_yaml_with_bad_types_fails_the_cli_with_one_line(tmp_path):
    behavior = ROOT / "conf" / "behavior" / "sycophancy.yaml"
    bad = tmp_path / "conf" / "behavior" / "numbers.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text(behavior.read_text().replace("name: sycophancy", "name: numbers", 1)
                   .replace("version: 1", "version: v2", 1))
    proc = subprocess.run([sys.executable, "train.py", "debug=smoke", "logger=none", "behavior=numbers",
                           f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "wsteer: error: behavior 'numbers': version must be an integer (e.g. version: 2), got 'v2'; fix "
        "conf/behavior/numbers.yaml"]


def _task_file(tmp_path: Path, lines: list[str] | bytes) -> Path:
    path = tmp_path / "task.jsonl"
    path.write_bytes(lines if isinstance(lines, bytes) else "".join(x + "\n" for x in lines).encode())
    return path


GOOD_ROWS = [json.dumps({"question": f"What is {i} + 1?", "response": f"It is {i + 1}."}) for i in range(8)]


@pytest.mark.parametrize(("row", "message"), [
    ({"question": 3, "response": "x"}, r"task.jsonl:3: question is 3 \(int\); every row needs a non-empty text as "
                                       r"question: fix or drop line 3"),
    ({"question": "q", "response": None}, r"task.jsonl:3: response is None \(NoneType\)"),
    ({"question": "q", "answer": 42}, r"task.jsonl:3: response is 42 \(int\)"),
    ({"question": "", "response": "r"}, r"task.jsonl:3: question is ''"),
])
def test_task_rows_whose_question_or_response_is_not_text_are_refused_with_the_row(tmp_path, row, message):
    from wsteer.recipes.task_finetune import load_task_rows

    path = _task_file(tmp_path, [*GOOD_ROWS[:2], json.dumps(row), *GOOD_ROWS[2:]])
    with pytest.raises(WsteerError, match=message):
        load_task_rows(str(path))


def test_a_task_file_that_is_not_utf8_is_refused_before_training(smoke_cfg, tmp_path, monkeypatch):
    from wsteer.recipes import train as train_recipe
    from wsteer.recipes.task_finetune import load_task_rows

    path = _task_file(tmp_path, "".join(x + "\n" for x in GOOD_ROWS).encode() + b'{"question": "caf\xe9"}\n')
    with pytest.raises(WsteerError, match=r"task.data=.*task.jsonl is not UTF-8 text \(byte \d+ cannot be decoded\); "
                                          r"give a JSONL file .* saved as UTF-8"):
        load_task_rows(str(path))
    with pytest.raises(WsteerError, match="is not UTF-8 text"):  # the same through the recipe
        train_recipe.run(smoke_cfg("train", ["source=task", f"task.data={path}", "task.steps=2"]))
    assert not (tmp_path / "out" / "adapter").exists()


def test_a_damaged_line_in_the_middle_of_the_sampling_progress_file_is_skipped_and_resampled(tiny, smoke_cfg,
                                                                                            tmp_path, capsys):
    from wsteer.behaviors import Behavior
    from wsteer.data.pairs import sample_pairs

    model, tok = tiny
    cfg = smoke_cfg("train", ["sampling.max_questions=2", "sampling.max_prompts=2"])
    behavior = Behavior.from_cfg(cfg.behavior).limited(2, 2)
    progress = tmp_path / "samples.jsonl"
    first = sample_pairs(model, tok, behavior, cfg.sampling, progress)
    lines = progress.read_text().splitlines()
    assert len(lines) == 8
    lines[3] = lines[3][:25] + "\x00garbage"  # a damaged record in the middle, not the cut-off last line
    lines[5] = json.dumps({"side": "pos", "question": 7})  # valid JSON, but not a sampled answer
    progress.write_text("".join(x + "\n" for x in lines))
    capsys.readouterr()
    again = sample_pairs(model, tok, behavior, cfg.sampling, progress)
    out = capsys.readouterr().out
    assert f"wsteer: warning: {progress} line 4 and 1 more is not a sampled answer (damaged); skipping 2 line(s): " \
           "those answers are sampled again" in out
    assert {s: len(r) for s, r in again.items()} == {s: len(r) for s, r in first.items()}
    assert all(json.loads(x) for x in progress.read_text().splitlines())  # rewritten without the bad lines
    assert len(progress.read_text().splitlines()) == 8
    sample_pairs(model, tok, behavior, cfg.sampling, progress)  # nothing left to warn about or to sample
    assert "warning" not in capsys.readouterr().out and len(progress.read_text().splitlines()) == 8


# --- vectors: non-finite tensors, promised modules, coverage -------------------------------------------------------

def _tiny_vector(model, names: list[str] | None = None, value: float = 0.01):
    from wsteer.models import fingerprint
    from wsteer.steering.weight import decoder_linear_weights
    from wsteer.vectors import WeightVector

    params = dict(model.named_parameters())
    names = names or decoder_linear_weights(model)
    factors = {n: (torch.full((params[n].shape[0], 2), value), torch.full((2, params[n].shape[1]), value))
               for n in names}
    return WeightVector(factors, {"base_model": "wsteer/tiny-random-llama", "base_fingerprint": fingerprint(model),
                                  "behavior": "sycophancy", "method": "lora", "variant": "contrastive"})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_vector_holding_nan_or_inf_is_refused_at_load_as_an_invalid_file(tiny, tmp_path, bad):
    from wsteer.vectors import WeightVector

    model, _ = tiny
    vec = _tiny_vector(model)
    name = next(iter(vec.factors))
    vec.factors[name][0][0, 0] = bad
    path = vec.save(tmp_path / "vector.safetensors")
    with pytest.raises(WsteerError, match=rf"vector.safetensors is an invalid vector: its tensor {name}::B holds 1 "
                                          r"NaN/inf value\(s\) of \d+, so the vector file itself is unusable .*rebuild "
                                          r"it with `python train.py`"):
        WeightVector.load(path)


def test_a_non_finite_vector_stops_steer_py_before_any_generation(tiny, tmp_path):
    model, _ = tiny
    vec = _tiny_vector(model)
    next(iter(vec.factors.values()))[1][0, 0] = float("nan")
    path = vec.save(tmp_path / "vector.safetensors")
    proc = subprocess.run([sys.executable, "steer.py", "debug=smoke", "logger=none", f"vector={path}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "is an invalid vector" in proc.stderr and "the vector file itself is unusable" in proc.stderr
    assert "generate" not in proc.stdout + proc.stderr and not (tmp_path / "run" / "report.md").exists()


def test_a_vector_missing_modules_its_manifest_promises_is_refused(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from wsteer.vectors import WeightVector

    model, _ = tiny
    path = _tiny_vector(model).save(tmp_path / "vector.safetensors")
    assert len(WeightVector.load(path).manifest["modules"]) == 14  # recorded at save time
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    cut = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.")}  # a whole layer lost
    save_file(cut, str(path), metadata=meta)
    with pytest.raises(WsteerError, match=r"vector.safetensors: its manifest promises 14 module\(s\) but the file "
                                          r"holds factors for only 7 of them \(lacking e.g. model.layers.1\..*\); the "
                                          r"file is incomplete — rebuild it"):
        WeightVector.load(path)


def test_a_vector_covering_part_of_the_model_says_how_much(tiny, capsys):
    from wsteer.models import fingerprint
    from wsteer.steering.weight import WeightSteerer

    model, _ = tiny
    WeightSteerer(_tiny_vector(model)).check_compatible(model, fingerprint(model))
    assert "warning" not in capsys.readouterr().out  # a full vector: nothing to say
    one = _tiny_vector(model, ["model.layers.0.mlp.down_proj.weight"])
    WeightSteerer(one).check_compatible(model, fingerprint(model))
    assert capsys.readouterr().out.strip() == (
        "wsteer: warning: the vector edits 1 of the model's 14 decoder linear weight matrices (7%); a vector built "
        "with adapter.target_modules=all-linear edits all of them: check vector=")
    one.manifest["lora"] = {"target_modules": ["down_proj"]}
    WeightSteerer(one).check_compatible(model, fingerprint(model))
    assert "it was built with adapter.target_modules=['down_proj']" in capsys.readouterr().out


# --- resources: the disk fills while a training checkpoint is saved ------------------------------------------------

@pytest.mark.parametrize("where", ["write", "move"])
def test_disk_full_while_saving_a_training_checkpoint_is_one_clear_error_and_leaves_no_temp_file(
        smoke_cfg, tmp_path, monkeypatch, where):
    """Lightning writes a checkpoint to a temporary file (fsspec: in the system temp dir) and moves it to our
    temporary name next to `last.ckpt`; a full disk can hit either the write or the (cross-device) move."""
    import builtins
    import shutil
    import tempfile

    import fsspec.implementations.local as fs_local

    from wsteer.recipes import train as train_recipe

    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    real_open, real_move = builtins.open, shutil.move

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(str(file)).parent == system_tmp:
            f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    def full_move(src, dst):  # a copy across devices that runs out of space half-way
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "write":
        monkeypatch.setattr(builtins, "open", full_open)
    else:
        monkeypatch.setattr(fs_local.shutil, "move", full_move)
    cfg = smoke_cfg("train")
    checkpoints = tmp_path / "cache" / "checkpoints"
    message = (r"could not write the training checkpoint .*/last.ckpt: no space left on the device \(at step 2; no "
               r"checkpoint was kept\); free some space or point paths.cache_dir at another disk, then rerun")
    with pytest.raises(WsteerError, match=message):
        train_recipe.run(cfg)
    folder = next(p for p in checkpoints.rglob("*") if p.is_dir() and not any(c.is_dir() for c in p.iterdir()))
    assert list(folder.iterdir()) == [] and list(system_tmp.iterdir()) == []
    (folder / ".last.ckpt.999999999.tmp").write_bytes(b"left by a run killed mid-save")  # that process is gone
    with pytest.raises(WsteerError, match=message):  # the rerun: the same line, still nothing left behind
        train_recipe.run(cfg)
    assert list(folder.iterdir()) == [] and list(system_tmp.iterdir()) == []
    assert not list((tmp_path / "cache" / "vectors").rglob("COMPLETE"))
    if where == "move":
        monkeypatch.setattr(fs_local.shutil, "move", real_move)  # space freed: the same command now succeeds
        train_recipe.run(cfg)
        assert list((tmp_path / "cache" / "vectors").rglob("COMPLETE")) and not list(checkpoints.rglob("*.ckpt*"))


# --- model paths that are not models -------------------------------------------------------------------------------

def test_a_model_path_that_is_not_a_model_is_refused_before_loading(smoke_cfg, tmp_path):
    from wsteer.recipes import train as train_recipe

    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "README.md").write_text("my notes")
    with pytest.raises(WsteerError, match=r"model.path=.*not_a_model is a folder but not a model \(no config.json\); "
                                          r"point model.path at a folder written by save_pretrained"):
        train_recipe.run(smoke_cfg("train", ["model.source=hf", f"model.path={folder}"]))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 16)
    with pytest.raises(WsteerError, match=rf"model.path={gguf} is a file, not a model folder; use model.source=gguf "
                                          rf"model.gguf_file={gguf}"):
        train_recipe.run(smoke_cfg("train", ["model.source=hf", f"model.path={gguf}"]))
    (folder / "config.json").write_text('{"model_type": "llama"}')  # a config, but no tokenizer or weights
    with pytest.raises(WsteerError, match=r"could not load model .*not_a_model' \(.*\); a file in"):
        train_recipe.run(smoke_cfg("train", ["model.source=hf", f"model.path={folder}"]))


def test_a_gguf_path_that_is_not_gguf_is_refused(smoke_cfg, tmp_path):
    from wsteer.recipes import train as train_recipe

    fake = tmp_path / "model.gguf"
    fake.write_text("<html>a download error page</html>")
    with pytest.raises(WsteerError, match=r"model.gguf is not a GGUF model file \(it does not start with the GGUF "
                                          r"magic bytes\); point model.gguf_file at a .gguf file"):
        train_recipe.run(smoke_cfg("train", ["model=smollm2_135m", f"model.gguf_file={fake}", "model.name=fake"]))


def test_a_truncated_file_in_the_converted_model_cache_is_discarded_and_converted_again(tiny, tmp_path, capsys):
    from omegaconf import OmegaConf

    from wsteer.models import load_model

    model, tok = tiny
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2_135m.yaml")
    cfg.name, cfg.gguf_file = "fake", str(tmp_path / "broken.gguf")  # reconverting then fails: a clear line
    (tmp_path / "broken.gguf").write_bytes(b"not gguf")
    cached = tmp_path / "cache" / "models" / "fake"
    model.save_pretrained(cached)  # what an earlier conversion left, then damaged
    tok.save_pretrained(cached)
    tokenizer_json = cached / "tokenizer.json"
    tokenizer_json.write_bytes(tokenizer_json.read_bytes()[:100])
    with pytest.raises(WsteerError, match="broken.gguf is not a GGUF model file"):
        load_model(cfg, tmp_path / "cache", device="cpu")
    out = capsys.readouterr().out
    assert f"wsteer: warning: the converted model cache {cached} is unreadable (" in out
    assert "converting again" in out and not cached.exists()  # the damaged cache is never reused


@pytest.mark.slow
def test_a_truncated_converted_embedded_model_is_rebuilt_and_loads(tmp_path, capsys):
    from omegaconf import OmegaConf

    from wsteer.models import load_model

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2_135m.yaml")
    load_model(cfg, tmp_path, device="cpu")
    tokenizer_json = tmp_path / "models" / cfg.name / "tokenizer.json"
    tokenizer_json.write_bytes(tokenizer_json.read_bytes()[:1000])
    model, tok = load_model(cfg, tmp_path, device="cpu")
    assert "converting again" in capsys.readouterr().out and len(tok("hello").input_ids) > 0


# --- SIGTERM during a task fine-tune: exit 143, a checkpoint, the rerun resumes ------------------------------------

def test_a_task_finetune_stopped_by_sigterm_exits_143_and_the_rerun_resumes(tmp_path):
    import signal

    data = _task_file(tmp_path, [json.dumps({"question": f"What is {i} + {i}?", "response": f"It is {2 * i}."})
                                 for i in range(40)])
    steps = 40
    args = [sys.executable, "train.py", "debug=smoke", "logger=none", "source=task", f"task.data={data}",
            "task.batch_size=2", f"task.steps={steps}", "trainer.eval_every=4"]
    env = subprocess_env(tmp_path)
    first = subprocess.Popen([*args, f"hydra.run.dir={tmp_path / 'run1'}"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpts: list[Path] = []
    deadline = time.time() + 180
    while not ckpts and time.time() < deadline and first.poll() is None:
        ckpts = list((tmp_path / "cache" / "checkpoints" / "task").rglob("last.ckpt"))
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert ckpts, "the task fine-tune never wrote a resume checkpoint"
    assert first.returncode == 143 and "Traceback" not in err, err
    assert "wsteer: error: stopped by SIGTERM at step" in err and "rerun the same command to resume" in err, err
    assert ckpts[0].is_file() and not (tmp_path / "run1" / "adapter").exists()
    stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split()[0])

    done = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'run2'}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "resuming task fine-tune at step" in x)
    assert int(line.split("at step ")[1].split()[0]) == stopped_at > 0, (line, err)
    assert (tmp_path / "run2" / "adapter" / "task" / "adapter_config.json").is_file() or \
        (tmp_path / "run2" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "run2" / "task_manifest.json").read_text())["steps"] == steps
    assert not list((tmp_path / "cache" / "checkpoints").rglob("*.ckpt"))  # removed once the adapter was saved


def test_two_identical_jobs_at_once_build_the_data_and_the_vector_once(tmp_path):
    """Concurrent jobs of a sweep share the cache: one samples and trains, the other waits and reuses both."""
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env

    env = subprocess_env(tmp_path)
    cmd = [sys.executable, "steer.py", "debug=smoke", "logger=none", "evaluator=[]"]
    procs = [subprocess.Popen([*cmd, f"hydra.run.dir={tmp_path / f'run{i}'}"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    text = "".join(o[0] for o in outs)
    assert text.count("saved lora artifacts") == 1 and text.count("reusing cached lora artifacts") == 1, text
    assert text.count("wsteer: building D+/D-:") == 1  # without the lock both jobs would sample and train
    samples = list((tmp_path / "cache" / "samples").rglob("*.jsonl"))
    lines = sum(len(f.read_text().splitlines()) for f in samples)
    assert lines == 2 * 20 * 5  # each (question, prompt, sample) once per side, not twice (debug=smoke: 1 sample)


def test_a_vector_built_for_another_behavior_is_named_in_one_line_and_in_the_report(smoke_cfg, capsys):
    from wsteer.recipes import steer as steer_recipe
    from wsteer.recipes import train as train_recipe

    cfg = smoke_cfg("train")
    train_recipe.run(cfg)
    vector = Path(cfg.output_dir) / "vector.safetensors"
    capsys.readouterr()
    cfg2 = smoke_cfg("steer", [f"vector={vector}", "behavior=evil", "evaluator=[]", "k=-2"])
    steer_recipe.run(cfg2)
    out = capsys.readouterr().out
    assert "was built for behavior 'sycophancy', but this run has behavior=evil" in out
    assert "**note**: " in (Path(cfg2.output_dir) / "report.md").read_text()
