"""serve.py's other backends: `llamacpp` end to end (the real server on loopback, the real `openai` client, real
llama-cpp-python on the embedded SmolLM2 GGUF), and what can be checked of `vllm` without vLLM or a GPU (its
start-up refusal, and its per-(vector, k) adapter folders merged with real PEFT).

The served vectors are random low-rank vectors and random activation vectors with SmolLM2's shapes, planted in the
test's own library under the embedded model's fingerprint (a trained vector would take minutes to build; the checks are about the backend
applying exactly the file llama.cpp is given, not about what the vector means). The llama.cpp tests skip when
llama-cpp-python or the embedded model is missing (`bash scripts/setup.sh test` installs both).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT, compose_cfg, subprocess_env
from tests.loopback import together_and_alone
from wsteer.errors import WsteerError

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SMOLLM = CONF / "model" / "smollm2_135m.yaml"
QUESTIONS = list(OmegaConf.load(CONF / "behavior" / "sycophancy.yaml").heldout_questions)
# one llama.cpp thread: ggml's threads spin at barriers, and on a shared, oversubscribed CPU two of them can take
# minutes per token; one thread is also what the direct reference runs with
N_CTX, THREADS, MAX_TOKENS = 1024, 1, 20
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed; `bash scripts/setup.sh test` installs it")


def random_vector(model, fp: str, behavior: str, seed: int, rank: int = 8, scale: float = 0.06):
    """A contrastive-shaped random vector on every decoder linear layer, built 'for' this model (its fingerprint)."""
    from wsteer.vectors import WeightVector

    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.startswith("model.layers."):
            factors[f"{name}.weight"] = (torch.randn(m.out_features, rank, generator=g) * scale,
                                         torch.randn(rank, m.in_features, generator=g) * scale)
    return WeightVector(factors, {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "base_fingerprint": fp,
                                  "behavior": behavior, "method": "lora", "variant": "contrastive",
                                  "model_name": "smollm2_135m", "lora": {"r": rank // 2, "alpha": rank // 2}})


def random_activation(model, fp: str, behavior: str, seed: int, scale: float = 0.5):
    """An activation-shaped random vector (aˡ for l = 0..L), built 'for' this model; ‖a¹⁵‖ ≈ 12, about the norm of
    a trained sycophancy vector's deeper layers on SmolLM2, so k = -2 steers visibly."""
    from wsteer.vectors import DenseVector

    g = torch.Generator().manual_seed(100 + seed)
    n_layers, d = model.config.num_hidden_layers, model.config.hidden_size
    return DenseVector({str(i): torch.randn(d, generator=g) * scale for i in range(n_layers + 1)},
                       {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "base_fingerprint": fp,
                        "behavior": behavior, "method": "activation", "model_name": "smollm2_135m", "n_layers": n_layers})


def plant(vector, cache: Path, fp: str, behavior: str, source: str, artifact: str, i: int) -> None:
    where = cache / "vectors" / f"smollm2_135m-{fp[:12]}" / behavior / source / f"00000000000{i}-00000000"
    where.mkdir(parents=True)
    vector.save(where / f"{artifact}.safetensors")
    (where / "COMPLETE").write_text("{}")


@pytest.fixture(scope="module")
def smollm():
    """(model, tokenizer, its converted HF folder, the GGUF it came from): the embedded default model."""
    from wsteer.models import cached_gguf_folder, fingerprint, gguf_path, load_model

    cfg, cache = OmegaConf.load(SMOLLM), os.environ.get("WSTEER_CACHE", "~/.cache/wsteer")
    try:
        base_gguf = gguf_path(cfg)
        model, tok = load_model(cfg, cache, device="cpu")
    except WsteerError as e:
        pytest.skip(f"the embedded model is not installed: {e}")
    return model, tok, cached_gguf_folder(cfg, cache), base_gguf, fingerprint(model)


class Server:
    def __init__(self, proc, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def client(self):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=300)

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=30) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm):
    """A `backend=llamacpp` server over a library holding two weight and two activation vectors for the embedded model;
    (server, {behavior: weight vector, "<behavior>:activation": activation vector}, tmp)."""
    model, _, folder, base_gguf, fp = smollm
    tmp = tmp_path_factory.mktemp("serve_llamacpp")
    vectors = {}
    for i, behavior in enumerate(("sycophancy", "evil")):
        vectors[behavior] = random_vector(model, fp, behavior, seed=i)
        plant(vectors[behavior], tmp / "cache", fp, behavior, "lora", "contrastive", i)
        vectors[f"{behavior}:activation"] = random_activation(model, fp, behavior, seed=i)
        plant(vectors[f"{behavior}:activation"], tmp / "cache", fp, behavior, "activation", "activation", i)
    log = tmp / "server.log"
    cmd = [sys.executable, "serve.py", "backend=llamacpp", "model=smollm2_135m", "model.source=hf",
           f"model.path={folder}", f"base_gguf={base_gguf}", f"llamacpp.n_ctx={N_CTX}", f"llamacpp.n_threads={THREADS}",
           "port=0", f"paths.cache_dir={tmp / 'cache'}", f"output_dir={tmp / 'server'}", f"hydra.run.dir={tmp / 'hydra'}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(tmp))
    deadline, url = time.monotonic() + 300, None
    while url is None:
        text = log.read_text()
        url = next((line.split(" on ")[1].split("/v1")[0] for line in text.splitlines()
                    if line.startswith("wsteer: serving")), None)
        if url is None and (proc.poll() is not None or time.monotonic() > deadline):
            proc.kill()
            pytest.fail(f"serve.py backend=llamacpp did not start (exit {proc.returncode}):\n{text}")
        time.sleep(0.2)
    yield Server(proc, url, log), vectors, tmp
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def ask(client, question: str, model: str = "smollm2_135m", max_tokens: int = MAX_TOKENS, **kw) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                       temperature=0, max_tokens=max_tokens, **kw)
    return r.choices[0].message.content


def direct(tok, base_gguf, questions, lora=None, scale: float = 1.0, control=None) -> list[str]:
    """llama-cpp-python alone: `Llama(lora_path=..., lora_scale=...)` (or a control vector file at strength `scale`, as
    `--control-vector-scaled` sets it) and its own greedy `create_completion` on the prompt ids `steer.py` renders
    (the server's prompts), text stripped as chat answers are."""
    from llama_cpp import Llama

    from wsteer.control_vector import apply_control_vector
    from wsteer.generation import render_prompt

    llm = Llama(model_path=str(base_gguf), lora_path=str(lora) if lora else None, lora_scale=scale, n_ctx=N_CTX,
                n_threads=THREADS, seed=0, verbose=False)
    if control is not None:
        apply_control_vector(llm, control, scale)
    try:
        out = []
        for q in questions:
            ids = render_prompt(tok, [{"role": "user", "content": q}])
            llm.reset()
            r = llm.create_completion(prompt=ids, temperature=0, max_tokens=MAX_TOKENS)
            out.append(r["choices"][0]["text"].strip())
        return out
    finally:
        llm.close()


@needs_llama_cpp
def test_k0_is_llama_cpps_own_base_answer(served, smollm):
    server, _, _ = served
    _, tok, _, base_gguf, _ = smollm
    qs = QUESTIONS[:3]
    want = direct(tok, base_gguf, qs)
    client = server.client()
    assert [ask(client, q) for q in qs] == want
    assert [ask(client, q, model="sycophancy@0") for q in qs] == want  # k = 0 is the base: no adapter set
    assert server.health()["backend"] == "llamacpp"


@needs_llama_cpp
def test_the_steered_alias_is_llama_cpp_with_the_exported_adapter_at_scale_k(served, smollm, tmp_path):
    from wsteer.export_gguf import export_gguf_lora

    server, vectors, tmp = served
    _, tok, _, base_gguf, _ = smollm
    qs = QUESTIONS[3:6]
    lora = export_gguf_lora(vectors["sycophancy"], tmp_path / "w.gguf", base_gguf)  # exported here, independently
    want = direct(tok, base_gguf, qs, lora, -2.0)
    client = server.client()
    got = [ask(client, q, model="sycophancy@-2") for q in qs]
    assert got == want
    assert got != direct(tok, base_gguf, qs)  # the adapter really steers
    # the same through "steer"; the vector was exported once, into the server's cache, and reused for every k
    assert [ask(client, q, extra_body={"steer": {"sycophancy": -2}}) for q in qs] == want
    assert ask(client, qs[0], model="sycophancy@3") != want[0]
    exported = sorted(p.name for p in (tmp / "cache" / "serving" / "llamacpp").iterdir())
    assert len(exported) == 1 and exported[0].startswith("sycophancy-weight-") and exported[0].endswith(".gguf")


@needs_llama_cpp
def test_activation_is_llama_cpps_own_control_vector_at_strength_k(served, smollm, tmp_path):
    from wsteer.control_vector import export_control_vector

    server, vectors, _ = served
    _, tok, _, base_gguf, _ = smollm
    qs = QUESTIONS[:2]
    # the layer steer.py method=activation uses for sycophancy on this model, and the file steer.py export_gguf writes
    layer = OmegaConf.load(CONF / "behavior_model" / "sycophancy_smollm2_135m.yaml").activation_layer
    path = export_control_vector(vectors["sycophancy:activation"], tmp_path / "cv.gguf", layer=layer)
    want = direct(tok, base_gguf, qs, scale=-2.0, control=path)
    client = server.client()
    got = [ask(client, q, extra_body={"steer": {"sycophancy": -2}, "method": "activation"}) for q in qs]
    assert got == want
    assert got != [ask(client, q) for q in qs]  # the control vector really steers, and is cleared after its batch
    listed = {m.id: m.model_extra["wsteer"] for m in client.models.list().data}["sycophancy"]
    assert listed["methods"][-1] == "activation" and listed["activation"]["layer"] == layer
    assert listed["activation"]["positions"] == "all"  # llama.cpp adds at every position: said, not hidden


@needs_llama_cpp
def test_eight_concurrent_mixed_k_requests_equal_their_answers_sent_one_at_a_time(served):
    server, _, _ = served
    steerings = [("weight", {}), ("weight", {"sycophancy": -2}), ("weight", {"sycophancy": 2}), ("weight", {"evil": -3}),
                 ("weight", {"sycophancy": -2, "evil": 1.5}), ("activation", {"sycophancy": -2}),
                 ("activation", {"sycophancy": -2, "evil": 1.5})]
    requests = [(QUESTIONS[i % 4], *steerings[i % len(steerings)]) for i in range(10)]
    client = server.client()

    def send(req):
        question, method, steer = req
        return ask(client, question, extra_body={"steer": steer, "method": method} if steer else None)

    together, alone = together_and_alone(send, requests)
    assert together == alone
    assert len(set(alone[:7])) == 7  # seven different steerings (and prompts): seven different answers


@needs_llama_cpp
def test_streaming_and_seeded_sampling(served):
    server, _, _ = served
    client = server.client()
    plain = client.chat.completions.create(model="evil@2", messages=[{"role": "user", "content": QUESTIONS[1]}],
                                           temperature=0, max_tokens=MAX_TOKENS)
    chunks = list(client.chat.completions.create(model="evil@2", messages=[{"role": "user", "content": QUESTIONS[1]}],
                                                 temperature=0, max_tokens=MAX_TOKENS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1

    def sample():
        r = client.chat.completions.create(model="sycophancy@-1", messages=[{"role": "user", "content": QUESTIONS[2]}],
                                           temperature=0.9, top_p=0.95, seed=7, max_tokens=12, n=3)
        return [c.message.content for c in r.choices]

    first = sample()
    assert len(first) == 3 and len(set(first)) > 1 and sample() == first


BAD = [
    ({"model": "smollm2_135m", "extra_body": {"steer": {"refusal": -2}, "method": "activation"}}, "vector_not_built",
     "python train.py behavior=refusal model=smollm2_135m source=activation"),
    ({"model": "smollm2_135m", "extra_body": {"steer": {"sycophancy": -2}, "method": "bias"}}, "invalid_value",
     "method"),
    ({"model": "nosuch@-2"}, "unknown_behavior", "known behaviors"),
    ({"model": "refusal@-1"}, "vector_not_built", "python train.py behavior=refusal model=smollm2_135m"),
    ({"model": "sycophancy@-2", "max_tokens": 5000}, "context_length_exceeded", "context length (1024)"),
    ({"model": "sycophancy@-2", "n": 17}, "invalid_value", '"n" must be between 1 and 16'),
]


@needs_llama_cpp
@pytest.mark.reliability
@pytest.mark.parametrize("request_,code,words", BAD, ids=[b[1] for b in BAD])
def test_a_bad_request_gets_a_400_and_the_next_good_one_succeeds(served, request_, code, words):
    server, _, _ = served
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(**{"messages": [{"role": "user", "content": "hello"}],
                                                   "max_tokens": 4, **request_})
    err = info.value.body
    assert info.value.status_code == 400 and err["type"] == "invalid_request_error"
    assert err["code"] == code and words in err["message"], err
    assert ask(server.client(), QUESTIONS[0], model="sycophancy@-2", max_tokens=4)


@pytest.mark.reliability
def test_backends_that_cannot_run_are_refused_before_the_model_loads(tmp_path):
    from wsteer.recipes import serve as serve_recipe

    cases = [(["model=tiny", "backend=llamacpp"], "convert_hf_to_gguf.py and pass base_gguf=FILE.gguf"),
             (["backend=llamacpp", f"base_gguf={tmp_path / 'missing.gguf'}"], "does not exist"),
             (["backend=llamacpp", "model=smollm2_135m", "llamacpp.n_threads=0"], "llamacpp.n_threads must be"),
             (["backend=llamacpp", "model=smollm2_135m", "activation.positions=last"],
              "activation.positions=last cannot be served by it")]
    if importlib.util.find_spec("vllm") is None:
        cases.append((["backend=vllm"], r"pip install vllm` on a CUDA machine"))
    if importlib.util.find_spec("llama_cpp") is None:
        cases = [(["backend=llamacpp"], "pip install llama-cpp-python")] + cases[4:]
    for overrides, words in cases:
        cfg = compose_cfg("serve", tmp_path, ["debug=smoke", "logger=none", *overrides])
        with pytest.raises(WsteerError, match=words):
            serve_recipe.run(cfg)
    assert not (tmp_path / "cache" / "models").exists()  # refused before any model was loaded


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed: the refusal is moot")
def test_serve_py_backend_vllm_fails_at_start_up_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "serve.py", "backend=vllm", "debug=smoke", f"hydra.run.dir={tmp_path}"],
                       cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "wsteer: error: backend=vllm needs vLLM, which is not installed: `pip install vllm` on a CUDA machine "
        "(vLLM runs on NVIDIA GPUs); on this machine serve with backend=hf or backend=llamacpp"]


def test_vllm_adapter_folders_merge_with_peft_to_theta_plus_k_w_and_are_cached_per_k(tiny, tmp_path):
    """What backend=vllm hands vLLM for (vector, k): a PEFT LoRA folder; merged by real PEFT it is θ + k·w."""
    import copy

    from peft import PeftModel

    from wsteer.serving.vllm import VLLM_RANKS, adapter_folder, vllm_rank
    from wsteer.steering.weight import WeightSteerer

    model, _ = tiny
    vector = random_vector(model, "tiny-fp", "sycophancy", seed=3, rank=4, scale=0.3)
    folder, made = adapter_folder(vector, -2.0, "vector-key", tmp_path, base_model_id="tiny", model=model)
    assert made and (folder / "adapter_config.json").is_file()
    again, made_again = adapter_folder(vector, -2.0, "vector-key", tmp_path, base_model_id="tiny", model=model)
    assert again == folder and not made_again  # cached per (vector, k)
    other, _ = adapter_folder(vector, 3.0, "vector-key", tmp_path, base_model_id="tiny", model=model)
    assert other != folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, other.name])  # no temp leftovers
    merged = PeftModel.from_pretrained(copy.deepcopy(model), str(folder)).merge_and_unload()
    with WeightSteerer(vector).apply(model, -2.0):
        want = {n: p.detach().clone() for n, p in model.named_parameters()}
    got = dict(merged.named_parameters())
    assert set(got) == set(want)
    changed = 0
    for name, p in want.items():
        torch.testing.assert_close(got[name], p, rtol=0, atol=1e-6)
        changed += not torch.equal(p, dict(model.named_parameters())[name])
    assert changed == len(vector.factors)  # every edited matrix moved, and only those
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 4  # scale α/r = 1 in PEFT and in vLLM: k is in lora_B
    assert vllm_rank(4) == 8 and vllm_rank(64) == 64 and vllm_rank(65) == 128 and VLLM_RANKS[-1] == 512
    with pytest.raises(WsteerError, match="largest max_lora_rank"):
        vllm_rank(513)
