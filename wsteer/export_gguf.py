"""GGUF export of a weight vector for llama.cpp and Ollama: w as a llama.cpp LoRA adapter.

**Weight vector → GGUF LoRA adapter.** A contrastive vector w = [s·B⁺, −s·B⁻] @ [A⁺; A⁻] is exactly a rank-2r
LoRA update (paper §1), so llama.cpp serves it as an ordinary adapter and computes θ + k·w with the scale given at
run time: `llama-server -m base.gguf --lora-scaled w.gguf:k`, or llama-cpp-python's
`Llama(model_path=base.gguf, lora_path=w.gguf, lora_scale=k)`. We write llama.cpp's adapter format directly,
as read by `llama_adapter_lora_init_impl` (src/llama-adapter.cpp) and written by its `convert_lora_to_gguf.py`:

- KV `general.type = "adapter"`, `general.architecture` = the base model's (llama.cpp refuses an arch mismatch),
  `adapter.type = "lora"`, `adapter.lora.alpha` (float32);
- two tensors per edited matrix, `<base GGUF tensor name>.lora_a` and `.lora_b` (e.g. `blk.3.attn_q.weight.lora_a`);
- GGUF lists dims fastest-first (ggml `ne`), the reverse of numpy/torch: lora_a has ne = [in, r] and lora_b
  ne = [r, out], which is numpy A (r × in) and B (out × r), the PEFT layout;
- llama.cpp scales the update by `alpha / r`, r read per tensor from lora_b (`llama_adapter_lora_weight::get_scale`),
  times the user's `--lora-scaled` value. We set alpha = r so that the scale is exactly k; modules of smaller rank
  (a composed vector) are zero-padded to the common r, as in `wsteer.export.export_peft_adapter`.

*Q/K rows.* llama.cpp's HF→GGUF converter permutes the output rows of `q_proj`/`k_proj` for architectures whose
RoPE rotates adjacent pairs (`LlamaModel.permute` in convert_hf_to_gguf.py / conversion/llama.py; HF rotates
halves), and transformers' GGUF loader undoes it, so wsteer's vector is in HF row order. The adapter's lora_b rows
must be permuted the same way, or the update lands on the wrong rotary dimensions. lora_a (the input side) is not
touched. Which architectures are permuted is a table below; when the HF model is at hand the permutation is also
checked on the weights themselves (the embedded SmolLM2 GGUF is permuted: its attn_q/attn_k equal the permuted
HF weights bit for bit).

Activation vectors export as llama.cpp control vectors: `wsteer.control_vector`.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsteer.artifacts import atomic_path, git_commit
from wsteer.errors import WsteerError
from wsteer.steering.k import check_k
from wsteer.vectors import DenseVector, WeightVector, load_vector

LORA_FORMAT = "wsteer.gguf_lora/1"

# Architectures whose llama.cpp conversion permutes the rows of q_proj/k_proj (LlamaModel.undo_permute = True in
# llama.cpp's conversion/llama.py; its subclasses with undo_permute = False load Meta-layout weights, which we do
# not support) and those it copies unchanged (rotate-half RoPE, LLAMA_ROPE_TYPE_NEOX in llama_model_rope_type).
# Only architectures wsteer ships configs for, or reads with transformers' GGUF loader, are listed: for another
# one, pass `permute_qk=` after checking what its converter does.
PERMUTED_QK = {"llama": True, "qwen2": False, "qwen3": False, "phi3": False, "gemma": False, "gemma2": False,
               "gemma3": False, "starcoder2": False, "stablelm": False}


@dataclass
class BaseGGUF:
    """What an export needs from the base model's GGUF: architecture, sizes and its tensors' shapes."""

    path: Path
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    shapes: dict[str, tuple[int, ...]]  # tensor name -> (out, in) in torch order (GGUF's ne reversed)
    reader: object
    _names: object = field(default=None, repr=False)  # gguf's TensorNameMap, built once (it takes ~10 ms)

    def tensor(self, name: str) -> np.ndarray:
        """A base tensor dequantized to float32, in torch order (out × in)."""
        from gguf.quants import dequantize

        t = next(t for t in self.reader.tensors if t.name == name)
        return dequantize(t.data, t.tensor_type).astype(np.float32).reshape(self.shapes[name])


def _field(reader, key: str, default=None):
    f = reader.get_field(key)
    if f is None:
        return default
    value = f.contents()
    return value.item() if hasattr(value, "item") else value


def read_base_gguf(path: str | Path) -> BaseGGUF:
    """Open a base model GGUF (memory-mapped, nothing dequantized) and read what an export checks against."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WsteerError(f"base GGUF {path} does not exist; pass base_gguf= the .gguf file llama.cpp loads "
                          "(the embedded default: wsteer.models.gguf_path(cfg.model))")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise WsteerError(f"{path} is not a GGUF file (no GGUF magic bytes); pass base_gguf= the base model's "
                              ".gguf file")
    stat = path.stat()
    return _read_base(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_base(path: str, size: int, mtime_ns: int) -> BaseGGUF:
    """Cached per (file, size, mtime): gguf-py parses the whole tokenizer (~150k KV parts, seconds) on open."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - a truncated or damaged GGUF fails in many ways inside gguf-py
        raise WsteerError(f"{path} is not a readable GGUF file ({e.__class__.__name__}: {e}); it may be "
                          "truncated — re-download or re-convert the base model") from e
    kind = _field(reader, "general.type", "model")
    arch = _field(reader, "general.architecture")
    if kind != "model" or not arch or arch == "controlvector":
        raise WsteerError(f"{path} is a GGUF {kind if kind != 'model' else arch!r} file, not a base model; pass "
                          "base_gguf= the model file that llama.cpp loads with -m")
    need = {"n_layer": "block_count", "n_embd": "embedding_length", "n_head": "attention.head_count"}
    vals = {}
    for attr, key in need.items():
        v = _field(reader, f"{arch}.{key}")
        if v is None:
            raise WsteerError(f"{path} lacks {arch}.{key}; it is not a complete {arch} model GGUF")
        vals[attr] = int(v)
    vals["n_head_kv"] = int(_field(reader, f"{arch}.attention.head_count_kv", vals["n_head"]))
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    return BaseGGUF(path=path, arch=str(arch), shapes=shapes, reader=reader, **vals)


def gguf_tensor_name(hf_name: str, base: BaseGGUF) -> str:
    """The base GGUF's name for an HF parameter (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`),
    from gguf-py's TensorNameMap: the same table llama.cpp's converters use."""
    import gguf

    if base._names is None:
        archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
        if base.arch not in archs:
            raise WsteerError(f"the installed gguf package does not know architecture {base.arch!r} of {base.path}; "
                              "upgrade it (pip install -U gguf)")
        base._names = gguf.get_tensor_name_map(archs[base.arch], base.n_layer)
    name = base._names.get_name(hf_name, try_suffixes=(".weight",))
    if name is None:
        raise WsteerError(f"the vector edits {hf_name}, which has no llama.cpp counterpart in a {base.arch} model; "
                          f"only decoder-layer weight matrices export as GGUF LoRA (wrong base_gguf=?)")
    return name


def permute_rows(rows: torch.Tensor, n_head: int, inverse: bool = False) -> torch.Tensor:
    """llama.cpp's Q/K row order for adjacent-pair RoPE (or back, with `inverse`), applied to dim 0.

    Per head, HF orders a head's rows [x₀ … x_{d/2−1}, y₀ … y_{d/2−1}] (rotate-half pairs (xᵢ, yᵢ)); the converter
    interleaves them to [x₀, y₀, x₁, y₁, …] so that llama.cpp's RoPE on adjacent pairs rotates the same pairs. It is
    a pure reordering of rows: exact in any dtype.
    """
    out = rows.shape[0]
    if out % (2 * n_head):
        raise WsteerError(f"cannot split {out} rows into {n_head} heads of even size; wrong base model?")
    rest = rows.shape[1:]
    if inverse:
        return rows.reshape(n_head, out // n_head // 2, 2, *rest).transpose(1, 2).reshape(rows.shape)
    return rows.reshape(n_head, 2, out // n_head // 2, *rest).transpose(1, 2).reshape(rows.shape)


def _qk_heads(gguf_name: str, base: BaseGGUF) -> int | None:
    """Heads to permute lora_b rows by: n_head for attn_q, n_head_kv for attn_k, None for anything else."""
    kind = gguf_name.split(".")[2] if gguf_name.startswith("blk.") else ""
    return {"attn_q": base.n_head, "attn_k": base.n_head_kv}.get(kind)


def _check_model_matches(model, vector: WeightVector, base: BaseGGUF, names: dict[str, str],
                         allow_transfer: bool) -> bool | None:
    """With the HF base model at hand: the vector was built on it, and the GGUF holds the same weights.

    Returns whether the GGUF's Q/K rows are permuted, read off the weights: of the permuted and the unpermuted
    HF attn_q, the one closer to the dequantized GGUF tensor. For the embedded model (its HF weights are the
    dequantized GGUF) the match is exact; for a GGUF quantized from HF weights it is close to the quantization
    error, and a different model is far off in both orders.
    """
    from wsteer.models import fingerprint

    want = vector.manifest.get("base_fingerprint")
    got = fingerprint(model)
    if want and want != got and not allow_transfer:
        raise WsteerError(f"the vector was built for base model {vector.manifest.get('base_model')!r} "
                          f"(fingerprint {want}), but the given model has fingerprint {got}; pass the model the "
                          "vector was built on (or allow_transfer=True to export it for this one on purpose)")
    params = dict(model.named_parameters())
    q = next((h for h, g in names.items() if g.endswith("attn_q.weight")), None)
    if q is None:
        return None
    hf = params[q].detach().float().cpu()
    gg = torch.from_numpy(base.tensor(names[q]))
    if hf.shape != gg.shape:
        raise WsteerError(f"{q} is {tuple(hf.shape)} in the model but {names[q]} is {tuple(gg.shape)} in "
                          f"{base.path}: base_gguf= is not this model's GGUF")
    scale = float(hf.norm()) or 1.0
    err_perm = float((permute_rows(hf, base.n_head) - gg).norm()) / scale
    err_plain = float((hf - gg).norm()) / scale
    if min(err_perm, err_plain) > 0.2:  # Q4 quantization alone stays near 0.1; another model is near √2
        raise WsteerError(f"{base.path} does not hold the given model's weights ({names[q]} differs from {q} by "
                          f"{min(err_perm, err_plain):.0%} in either row order): base_gguf= is another model's GGUF")
    return err_perm < err_plain


def export_gguf_lora(
    vector: WeightVector,
    path: str | Path,
    base_gguf: str | Path,
    *,
    k: float = 1.0,
    model=None,
    permute_qk: bool | None = None,
    dtype: str = "f32",
    allow_transfer: bool = False,
) -> Path:
    """Write w (times an optional baked-in k) as a llama.cpp GGUF LoRA adapter for the model in `base_gguf`.

    With the default k = 1 the file holds w itself and the strength is chosen at run time:
    `llama-server -m base.gguf --lora-scaled w.gguf:-2` or `Llama(model_path=..., lora_path=w.gguf, lora_scale=-2)`
    compute θ + (−2)·w. Ollama's Modelfile `ADAPTER` has no scale (it applies 1), so for Ollama export with the k
    you want baked into lora_b (`k=-2`).

    Args:
        vector: a `WeightVector` (contrastive w, τ±, or a composition); an activation or bias vector is refused
            (export activation vectors with `wsteer.control_vector.export_control_vector`).
        path: the .gguf file to write (atomically: a crash leaves no partial file).
        base_gguf: the base model's GGUF, the file llama.cpp loads with `-m`: gives the architecture, head
            counts and tensor names, and every edited tensor's shape is checked against it.
        k: strength baked into lora_b (default 1: pick it at run time).
        model: the HF base model, optional: checks that the vector was built on it and that `base_gguf` holds its
            weights, and reads the Q/K row order off the weights.
        permute_qk: force the Q/K row permutation on or off (default: from `PERMUTED_QK` or the weights).
        dtype: "f32" (exact) or "f16" (half the size; ~1e-3 relative rounding of each factor).
        allow_transfer: with `model`, export a vector built for another model on purpose.

    Returns:
        `path`.
    """
    import gguf

    if isinstance(vector, DenseVector):
        made = vector.manifest.get("method", "dense")
        fix = ("export it as a llama.cpp control vector (wsteer.control_vector.export_control_vector)"
               if made == "activation" else
               "llama.cpp has no adapter form for MLP bias deltas; export a LoRA weight vector (train.py source=lora)")
        raise WsteerError(f"a {made!r} vector is not a weight vector and has no GGUF LoRA form; {fix}")
    if not isinstance(vector, WeightVector) or not vector.factors:
        raise WsteerError("export_gguf_lora needs a WeightVector with factors (train.py source=lora builds one)")
    k = check_k(k)
    if dtype not in ("f32", "f16"):
        raise WsteerError(f"dtype must be 'f32' or 'f16', got {dtype!r}")
    base = read_base_gguf(base_gguf)
    names = {n: gguf_tensor_name(n, base) for n in sorted(vector.factors)}
    for n, g in names.items():
        b, a = vector.factors[n]
        if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0]:
            raise WsteerError(f"{n}: B is {tuple(b.shape)} but A is {tuple(a.shape)}; the vector is corrupt")
        if g not in base.shapes:
            raise WsteerError(f"the vector edits {n} ({g}), which {base.path} does not have (the base has "
                              f"{base.n_layer} layers): the vector was built for another base model")
        if base.shapes[g] != (b.shape[0], a.shape[1]):
            raise WsteerError(f"the vector's {n} is {b.shape[0]}×{a.shape[1]} but {g} in {base.path} is "
                              f"{base.shapes[g][0]}×{base.shapes[g][1]}: the vector was built for another base model")
    seen = _check_model_matches(model, vector, base, names, allow_transfer) if model is not None else None
    if permute_qk is None:
        permute_qk = seen if seen is not None else PERMUTED_QK.get(base.arch)
        if permute_qk is None:
            raise WsteerError(f"wsteer does not know whether llama.cpp's converter permutes the Q/K rows of a "
                              f"{base.arch!r} model; pass model= (the HF base model, checked on its weights) or "
                              "permute_qk=True/False")
    elif seen is not None and seen != permute_qk:
        raise WsteerError(f"permute_qk={permute_qk} contradicts {base.path}, whose attn_q rows are "
                          f"{'' if seen else 'not '}permuted against the model's; drop permute_qk=")

    rank = max(b.shape[1] for b, _ in vector.factors.values())
    np_dtype = np.float32 if dtype == "f32" else np.float16
    manifest = {
        "format": LORA_FORMAT, "k": k, "rank": rank, "alpha": float(rank), "qk_permuted": bool(permute_qk),
        "base_gguf": base.path.name, "modules": len(names), "dtype": dtype,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(), "vector": vector.manifest,
    }
    with atomic_path(path, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), base.arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        # scale = alpha / r × the run-time scale (llama-adapter.h get_scale): alpha = r makes it exactly k
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
        writer.add_name(f"wsteer {vector.manifest.get('behavior', 'steering')} vector")
        writer.add_string("wsteer.format", LORA_FORMAT)
        writer.add_float32("wsteer.k", k)
        writer.add_string("wsteer.manifest", json.dumps(manifest, sort_keys=True, default=str))
        for n, g in names.items():
            b, a = (t.detach().float().cpu() for t in vector.factors[n])
            b = b * k
            heads = _qk_heads(g, base) if permute_qk else None
            if heads:
                b = permute_rows(b, heads)  # the rows of B·A are the rows of B: permute B only
            pad = rank - b.shape[1]
            b = torch.nn.functional.pad(b, (0, pad))  # zero columns and rows add exact zeros (see module doc)
            a = torch.nn.functional.pad(a, (0, 0, 0, pad))
            writer.add_tensor(f"{g}.lora_a", a.numpy().astype(np_dtype))
            writer.add_tensor(f"{g}.lora_b", b.numpy().astype(np_dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def read_gguf_lora(path: str | Path, base_gguf: str | Path | None = None, permuted: bool | None = None
                   ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Read a GGUF LoRA adapter back as `{gguf tensor name: (B, A)}` plus its KV metadata.

    With `base_gguf` (for the head counts) and `permuted=True`, attn_q/attn_k B rows are put back in HF order, so
    B @ A compares directly with a wsteer vector's delta. Factors come back exactly as stored.
    """
    from gguf import GGUFReader

    reader = GGUFReader(Path(path))
    meta = {k: _field(reader, k) for k in reader.fields if not k.startswith("GGUF.")}
    tensors = {t.name: torch.from_numpy(np.array(t.data)) for t in reader.tensors}
    base = read_base_gguf(base_gguf) if base_gguf is not None else None
    out = {}
    for name in sorted(n.removesuffix(".lora_a") for n in tensors if n.endswith(".lora_a")):
        b, a = tensors[f"{name}.lora_b"], tensors[f"{name}.lora_a"]
        heads = _qk_heads(name, base) if (base is not None and permuted) else None
        out[name] = (permute_rows(b, heads, inverse=True) if heads else b, a)
    return out, meta


def default_base_gguf(manifest: dict) -> Path:
    """The GGUF a vector's base model was loaded from, when that is one of wsteer's GGUF model configs."""
    from omegaconf import OmegaConf

    from wsteer.artifacts import PROJECT_ROOT
    from wsteer.models import gguf_path

    name = manifest.get("model_name")
    cfg_path = PROJECT_ROOT / "conf" / "model" / f"{name}.yaml"
    if not name or not cfg_path.is_file() or OmegaConf.load(cfg_path).get("source") != "gguf":
        raise WsteerError(f"the vector's base model ({manifest.get('base_model')!r}) was not loaded from a GGUF; "
                          "convert it with llama.cpp's convert_hf_to_gguf.py and pass --base FILE.gguf")
    return gguf_path(OmegaConf.load(cfg_path))


def main(argv: list[str] | None = None) -> Path:
    """`python -m wsteer.export_gguf VECTOR OUT.gguf [--base BASE.gguf] [--k K] [--layer L] [--f16]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m wsteer.export_gguf", description=(
        "Write a wsteer weight vector as a llama.cpp GGUF LoRA adapter, or an activation vector as a control vector."))
    parser.add_argument("vector", help="a vector .safetensors written by wsteer (train.py run dir or the cache)")
    parser.add_argument("out", help="the .gguf file to write")
    parser.add_argument("--base", help="the base model's GGUF (default: the embedded model's, for vectors built on it)")
    parser.add_argument("--k", type=float, default=1.0, help="strength baked into the file (default 1: pick k at "
                        "run time with --lora-scaled FILE:k; Ollama needs it baked in)")
    parser.add_argument("--layer", type=int, help="activation vectors: wsteer's layer l (default: the middle layer)")
    parser.add_argument("--f16", action="store_true", help="LoRA factors in F16 (half the size)")
    args = parser.parse_args(argv)
    vector = load_vector(Path(args.vector))
    if isinstance(vector, DenseVector):
        from wsteer.control_vector import export_control_vector

        out = export_control_vector(vector, args.out, layer=args.layer, k=args.k)
    else:
        base = args.base or default_base_gguf(vector.manifest)
        out = export_gguf_lora(vector, args.out, base, k=args.k, dtype="f16" if args.f16 else "f32")
    print(f"wsteer: wrote {out}")
    return out


if __name__ == "__main__":
    from wsteer.cli import guarded

    guarded(lambda _: main(), None)
