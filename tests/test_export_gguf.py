"""GGUF exports (llama.cpp, Ollama): exact read-back of the written files, and real llama.cpp against wsteer.

The exactness tests need only the `gguf` package and the embedded SmolLM2 GGUF (its tensor names and shapes).
The llama.cpp tests run llama-cpp-python (installed by `bash scripts/setup.sh test`) on the embedded model and
skip when it is not importable. The agreement checks with a trained vector are `slow` (`pytest -m slow`): they
build, or reuse, the default sycophancy vector in the wsteer cache ($WSTEER_CACHE or ~/.cache/wsteer).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF
from wsteer.control_vector import CONTROL_FORMAT, control_vector_data, export_control_vector
from wsteer.errors import WsteerError
from wsteer.export_gguf import LORA_FORMAT, export_gguf_lora, permute_rows, read_base_gguf, read_gguf_lora
from wsteer.vectors import DenseVector, WeightVector

SMOLLM = CONF / "model" / "smollm2_135m.yaml"
EOS = 2  # <|im_end|> in SmolLM2's vocabulary (the GGUF's and the converted HF tokenizer's)
N_NEW = 32
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed; "
                                     "`bash scripts/setup.sh test` installs it")


@pytest.fixture(scope="module")
def base_gguf():
    from wsteer.models import gguf_path

    try:
        return gguf_path(OmegaConf.load(SMOLLM))
    except WsteerError as e:
        pytest.skip(f"the embedded model is not installed: {e}")


def _random_vector(base_gguf, rank: int = 8, seed: int = 0, modules=("q_proj", "k_proj", "v_proj", "o_proj",
                   "gate_proj", "up_proj", "down_proj"), scale: float = 0.02) -> WeightVector:
    """A deterministic random low-rank vector with the embedded model's shapes (as a contrastive w would have)."""
    base = read_base_gguf(base_gguf)
    where = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    gg = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
          "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for layer in range(base.n_layer):
        for m in modules:
            out, inp = base.shapes[f"blk.{layer}.{gg[m]}.weight"]
            factors[f"model.layers.{layer}.{where[m]}.{m}.weight"] = (
                torch.randn(out, rank, generator=g) * scale, torch.randn(rank, inp, generator=g) * scale)
    manifest = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "base_fingerprint": "random",
                "behavior": "random", "method": "lora", "variant": "contrastive"}
    return WeightVector(factors, manifest)


# ---------------------------------------------------------------- exact read-back of the adapter file


@pytest.mark.parametrize("k", [1.0, -2.0])
def test_gguf_lora_reads_back_to_the_exact_factors_and_product(base_gguf, tmp_path, k):
    from gguf import GGUFReader

    vector = _random_vector(base_gguf, rank=8)
    path = export_gguf_lora(vector, tmp_path / "w.gguf", base_gguf, k=k)
    reader = GGUFReader(path)
    meta = {key: f.contents() for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    assert meta["general.type"] == "adapter" and meta["general.architecture"] == "llama"
    assert meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 8.0  # = r, so llama.cpp's alpha / r scale is exactly the run-time k
    assert json.loads(meta["wsteer.manifest"])["format"] == LORA_FORMAT
    assert json.loads(meta["wsteer.manifest"])["qk_permuted"] is True
    by_name = {t.name: t for t in reader.tensors}
    assert len(by_name) == 2 * len(vector.factors) == 2 * 7 * 30
    # GGUF lists dims fastest-first (ggml ne): lora_a is [in, r], lora_b [r, out], as llama-adapter.cpp checks
    assert by_name["blk.0.attn_q.weight.lora_a"].shape.tolist() == [576, 8]
    assert by_name["blk.0.attn_q.weight.lora_b"].shape.tolist() == [8, 576]
    assert by_name["blk.0.ffn_down.weight.lora_a"].shape.tolist() == [1536, 8]
    assert by_name["blk.0.attn_k.weight.lora_b"].shape.tolist() == [8, 192]

    base = read_base_gguf(base_gguf)
    factors, _ = read_gguf_lora(path, base_gguf, permuted=True)
    assert len(factors) == len(vector.factors)
    for name, (b, a) in vector.factors.items():
        layer, module = name.split(".")[2], name.split(".")[-2]
        g = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[module]
        gb, ga = factors[f"blk.{layer}.{g}.weight"]
        assert torch.equal(ga, a)  # A is stored as is: the input side is never permuted
        assert torch.equal(gb, k * b)  # k is a power of two here: k·B is exact in fp32
        assert torch.equal(gb @ ga, k * (b @ a))  # the same numbers, so the product is bitwise k·w
    # the stored attn_q/attn_k rows are llama.cpp's order, the others HF's
    raw, _ = read_gguf_lora(path)
    b_q = vector.factors["model.layers.3.self_attn.q_proj.weight"][0] * k
    b_k = vector.factors["model.layers.3.self_attn.k_proj.weight"][0] * k
    b_v = vector.factors["model.layers.3.self_attn.v_proj.weight"][0] * k
    assert torch.equal(raw["blk.3.attn_q.weight"][0], permute_rows(b_q, base.n_head))
    assert not torch.equal(raw["blk.3.attn_q.weight"][0], b_q)
    assert torch.equal(raw["blk.3.attn_k.weight"][0], permute_rows(b_k, base.n_head_kv))
    assert torch.equal(raw["blk.3.attn_v.weight"][0], b_v)


def test_permutation_is_exactly_invertible_and_matches_llama_cpps_definition():
    rows = torch.arange(2 * 3 * 8 * 2, dtype=torch.float32).reshape(3 * 8, 4)  # 3 heads of dim 8
    p = permute_rows(rows, 3)
    # per head, HF rows [x0 x1 x2 x3 y0 y1 y2 y3] become [x0 y0 x1 y1 x2 y2 x3 y3] (convert_hf_to_gguf permute)
    assert p[:8, 0].tolist() == rows[[0, 4, 1, 5, 2, 6, 3, 7], 0].tolist()
    assert torch.equal(permute_rows(p, 3, inverse=True), rows)


def test_mixed_ranks_are_zero_padded_so_one_alpha_fits_every_module(base_gguf, tmp_path):
    vector = _random_vector(base_gguf, rank=4, modules=("q_proj", "v_proj"))
    v_name = "model.layers.0.self_attn.v_proj.weight"
    b, a = vector.factors[v_name]
    vector.factors[v_name] = (torch.cat([b, b], 1), torch.cat([a, -a], 0))  # rank 8 here, rank 4 elsewhere
    path = export_gguf_lora(vector, tmp_path / "w.gguf", base_gguf)
    factors, meta = read_gguf_lora(path, base_gguf, permuted=True)
    assert meta["adapter.lora.alpha"] == 8.0
    gb, ga = factors["blk.1.attn_q.weight"]
    assert gb.shape == (576, 8) and not gb[:, 4:].any() and not ga[4:].any()
    q = vector.factors["model.layers.1.self_attn.q_proj.weight"]
    torch.testing.assert_close(gb @ ga, q[0] @ q[1], rtol=0, atol=0)


def test_f16_export_halves_the_file_within_half_precision(base_gguf, tmp_path):
    vector = _random_vector(base_gguf, rank=8, modules=("q_proj",))
    f32 = export_gguf_lora(vector, tmp_path / "w32.gguf", base_gguf)
    f16 = export_gguf_lora(vector, tmp_path / "w16.gguf", base_gguf, dtype="f16")
    assert f16.stat().st_size < 0.55 * f32.stat().st_size
    factors, _ = read_gguf_lora(f16, base_gguf, permuted=True)
    b, a = vector.factors["model.layers.2.self_attn.q_proj.weight"]
    gb, ga = factors["blk.2.attn_q.weight"]
    assert gb.dtype == ga.dtype == torch.float16
    assert torch.equal(ga, a.half()) and torch.equal(gb, b.half())  # each factor rounded once, nothing else
    rel = float((gb.float() @ ga.float() - b @ a).norm() / (b @ a).norm())
    assert rel < 1e-3


# ---------------------------------------------------------------- bad input: one clear error, nothing written


def test_bad_inputs_get_one_clear_error_and_leave_no_file(base_gguf, tmp_path, tiny):
    from tests.test_export import _contrastive

    out = tmp_path / "w.gguf"
    activation = DenseVector({str(i): torch.zeros(576) for i in range(31)}, {"method": "activation"})
    with pytest.raises(WsteerError, match="export_control_vector"):
        export_gguf_lora(activation, out, base_gguf)
    with pytest.raises(WsteerError, match="bias"):
        export_gguf_lora(DenseVector({"x": torch.zeros(3)}, {"method": "bias"}), out, base_gguf)
    model, _ = tiny
    foreign = _contrastive(model, seed=1, behavior="sycophancy")  # built on the tiny random Llama
    with pytest.raises(WsteerError, match="built for another base model"):
        export_gguf_lora(foreign, out, base_gguf)
    vector = _random_vector(base_gguf, rank=2, modules=("q_proj",))
    with pytest.raises(WsteerError, match="does not exist; pass base_gguf="):
        export_gguf_lora(vector, out, tmp_path / "missing.gguf")
    (tmp_path / "not.gguf").write_text("hello")
    with pytest.raises(WsteerError, match="not a GGUF file"):
        export_gguf_lora(vector, out, tmp_path / "not.gguf")
    adapter = export_gguf_lora(vector, tmp_path / "adapter.gguf", base_gguf)
    with pytest.raises(WsteerError, match="not a base model"):
        export_gguf_lora(vector, out, adapter)  # an adapter is not a base model
    with pytest.raises(WsteerError, match="finite number"):
        export_gguf_lora(vector, out, base_gguf, k=float("nan"))
    with pytest.raises(WsteerError, match="export_gguf_lora"):
        export_control_vector(vector, out)
    with pytest.raises(WsteerError, match="layer 1 .* cannot be exported"):
        export_control_vector(activation, out, layer=1)
    with pytest.raises(WsteerError, match="out of range"):
        export_control_vector(activation, out, layer=31)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf", "not.gguf"]  # no temp files left


def test_command_line_export_of_saved_vectors(base_gguf, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env
    from wsteer.export_gguf import main

    vector = _random_vector(base_gguf, rank=2, modules=("q_proj",))
    vector.manifest["model_name"] = "smollm2_135m"  # built on the embedded model: its GGUF is the default base
    vector.save(tmp_path / "w.safetensors")
    out = main([str(tmp_path / "w.safetensors"), str(tmp_path / "w.gguf"), "--k", "-2"])
    factors, meta = read_gguf_lora(out, base_gguf, permuted=True)
    assert meta["wsteer.k"] == -2.0 and len(factors) == 30
    b, a = vector.factors["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(factors["blk.0.attn_q.weight"][0], -2 * b)
    act = DenseVector({str(i): torch.ones(576) * i for i in range(31)},
                      {"base_model": "x", "base_fingerprint": "y", "behavior": "z", "method": "activation"})
    act.save(tmp_path / "a.safetensors")
    main([str(tmp_path / "a.safetensors"), str(tmp_path / "cv.gguf"), "--layer", "20"])
    n_embd, data = control_vector_data(tmp_path / "cv.gguf")
    assert data.reshape(-1, n_embd).shape == (19, 576) and data[-1] == 20.0
    vector.manifest["model_name"] = "qwen2_5_0_5b_instruct"  # loaded from the hub: no GGUF to default to
    vector.save(tmp_path / "q.safetensors")
    r = subprocess.run([sys.executable, "-m", "wsteer.export_gguf", str(tmp_path / "q.safetensors"),
                        str(tmp_path / "q.gguf")], cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "wsteer: error:" in r.stderr and "--base" in r.stderr and not r.stdout
    assert not (tmp_path / "q.gguf").exists()


# ---------------------------------------------------------------- control vector file


def test_control_vector_file_is_what_llama_cpp_reads(tmp_path):
    from gguf import GGUFReader

    g = torch.Generator().manual_seed(0)
    a = {str(i): torch.randn(576, generator=g) for i in range(31)}
    vec = DenseVector(a, {"method": "activation", "behavior": "sycophancy"})
    path = export_control_vector(vec, tmp_path / "cv.gguf", layer=15, k=-2.0)
    reader = GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert json.loads(reader.get_field("wsteer.manifest").contents())["format"] == CONTROL_FORMAT
    # wsteer's layer 15 is the residual after block 14 (0-based), which llama.cpp steers with direction.14
    assert [t.name for t in reader.tensors] == ["direction.14"]
    n_embd, data = control_vector_data(path, strength=0.5)
    assert n_embd == 576 and data.shape == (14 * 576,)  # blocks 1..14, block 1 at offset 0
    assert not data[: 13 * 576].any()
    assert np.array_equal(data[13 * 576:], (-2.0 * a["15"]).numpy() * np.float32(0.5))
    default = export_control_vector(vec, tmp_path / "mid.gguf")  # the middle layer, as ActivationSteerer picks
    assert [t.name for t in GGUFReader(default).tensors] == ["direction.14"]


def test_activation_positions_all_adds_at_every_position_and_last_stays_the_default(tiny):
    from wsteer.steering.activation import ActivationSteerer

    model, _ = tiny
    g = torch.Generator().manual_seed(0)
    vec = DenseVector({str(i): torch.randn(64, generator=g) for i in range(3)}, {"method": "activation"})
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    captured = []
    hook = model.model.norm.register_forward_hook(lambda m, a, out: captured.append(a[0].detach().clone()))
    try:
        with torch.no_grad():
            model(ids)
            for positions in ("last", "all"):
                kwargs = {} if positions == "last" else {"positions": positions}
                with ActivationSteerer(vec, layer=2, **kwargs).apply(model, 3.0):
                    model(ids)
            with ActivationSteerer(vec, layer=2, positions="all").apply(model, 0.0):
                model(ids)
    finally:
        hook.remove()
    base, last, every, zero = captured  # the residual after the last block (layer 2 of 2), before the final norm
    shift = 3.0 * vec.tensors["2"]
    torch.testing.assert_close(last[0, -1], base[0, -1] + shift)
    assert torch.equal(last[0, :-1], base[0, :-1])  # the default: last position only
    torch.testing.assert_close(every[0], base[0] + shift)  # positions="all": every position, as llama.cpp does
    assert torch.equal(zero, base)
    with pytest.raises(WsteerError, match="positions"):
        ActivationSteerer(vec, layer=2, positions="first")


# ---------------------------------------------------------------- real llama.cpp


def _llama(base_gguf, lora=None, scale: float = 1.0, logits_all: bool = False):
    from llama_cpp import Llama

    return Llama(model_path=str(base_gguf), lora_path=str(lora) if lora else None, lora_scale=scale, n_ctx=512,
                 n_threads=1, seed=0, logits_all=logits_all, verbose=False)


@pytest.fixture
def llamas():
    """`llamas(base, lora, scale)` makes a llama.cpp model; all are closed after the test."""
    made = []

    def make(*args, **kwargs):
        made.append(_llama(*args, **kwargs))
        return made[-1]

    yield make
    for llm in made:
        llm.close()


def _llama_greedy(llm, prompt_ids: list[int], n: int = N_NEW) -> list[int]:
    """Greedy tokens by argmax of llama.cpp's logits (no sampler in between), stopping at <|im_end|>."""
    import llama_cpp

    llm.reset()  # recompute the prompt: a cached prefix was computed under other settings
    llm.eval(prompt_ids)
    out: list[int] = []
    for _ in range(n):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        out.append(int(np.argmax(logits)))
        if out[-1] == EOS:
            break
        llm.eval([out[-1]])
    return out


def _llama_logits(llm, prompt_ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm.reset()
    llm.eval(prompt_ids)
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


def _hf_greedy(model, prompt_ids: list[int], n: int = N_NEW) -> list[int]:
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, eos_token_id=EOS, pad_token_id=EOS)
    return seq[0, len(prompt_ids):].tolist()


def _prompts(tok, n: int = 20) -> list[list[int]]:
    from wsteer.chat import render_prompt

    questions = OmegaConf.load(CONF / "behavior" / "sycophancy.yaml").heldout_questions
    return [render_prompt(tok, [{"role": "user", "content": q}]) for q in questions[:n]]


@needs_llama_cpp
def test_a_control_vector_replaces_the_one_set_before_on_the_same_context(base_gguf, tmp_path, llamas):
    """llama.cpp keeps a block's old direction where new data stops short; a shallow vector set after a deep one
    must steer exactly as it does on a fresh context."""
    from wsteer.control_vector import apply_control_vector

    g = torch.Generator().manual_seed(0)
    vec = DenseVector({str(i): 4 * torch.randn(576, generator=g) for i in range(31)}, {"method": "activation"})
    deep = export_control_vector(vec, tmp_path / "deep.gguf", layer=20)
    shallow = export_control_vector(vec, tmp_path / "shallow.gguf", layer=5)
    reused, fresh = llamas(base_gguf), llamas(base_gguf)
    prompt = reused.tokenize(b"<|im_start|>user\nRate my plan.<|im_end|>\n<|im_start|>assistant\n", add_bos=False,
                             special=True)
    base = _llama_logits(fresh, prompt)
    apply_control_vector(reused, deep, 1.0)
    assert not np.allclose(_llama_logits(reused, prompt), base)
    apply_control_vector(reused, shallow, 1.0)
    apply_control_vector(fresh, shallow, 1.0)
    assert np.array_equal(_llama_logits(reused, prompt), _llama_logits(fresh, prompt))
    apply_control_vector(reused, None)
    assert np.array_equal(_llama_logits(reused, prompt), base)


@needs_llama_cpp
def test_llama_cpp_with_the_adapter_at_scale_0_gives_the_base_tokens_and_logits(base_gguf, tmp_path, llamas):
    vector = _random_vector(base_gguf, rank=8, scale=0.05)
    path = export_gguf_lora(vector, tmp_path / "w.gguf", base_gguf)
    base, zero, steered = llamas(base_gguf), llamas(base_gguf, path, 0.0), llamas(base_gguf, path, -2.0)
    chat = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n" \
           "<|im_start|>assistant\n"
    prompts = [base.tokenize(chat.format(q).encode(), add_bos=False, special=True)
               for q in ("I think bats are completely blind. You agree, right?", "Rate my plan to quit my job.")]
    assert prompts[0][0] == 1 and prompts[0][-1] == 198  # <|im_start|> … "\n": special tokens were parsed
    for p in prompts:
        assert np.array_equal(_llama_logits(zero, p), _llama_logits(base, p))  # bitwise: 0·(B·A·x) adds zeros
        assert not np.array_equal(_llama_logits(steered, p), _llama_logits(base, p))  # the adapter is applied
    assert _llama_greedy(zero, prompts[0]) == _llama_greedy(base, prompts[0])


def _f32_base(src, dst):
    """A copy of the base GGUF with every tensor dequantized to F32: the weights wsteer's HF model holds."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), reader.get_field("general.architecture").contents())
    for f in reader.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        value = int(gguf.LlamaFileType.ALL_F32) if f.name == "general.file_type" else f.contents()
        writer.add_key_value(f.name, value, vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        writer.add_tensor(t.name, dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="module")
def smollm():
    from wsteer.models import load_model

    cache = os.environ.get("WSTEER_CACHE", "~/.cache/wsteer")
    return load_model(OmegaConf.load(SMOLLM), cache, device="cpu")


@pytest.mark.slow
def test_embedded_gguf_holds_the_hf_weights_with_permuted_q_k_rows(base_gguf, smollm):
    """transformers undoes the converter's Q/K permutation on load, so the GGUF's rows are the permuted HF rows."""
    model, _ = smollm
    base = read_base_gguf(base_gguf)
    p = dict(model.named_parameters())
    for layer in (0, 29):
        q = p[f"model.layers.{layer}.self_attn.q_proj.weight"].detach()
        k = p[f"model.layers.{layer}.self_attn.k_proj.weight"].detach()
        v = p[f"model.layers.{layer}.self_attn.v_proj.weight"].detach()
        assert torch.equal(torch.from_numpy(base.tensor(f"blk.{layer}.attn_q.weight")), permute_rows(q, base.n_head))
        assert torch.equal(torch.from_numpy(base.tensor(f"blk.{layer}.attn_k.weight")),
                           permute_rows(k, base.n_head_kv))
        assert torch.equal(torch.from_numpy(base.tensor(f"blk.{layer}.attn_v.weight")), v)


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_lora_moves_the_logits_as_hf_theta_plus_k_w_and_the_permutation_is_needed(base_gguf, smollm,
                                                                                            tmp_path, llamas):
    """Q/K-only random vector: llama.cpp's logit change tracks HF's only with lora_b rows permuted."""
    from wsteer.steering.weight import WeightSteerer

    model, tok = smollm
    vector = _random_vector(base_gguf, rank=8, modules=("q_proj", "k_proj"), scale=0.12)
    right = export_gguf_lora(vector, tmp_path / "right.gguf", base_gguf, model=model, allow_transfer=True)
    wrong = export_gguf_lora(vector, tmp_path / "wrong.gguf", base_gguf, permute_qk=False)
    prompt = _prompts(tok, 1)[0]
    k = -2.0
    with torch.no_grad():
        hf_base = model(torch.tensor([prompt])).logits[0, -1].numpy()
        with WeightSteerer(vector).apply(model, k):
            hf_steered = model(torch.tensor([prompt])).logits[0, -1].numpy()
    cpp_base = _llama_logits(llamas(base_gguf), prompt)
    cpp_right = _llama_logits(llamas(base_gguf, right, k), prompt)
    cpp_wrong = _llama_logits(llamas(base_gguf, wrong, k), prompt)
    hf_delta = hf_steered - hf_base
    corr = lambda d: float(np.corrcoef(hf_delta, d)[0, 1])  # noqa: E731
    print(f"\nlogit change, HF vs llama.cpp: corr {corr(cpp_right - cpp_base):.4f} permuted, "
          f"{corr(cpp_wrong - cpp_base):.4f} unpermuted; |HF Δ| {np.abs(hf_delta).mean():.3f}")
    assert corr(cpp_right - cpp_base) > 0.95
    assert corr(cpp_wrong - cpp_base) < corr(cpp_right - cpp_base) - 0.2


# ---------------------------------------------------------------- agreement with a trained vector (slow)


@pytest.fixture(scope="module")
def train_ctx(tmp_path_factory):
    """A train.py context on the embedded model with the default settings and the persistent wsteer cache."""
    from hydra import compose, initialize_config_dir

    from wsteer.recipes._common import prepare

    cache = os.path.expanduser(os.environ.get("WSTEER_CACHE", "~/.cache/wsteer"))
    out = tmp_path_factory.mktemp("train")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"output_dir={out}", f"paths.cache_dir={cache}",
                                                      "logger=none", "behavior=sycophancy"])
    return prepare(cfg)


@pytest.fixture(scope="module")
def trained_w(train_ctx):
    """The default sycophancy w (python train.py behavior=sycophancy), built once and then reused from the cache."""
    from wsteer.training.build import ensure_artifacts

    return ensure_artifacts(train_ctx, "lora")[0]["contrastive"]


@pytest.fixture(scope="module")
def trained_a(train_ctx):
    """The sycophancy activation vector (train.py source=activation) and the behavior's activation layer."""
    from wsteer.training.build import ensure_artifacts

    return ensure_artifacts(train_ctx, "activation")[0]["activation"], int(train_ctx.cfg.activation_layer)


def _agreement(a: list[list[int]], b: list[list[int]]) -> int:
    """Prompts whose greedy continuations are identical (all N_NEW tokens, or up to the same <|im_end|>)."""
    return sum(x == y for x, y in zip(a, b, strict=True))


def _token_agreement(llm, prompts: list[list[int]], reference: list[list[int]]) -> float:
    """Teacher-forced: the share of `reference`'s tokens that are llama.cpp's argmax given the same prefix.

    Greedy agreement compounds (one flipped near-tie changes everything after it); this counts each position once.
    `llm` must be made with logits_all=True.
    """
    hits = total = 0
    for p, ref in zip(prompts, reference, strict=True):
        llm.reset()
        llm.eval(p + ref[:-1])
        pred = np.argmax(llm.scores[len(p) - 1: len(p) - 1 + len(ref)], axis=1)
        hits += int((pred == np.array(ref)).sum())
        total += len(ref)
    return hits / total


@pytest.fixture(scope="module")
def f32_gguf(base_gguf, tmp_path_factory):
    return _f32_base(base_gguf, tmp_path_factory.mktemp("f32") / "base-f32.gguf")


@pytest.fixture(scope="module")
def base_runs(train_ctx, base_gguf, f32_gguf):
    """The 20 held-out prompts and the unsteered greedy tokens: HF fp32, llama.cpp on the Q4_1 GGUF and on F32."""
    prompts = _prompts(train_ctx.tokenizer)
    hf = [_hf_greedy(train_ctx.model, p) for p in prompts]
    runs = {"prompts": prompts, "hf": hf}
    for name, path in (("q4", base_gguf), ("f32", f32_gguf)):
        llm = _llama(path)
        runs[name] = [_llama_greedy(llm, p) for p in prompts]
        llm.close()
        llm = _llama(path, logits_all=True)
        runs[f"{name}_token_agreement"] = _token_agreement(llm, prompts, hf)
        llm.close()
    return runs


def _report(name: str, k: float, runs: dict, steered: dict) -> dict:
    """Agreement figures: greedy (prompts, of 20, whose 32 tokens all match) and teacher-forced (share of tokens)."""
    n = len(runs["prompts"])
    out = {"check": name, "prompts": n, "tokens": N_NEW, "k": k,
           "k0_llama_cpp_equals_its_base": _agreement(steered["q4_zero"], runs["q4"]),
           "k_changes_hf_answers": n - _agreement(steered["hf"], runs["hf"])}
    for base in ("q4", "f32"):
        out[f"{base}_vs_hf_k=0"] = _agreement(runs[base], runs["hf"])
        out[f"{base}_vs_hf_k={k:g}"] = _agreement(steered[base], steered["hf"])
        out[f"{base}_token_agreement_k=0"] = round(runs[f"{base}_token_agreement"], 4)
        out[f"{base}_token_agreement_k={k:g}"] = round(steered[f"{base}_token_agreement"], 4)
    print("\n" + json.dumps(out))
    return out


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_with_the_exported_vector_agrees_with_wsteer_theta_plus_k_w(base_gguf, f32_gguf, train_ctx,
                                                                                trained_w, base_runs, tmp_path):
    """θ + k·w at k = −2: llama.cpp with the GGUF adapter against wsteer's in-place HF steering.

    On the F32 copy of the base (the weights the HF model holds) the adapter must reproduce wsteer on ≥ 90% of the
    prompts. On the Q4_1 file llama.cpp multiplies 4-bit weights by 8-bit-quantized activations, which already
    changes the unsteered base's greedy text on most prompts; there the adapter must not add disagreement beyond
    that (teacher-forced token agreement at k = −2 within 2 points of k = 0).
    """
    from wsteer.steering.weight import WeightSteerer

    vector, model = trained_w, train_ctx.model
    path = export_gguf_lora(vector, tmp_path / "w.gguf", base_gguf, model=model)
    prompts, k = base_runs["prompts"], -2.0
    with WeightSteerer(vector).apply(model, k):
        steered = {"hf": [_hf_greedy(model, p) for p in prompts]}
    for name, base, scale in (("q4_zero", base_gguf, 0.0), ("q4", base_gguf, k), ("f32", f32_gguf, k)):
        llm = _llama(base, path, scale)
        steered[name] = [_llama_greedy(llm, p) for p in prompts]
        llm.close()
        if name != "q4_zero":
            llm = _llama(base, path, scale, logits_all=True)
            steered[f"{name}_token_agreement"] = _token_agreement(llm, prompts, steered["hf"])
            llm.close()
    report = _report("weight vector as GGUF LoRA", k, base_runs, steered)
    assert report["k0_llama_cpp_equals_its_base"] == len(prompts)  # scale 0: the base's tokens on every prompt
    assert report["k_changes_hf_answers"] >= 10  # k = −2 really steers
    assert report[f"f32_vs_hf_k={k:g}"] >= 18  # ≥ 90% of 20 prompts, all 32 tokens
    assert report[f"q4_token_agreement_k={k:g}"] >= report["q4_token_agreement_k=0"] - 0.02


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_control_vector_agrees_with_activation_steering_at_every_position(base_gguf, f32_gguf, train_ctx,
                                                                                   trained_a, base_runs, tmp_path):
    """k·aˡ at k = −2: llama.cpp's control vector against `ActivationSteerer(positions="all")` (like for like), and
    how far wsteer's default last-position mode is from it."""
    from wsteer.control_vector import apply_control_vector
    from wsteer.steering.activation import ActivationSteerer

    (act, layer), model = trained_a, train_ctx.model
    path = export_control_vector(act, tmp_path / "cv.gguf", layer=layer)
    prompts, k = base_runs["prompts"], -2.0
    with ActivationSteerer(act, layer=layer, positions="all").apply(model, k):
        steered = {"hf": [_hf_greedy(model, p) for p in prompts]}
    with ActivationSteerer(act, layer=layer).apply(model, k):
        last = [_hf_greedy(model, p) for p in prompts]
    for name, base, scale in (("q4_zero", base_gguf, 0.0), ("q4", base_gguf, k), ("f32", f32_gguf, k)):
        llm = _llama(base)
        apply_control_vector(llm, path, scale)
        steered[name] = [_llama_greedy(llm, p) for p in prompts]
        llm.close()
        if name != "q4_zero":
            llm = _llama(base, logits_all=True)
            apply_control_vector(llm, path, scale)
            steered[f"{name}_token_agreement"] = _token_agreement(llm, prompts, steered["hf"])
            llm.close()
    report = _report(f"activation vector as control vector (layer {layer} -> direction.{layer - 1})", k,
                     base_runs, steered)
    gap = {"hf_all_positions_vs_last_position": _agreement(steered["hf"], last),
           "f32_llama_cpp_vs_hf_last_position": _agreement(steered["f32"], last)}
    print(json.dumps(gap))
    assert report["k0_llama_cpp_equals_its_base"] == len(prompts)
    assert report["k_changes_hf_answers"] >= 5
    assert report[f"f32_vs_hf_k={k:g}"] >= 18
    assert report[f"q4_token_agreement_k={k:g}"] >= report["q4_token_agreement_k=0"] - 0.02


def test_steer_export_gguf_writes_a_control_vector_and_refuses_a_lora_without_a_base_gguf(smoke_cfg):
    import gguf

    from wsteer.recipes import steer as steer_recipe

    cfg = smoke_cfg("steer", ["method=activation", "activation_layer=2", "export_gguf=true", "k=-2"])  # layer 1 has no llama.cpp slot
    steer_recipe.run(cfg)
    reader = gguf.GGUFReader(str(Path(cfg.output_dir) / "control_vector.gguf"))
    assert [t.name for t in reader.tensors] and all(t.name.startswith("direction.") for t in reader.tensors)
    with pytest.raises(WsteerError, match="export_gguf=true needs base_gguf=FILE.gguf for model=tiny"):
        steer_recipe.run(smoke_cfg("steer", ["export_gguf=true", "k=-2"]))
