"""serve.py end to end: the real server in a subprocess on loopback, the real `openai` client, a real browser.

The served model is the tiny Llama of `model=tiny` with its weights drawn at std 0.2 instead of 0.02 and loaded
through the HF-folder path (`model.source=hf`): at 0.02 the random model gives the same few bytes to every
prompt, so "equal answers" would prove nothing; at 0.2 each prompt gets its own answer, batched or alone. Its two
behaviors (sycophancy, evil) get a weight vector and an activation vector each, built by the real `train.py` recipe
(`source=lora`, `source=activation`) into the test's own cache.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
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

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "wsteer-test-key-7f3a9c"  # the bearer token; it must never appear in the server's logs
QUESTIONS = list(OmegaConf.load(CONF / "behavior" / "sycophancy.yaml").heldout_questions)
ACT_KS = (-2.0, 3.0)  # activation k compared with steer.py method=activation


def save_varied_tiny(folder: Path) -> Path:
    from transformers import LlamaForCausalLM

    from wsteer.models import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = build_tiny_model(OmegaConf.load(CONF / "model" / "tiny.yaml"), len(tok)).config
    config.initializer_range = 0.2
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def plant_foreign_vector(cache: Path) -> None:
    """A 'french' vector in the library that was built on another base model (another fingerprint)."""
    from wsteer.vectors import WeightVector

    src = next(cache.glob("vectors/*/sycophancy/lora/*/contrastive.safetensors"))
    vector = WeightVector.load(src)
    other = "0123456789abcdef01234567"
    vector.manifest.update(behavior="french", base_fingerprint=other, base_model="someone/other-model",
                           model_name="other")
    folder = cache / "vectors" / f"other-{other[:12]}" / "french" / "lora" / "aaaaaaaaaaaa-bbbbbbbb"
    folder.mkdir(parents=True)
    vector.save(folder / "contrastive.safetensors")
    (folder / "COMPLETE").write_text("{}")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(tmp dir, the model overrides): the varied tiny model saved, its two behaviors' weight and activation vectors
    built, a foreign vector."""
    from wsteer.recipes import train as train_recipe

    tmp = tmp_path_factory.mktemp("serve")
    overrides = ["debug=smoke", "logger=none", "model.source=hf", f"model.path={save_varied_tiny(tmp / 'model')}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("WANDB_MODE", "disabled")
        for behavior in ("sycophancy", "evil"):
            for source in ("lora", "activation"):
                train_recipe.run(compose_cfg("train", tmp, [*overrides, f"behavior={behavior}", f"source={source}",
                                                            f"output_dir={tmp / behavior / source}"]))
    plant_foreign_vector(tmp / "cache")
    return tmp, overrides


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path, hydra_dir: Path):
        self.proc, self.url, self.log, self.hydra_dir = proc, url, log, hydra_dir

    def client(self, key: str | None = KEY):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=120)

    def post(self, path: str, raw: bytes, key: str | None = KEY) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        req = urllib.request.Request(f"{self.url}{path}", data=raw, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=30) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def server(built):
    tmp, overrides = built
    log = tmp / "server.log"
    env = {**subprocess_env(tmp), "WSTEER_SERVE_API_KEY": KEY}
    cmd = [sys.executable, "serve.py", *overrides, "port=0", f"paths.cache_dir={tmp / 'cache'}",
           f"output_dir={tmp / 'server'}", f"hydra.run.dir={tmp / 'hydra'}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    url = None
    while url is None:
        text = log.read_text()
        for line in text.splitlines():
            if line.startswith("wsteer: serving"):
                url = line.split(" on ")[1].split("/v1")[0]
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve.py did not start (exit {proc.returncode}):\n{text}")
        time.sleep(0.2)
    yield Server(proc, url, log, tmp / "hydra")
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def reference(built):
    """The same model loaded in this process, and the library's weight and activation vectors: what `steer.py` would
    compute."""
    from wsteer.models import load_model
    from wsteer.vectors import DenseVector, WeightVector

    tmp, _ = built
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "model" / "tiny.yaml"), {"source": "hf", "path": str(tmp / "model")})
    model, tok = load_model(cfg, tmp / "cache", device="cpu")
    vectors = {b: WeightVector.load(next((tmp / "cache").glob(f"vectors/tiny-*/{b}/lora/*/contrastive.safetensors")))
               for b in ("sycophancy", "evil")}
    activations = {b: DenseVector.load(next((tmp / "cache").glob(f"vectors/tiny-*/{b}/activation/*/activation.safetensors")))
                   for b in ("sycophancy", "evil")}
    return model, tok, vectors, activations


def ask(client, question: str, model: str = "tiny", max_tokens: int = 24, **kw):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                       temperature=0, max_tokens=max_tokens, **kw)
    return r.choices[0].message.content


def test_greedy_answers_equal_steer_py_at_the_same_k(server, built):
    from wsteer.recipes import steer as steer_recipe

    tmp, overrides = built
    out = tmp / "steer-run"
    steer_recipe.run(compose_cfg("steer", tmp, [*overrides, "k=[-2,3]", "evaluator=[]", f"output_dir={out}"]))
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {r["k"] for r in rows} == {0.0, -2.0, 3.0} and len(rows) == 3 * len(QUESTIONS)
    client = server.client()
    for r in rows:
        if r["k"] == 0:
            got = ask(client, r["question"])
        elif r["k"] == -2:
            got = ask(client, r["question"], model="sycophancy@-2")
        else:
            got = ask(client, r["question"], extra_body={"steer": {"sycophancy": 3}, "method": "weight"})
        assert got == r["answer"], (r["k"], r["question"])
    # the steering is real: the answers at each k differ from the base model's
    for k in (-2.0, 3.0):
        base = [r["answer"] for r in rows if r["k"] == 0]
        assert sum(a != b for a, b in zip(base, [r["answer"] for r in rows if r["k"] == k], strict=True)) >= 10


def test_sixteen_concurrent_requests_with_mixed_k_equal_their_answers_sent_one_at_a_time(server, reference):
    from wsteer.generation import generate
    from wsteer.library import compose
    from wsteer.steering.weight import WeightSteerer

    model, tok, vectors, _ = reference
    steerings = [{}, {"sycophancy": -2}, {"sycophancy": 4}, {"evil": -3}, {"sycophancy": -2, "evil": 1.5}]
    requests = [(QUESTIONS[i % len(QUESTIONS)], steerings[i % len(steerings)]) for i in range(16)]
    client = server.client()

    def send(req):
        question, steer = req
        return ask(client, question, extra_body={"steer": steer} if steer else None)

    before = server.health()
    health = []
    together, alone = together_and_alone(send, requests, between=lambda: health.append(server.health()))
    during = health[0]
    assert together == alone
    # they were batched (fewer batches than requests), and batches never mixed steerings (the answers above)
    assert during["batches"] - before["batches"] < 16
    # and both equal wsteer's own generate under the same steering, in this process
    for question, steer in requests:
        if not steer:
            steerer, k = None, 0.0
        elif len(steer) == 1:
            (name, k), = steer.items()
            steerer = WeightSteerer(vectors[name])
        else:
            steerer, k = WeightSteerer(compose({n: (vectors[n], v) for n, v in steer.items()})), 1.0
        conv = [[{"role": "user", "content": question}]]
        if steerer is None:
            want = generate(model, tok, conv, max_new_tokens=24, progress=False)[0]["text"]
        else:
            with steerer.apply(model, k):
                want = generate(model, tok, conv, max_new_tokens=24, progress=False)[0]["text"]
        assert alone[requests.index((question, steer))] == want, (question, steer)


def test_activation_greedy_answers_equal_steer_py_method_activation_at_the_same_k(server, built):
    from wsteer.recipes import steer as steer_recipe

    tmp, overrides = built
    out = tmp / "steer-activation-run"
    steer_recipe.run(compose_cfg("steer", tmp, [*overrides, "method=activation", f"k=[{ACT_KS[0]},{ACT_KS[1]}]",
                                                "evaluator=[]", f"output_dir={out}"]))
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {r["k"] for r in rows} == {0.0, *ACT_KS} and len(rows) == 3 * len(QUESTIONS)
    # steer.py reused the library's activation vector (the one the server serves); it did not build another
    assert len(list((tmp / "cache").glob("vectors/tiny-*/sycophancy/activation/*/activation.safetensors"))) == 1
    client = server.client()
    for r in rows:
        extra = {"steer": {"sycophancy": r["k"]}, "method": "activation"} if r["k"] else None
        assert ask(client, r["question"], extra_body=extra) == r["answer"], (r["k"], r["question"])
    base = [r["answer"] for r in rows if r["k"] == 0]
    for k in ACT_KS:  # the steering is real: the answers at each k differ from the base model's
        assert sum(a != b for a, b in zip(base, [r["answer"] for r in rows if r["k"] == k], strict=True)) >= 10


def test_concurrent_weight_and_activation_requests_equal_their_answers_sent_one_at_a_time(server, reference):
    from wsteer.generation import generate
    from wsteer.steering.activation import ActivationSteerer
    from wsteer.steering.weight import WeightSteerer

    model, tok, vectors, activations = reference
    steerings = [("weight", {}), ("weight", {"sycophancy": -2}), ("activation", {"sycophancy": -2}),
                 ("activation", {"evil": 3}), ("activation", {"sycophancy": -2, "evil": 1.5}), ("weight", {"evil": 3})]
    requests = [(QUESTIONS[i % len(QUESTIONS)], *steerings[i % len(steerings)]) for i in range(12)]
    client = server.client()

    def send(req):
        question, method, steer = req
        return ask(client, question, extra_body={"steer": steer, "method": method} if steer else None)

    base_before = [ask(client, q) for q in QUESTIONS[:4]]
    together, alone = together_and_alone(send, requests)
    assert together == alone
    assert len(set(alone[:6])) == 6  # six steerings, six answers: weight and activation at the same k differ too
    # the base model is what it was: no hooks and no weight edit outlived its batch
    assert [ask(client, q) for q in QUESTIONS[:4]] == base_before
    # each equals wsteer's own generate under the same steering, in this process (a composition: nested applies)
    for (question, method, steer), got in zip(requests, alone, strict=True):
        conv = [[{"role": "user", "content": question}]]
        with contextlib.ExitStack() as stack:
            for name, k in steer.items():
                steerer = (ActivationSteerer(activations[name]) if method == "activation"
                           else WeightSteerer(vectors[name]))
                stack.enter_context(steerer.apply(model, k))
            want = generate(model, tok, conv, max_new_tokens=24, progress=False)[0]["text"]
        assert got == want, (question, method, steer)


@pytest.mark.reliability
def test_activation_batches_leave_the_model_bitwise_unchanged_and_remove_their_hooks_even_on_failure(built, reference,
                                                                                                     monkeypatch):
    from tests.conftest import assert_bitwise, snapshot
    from wsteer.models import fingerprint
    from wsteer.serving.engine import Job, Row
    from wsteer.serving.hf import HFEngine
    from wsteer.serving.schema import Sampling, Steering
    from wsteer.serving.vectors import ServedLibrary

    tmp, _ = built
    model, tok, _, _ = reference
    library = ServedLibrary(tmp / "cache", model, fingerprint(model), "tiny", behavior_model_dir=CONF / "behavior_model")
    engine = HFEngine(model, tok)
    prompt = engine.encode_chat([{"role": "user", "content": QUESTIONS[0]}])
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits
    snap = snapshot(model)

    def unchanged():
        assert_bitwise(model, snap)
        assert not any(m._forward_hooks for m in model.modules())
        with torch.no_grad():
            assert torch.equal(model(torch.tensor([prompt])).logits, logits)

    answers = []
    for steering in (Steering(), Steering("activation", (("sycophancy", -2.0),)),
                     Steering("activation", (("evil", 1.5), ("sycophancy", -2.0))),
                     Steering("weight", (("sycophancy", -2.0),))):
        steerer, k = library.resolve(steering)
        job = Job(steering, steerer, k, Sampling(0.0), [Row(list(prompt), 8)], sink=lambda ev: None)
        answers.append(engine._generate([job])[0][0]["text"])
        unchanged()
    assert all(a != answers[0] for a in answers[1:])  # each steering really steered
    monkeypatch.setattr(model, "generate", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    steerer, k = library.resolve(Steering("activation", (("sycophancy", -2.0),)))
    with pytest.raises(RuntimeError, match="boom"):
        engine._generate([Job(Steering("activation", (("sycophancy", -2.0),)), steerer, k, Sampling(0.0),
                              [Row(list(prompt), 8)], sink=lambda ev: None)])
    monkeypatch.undo()
    unchanged()


def test_streaming_yields_the_same_text_as_a_plain_request(server):
    client = server.client()
    for question, model in [(QUESTIONS[0], "tiny"), (QUESTIONS[1], "sycophancy@-2"), (QUESTIONS[2], "evil@2")]:
        plain = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               temperature=0, max_tokens=24)
        chunks = list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24,
            stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == plain.choices[0].message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
        assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # it did stream
    # raw completions too, with n = 2 and a stop string taken from the answer itself
    plain = client.completions.create(model="sycophancy@-2", prompt="The plan is", temperature=0, max_tokens=24)
    full = plain.choices[0].text
    stop = next(full[i:i + 2] for i in range(3, len(full)) if full[i:i + 2].isascii() and full[i:i + 2].isalnum())
    stopped = client.completions.create(model="sycophancy@-2", prompt="The plan is", temperature=0, max_tokens=24,
                                        stop=[stop], n=2)
    assert [c.text for c in stopped.choices] == [full[: full.index(stop)]] * 2
    assert {c.finish_reason for c in stopped.choices} == {"stop"}
    streamed = client.completions.create(model="sycophancy@-2", prompt="The plan is", temperature=0, max_tokens=24,
                                         stop=[stop], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


@pytest.mark.reliability
def test_a_streaming_client_that_leaves_mid_answer_stops_its_row_and_the_server_goes_on(server):
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    body = json.dumps({"model": "sycophancy@-2", "messages": [{"role": "user", "content": QUESTIONS[1]}],
                       "temperature": 0, "max_tokens": 1500, "stream": True})
    conn.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}",
                                                        "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    while b'"delta": {"content": "' not in resp.readline():  # until the answer has begun
        pass
    resp.close()
    conn.close()  # gone mid-answer: its row stops at the next step instead of running to 1500 tokens
    deadline = time.monotonic() + 60
    while "a client left (steer=sycophancy@-2): its answer stopped after" not in server.log.read_text():
        assert time.monotonic() < deadline, "the server never noticed the client leave"
        time.sleep(0.1)
    line = next(x for x in server.log.read_text().splitlines() if "its answer stopped after" in x)
    assert int(line.split("stopped after ")[1].split()[0]) < 1500, line
    assert ask(server.client(), QUESTIONS[0], model="sycophancy@-2") is not None
    assert server.health()["queued"] == 0


def test_sampled_answers_follow_the_seed(server):
    client = server.client()

    def sample(seed):
        r = client.chat.completions.create(model="evil@1", messages=[{"role": "user", "content": QUESTIONS[5]}],
                                           temperature=0.9, top_p=0.95, seed=seed, max_tokens=16, n=3)
        return [c.message.content for c in r.choices]

    first = sample(7)
    assert len(first) == 3 and len(set(first)) > 1  # n rows sampled independently
    assert sample(7) == first  # the same seed, batched the same way (alone): the same answers


BAD = [
    # (what, openai client kwargs or raw body, expected code, words the message must hold)
    ("unknown behavior", {"model": "nosuch@-2"}, "unknown_behavior", "known behaviors"),
    ("non-finite k in the alias", {"model": "sycophancy@inf"}, "invalid_k", "finite"),
    ("non-finite k in steer", b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], '
                              b'"steer": {"sycophancy": NaN}}', "invalid_k", "finite"),
    ("a string k", {"model": "tiny", "extra_body": {"steer": {"sycophancy": "-2"}}}, "invalid_k", "number"),
    ("vector for another base model", {"model": "french@-1"}, "vector_for_other_model", "python train.py behavior=french"),
    ("vector not built", {"model": "refusal@-1"}, "vector_not_built", "python train.py behavior=refusal model=tiny"),
    ("task vector not in the library", {"model": "tiny", "extra_body": {"steer": {"refusal": 1}, "method": "task_vector_pos"}},
     "vector_not_built", "python train.py behavior=refusal"),
    ("activation vector not in the library", {"model": "tiny", "extra_body": {"steer": {"refusal": 1},
                                                                              "method": "activation"}},
     "vector_not_built", "no 'refusal' activation vector in the library for the served model tiny"),
    ("activation vector not built, the command", {"model": "tiny", "extra_body": {"steer": {"refusal": 1},
                                                                                   "method": "activation"}},
     "vector_not_built", "python train.py behavior=refusal model=tiny source=activation"),
    ("method not served", {"model": "sycophancy@-2", "extra_body": {"method": "bias"}}, "invalid_value", "method"),
    ("unknown model", {"model": "gpt-4"}, "model_not_found", "sycophancy"),
    ("steering given twice", {"model": "sycophancy@-2", "extra_body": {"steer": {"evil": 1}}}, "invalid_value", "twice"),
    ("misspelled steer", {"model": "tiny", "extra_body": {"steering": {"sycophancy": -2}}}, "unknown_field", '"steer"'),
    ("malformed JSON", b'{"model": "tiny", "messages": [', "invalid_json", "not valid JSON"),
    ("body not an object", b'[1, 2]', "invalid_body", "JSON object"),
    ("no messages", b'{"model": "tiny"}', "invalid_value", "messages"),
    ("bad role", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "invalid_value", "role"),
    ("temperature out of range", {"model": "tiny", "temperature": 7}, "invalid_value", "temperature"),
    ("logprobs", {"model": "tiny", "logprobs": True}, "unsupported_field", "logprobs"),
    ("context too long", {"model": "tiny", "max_tokens": 5000}, "context_length_exceeded", "context length"),
    ("n too large", {"model": "tiny", "n": 17}, "invalid_value", '"n" must be between 1 and 16'),
]


@pytest.mark.reliability
@pytest.mark.parametrize("what,request_,code,words", BAD, ids=[b[0] for b in BAD])
def test_each_bad_request_gets_a_400_and_the_next_good_request_succeeds(server, what, request_, code, words):
    if isinstance(request_, bytes):
        status, body = server.post("/v1/chat/completions", request_)
        err = body["error"]
    else:
        kwargs = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, **request_}
        with pytest.raises(openai.BadRequestError) as info:
            server.client().chat.completions.create(**kwargs)
        status, err = info.value.status_code, info.value.body
    assert status == 400
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["code"] == code and words in err["message"], err
    assert ask(server.client(), QUESTIONS[0], model="sycophancy@-2", max_tokens=4) is not None


@pytest.mark.reliability
def test_a_completions_request_asking_for_more_answers_than_a_batch_holds_is_refused(server):
    with pytest.raises(openai.BadRequestError, match=r"9 prompt\(s\) × n=4 is 36 answers"):
        server.client().completions.create(model="tiny", prompt=["a"] * 9, n=4, max_tokens=2)
    assert server.client().completions.create(model="tiny", prompt=["a"] * 8, n=4, max_tokens=2).choices[31]


def test_models_lists_the_base_and_the_library_vectors_with_their_manifests(server, built):
    listing = server.client().models.list()
    by_id = {m.id: m.model_extra["wsteer"] for m in listing.data}
    assert list(by_id) == ["tiny", "evil", "sycophancy"]
    assert by_id["tiny"]["kind"] == "base"
    syc = by_id["sycophancy"]
    assert syc["behavior"] == "sycophancy" and syc["base_fingerprint"] == by_id["tiny"]["fingerprint"]
    assert syc["norm"] > 0 and syc["data_hash"] and syc["created"] and syc["schedule"]["name"] == "smoke"
    assert syc["methods"] == ["weight", "task_vector_pos", "task_vector_neg", "activation"]
    n_layers = OmegaConf.load(CONF / "model" / "tiny.yaml").num_layers
    assert syc["activation"]["layer"] == n_layers // 2 and syc["activation"]["positions"] == "last"  # as steer.py
    assert syc["activation"]["norm"] > 0 and syc["activation"]["data_hash"] == syc["data_hash"]
    assert syc["usage"]["model"] == "sycophancy@-2"
    other = listing.model_extra["other_base_vectors"]
    assert [o["behavior"] for o in other] == ["french"] and "python train.py behavior=french" in other[0]["why_not"]


@pytest.mark.reliability
def test_the_api_key_is_required_and_never_logged(server):
    with pytest.raises(openai.AuthenticationError) as info:
        ask(server.client(key="wrong"), QUESTIONS[0])
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    status, body = server.post("/v1/chat/completions", b"{}", key=None)
    assert status == 401
    ask(server.client(), QUESTIONS[0], max_tokens=2)
    assert server.health()["status"] == "ok"  # /health needs no key
    logged = server.log.read_text()
    assert "POST /v1/chat/completions 401" in logged and "POST /v1/chat/completions 200" in logged
    assert KEY not in logged
    for f in server.hydra_dir.rglob("*"):
        assert not f.is_file() or KEY not in f.read_text(errors="replace"), f


@pytest.mark.reliability
def test_bad_settings_are_refused_before_the_model_loads(tmp_path):
    from wsteer.errors import WsteerError
    from wsteer.recipes import serve as serve_recipe

    for override, words in [("backend=nope", "unknown"),
                            ("port=70000", "port must be"), ("max_n=64", r"max_n \(64\) must not exceed"),
                            ("activation.positions=middle", "activation.positions must be one of last, all"),
                            ("activation.layer=0", "activation.layer must be a layer number")]:
        cfg = compose_cfg("serve", tmp_path, ["debug=smoke", "logger=none", override])
        with pytest.raises(WsteerError, match=words):
            serve_recipe.run(cfg)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(WsteerError, match="cannot listen on 127.0.0.1"):
            serve_recipe.bind("127.0.0.1", busy.getsockname()[1])


# -- the page at /, in a real headless Chromium driven through chromedriver's W3C WebDriver HTTP API --

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


class Browser:
    """Just enough WebDriver (JSON over HTTP, stdlib only) to load a page, type, click, read the DOM and screenshot."""

    def __init__(self, profile: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.2)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1400,1000"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        self.session = "/session/" + self.call("POST", "/session", caps)["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.read()[:500]!r}") from None

    def find(self, css: str) -> str:
        return self.call("POST", f"{self.session}/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css: str, text: str) -> None:
        el = self.find(css)
        self.call("POST", f"{self.session}/element/{el}/clear", {})
        self.call("POST", f"{self.session}/element/{el}/value", {"text": text})

    def script(self, js: str):
        return self.call("POST", f"{self.session}/execute/sync", {"script": js, "args": []})

    def wait_for(self, js: str, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while not self.script(js):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {js}")
            time.sleep(0.2)

    def close(self) -> None:
        try:
            self.call("DELETE", self.session)
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_the_page_compares_answers_at_several_k_in_a_real_browser(server, tmp_path):
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("POST", f"{browser.session}/url", {"url": server.url + "/"})
        browser.type("#api-key", KEY)
        browser.type("#prompt", QUESTIONS[3])  # moving focus fires the key field's change: the list reloads
        browser.wait_for("return document.body.dataset.ready === 'true' && "
                         "document.querySelectorAll('#behavior option').length === 2")
        browser.script("document.getElementById('behavior').value = 'sycophancy';")
        browser.type("#ks", "-2, 0, 3")
        browser.type("#max-tokens", "24")
        browser.call("POST", f"{browser.session}/element/{browser.find('input[value=task_vector_pos]')}/click", {})
        browser.call("POST", f"{browser.session}/element/{browser.find('#submit')}/click", {})
        browser.wait_for("return document.body.dataset.state === 'done'")
        answers = browser.script("return [...document.querySelectorAll('.answer')].map(e => "
                                 "({k: Number(e.dataset.k), method: e.dataset.method, state: e.dataset.state, "
                                 "text: e.textContent}))")
        png = base64.b64decode(browser.call("GET", f"{browser.session}/screenshot"))
    finally:
        browser.close()
    (tmp_path / "page.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert [(a["method"], a["k"]) for a in answers] == [
        ("base", 0), ("weight", -2), ("weight", 3), ("task_vector_pos", -2), ("task_vector_pos", 3)]
    assert {a["state"] for a in answers} == {"done"}
    client = server.client()
    for a in answers:
        extra = {} if a["method"] == "base" else {"steer": {"sycophancy": a["k"]}, "method": a["method"]}
        assert a["text"] == ask(client, QUESTIONS[3], extra_body=extra or None), a


def test_serving_bench_smoke(monkeypatch, tmp_path):
    from bench import serve as serve_bench

    out = tmp_path / "serve.json"
    monkeypatch.setattr(sys, "argv", [serve_bench.__file__, "--arch", "tiny", "--requests", "8", "--clients", "1,4",
                                      "--single-client-requests", "2", "--max-new-tokens", "4", "--json", str(out)])
    serve_bench.main()
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"offline_generate_bs32", "server_c1", "server_c4", "server_c4_mixed_k"}
    # greedy: every served answer is the offline answer, single-k and mixed-k alike
    assert all(r["agree"] == 1.0 for name, r in rows.items() if name.startswith("server"))
    assert rows["server_c4"]["tok_per_s"] > 0 and rows["server_c4_mixed_k"]["ks"] == "-2,0,2,4"
