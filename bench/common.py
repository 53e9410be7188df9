"""Shared by the benches: models (the embedded default on CPU, random-init paper architectures on GPU), data, timing.

Every bench compares systems on the same inputs in the same process and prints ratios against a baseline measured
in that run: absolute numbers on a shared CPU are noisy, ratios measured side by side much less so.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

# GPU PATH: the paper-scale architectures, written out here because nothing can be downloaded on the GPU machines.
# Values are those of the published Qwen2.5-*-Instruct config.json files; weights are random (throughput and memory
# do not depend on their values).
QWEN2_5 = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
ARCHS = ("smollm2_135m", "tiny", *QWEN2_5)
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM spec, dense bf16: the usual MFU denominator


def parser(desc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=desc)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--arch", default="smollm2_135m", choices=ARCHS,
                   help="smollm2_135m: the embedded default (real weights); qwen2.5-*: random init (GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p


def setup(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(0)


def load(arch: str, device: str, dtype: torch.dtype | None = None):
    """(model, tokenizer) in eval mode on `device`. bf16 on CUDA, fp32 on CPU unless `dtype` says otherwise."""
    from wsteer.models import build_tiny_tokenizer, load_model

    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    if arch in QWEN2_5:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(**QWEN2_5[arch], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                          hidden_act="silu", use_sliding_window=False)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # built in bf16 directly: an fp32 7B would take 30 GB first
        try:
            with torch.device(device):
                model = Qwen2ForCausalLM(cfg)
        finally:
            torch.set_default_dtype(prev)
        # the byte-level tokenizer built in-process (no download); ids stay far below Qwen's vocab size
        tokenizer = build_tiny_tokenizer()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model.eval(), tokenizer
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{arch}.yaml")
    model, tokenizer = load_model(cfg, os.environ.get("WSTEER_CACHE", "~/.cache/wsteer"), device=device)
    return model.to(dtype).eval(), tokenizer


def pairs(behavior: str = "sycophancy") -> dict[str, list[dict]]:
    """The shipped D⁺/D⁻ of the default model: real answers of real lengths."""
    from datasets import load_from_disk

    ds = load_from_disk(str(ROOT / "data" / "pairs" / behavior / "smollm2_135m"))
    return {side: [dict(r) for r in ds[side]] for side in ("pos", "neg")}


def questions(behaviors=("sycophancy", "evil"), split: str = "heldout_questions") -> list[str]:
    out = []
    for b in behaviors:
        out += list(OmegaConf.load(ROOT / "conf" / "behavior" / f"{b}.yaml")[split])
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def lora_cfg(r: int = 32, alpha: float = 16):
    """The paper's adapter (r 32, α 16, dropout 0, all linear layers) as `conf/adapter/lora.yaml` spells it."""
    return OmegaConf.create({"r": r, "alpha": alpha, "dropout": 0.0, "target_modules": "all-linear", "init_seed": 0})


def report(title: str, rows: list[dict], baseline: str, key: str, higher_is_better: bool = True, args=None,
           also_vs: str | None = None) -> None:
    """Print a table with each row's ratio to the baseline row (and to `also_vs`, when that system ran), and
    optionally write it as JSON."""
    if not any(r["system"] == baseline for r in rows):
        baseline = rows[0]["system"]
    base = next(r for r in rows if r["system"] == baseline)[key]
    print(f"\n## {title}")
    for r in rows:
        r[f"ratio_vs_{baseline}"] = (r[key] / base) if higher_is_better else (base / r[key])
        extras = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                           if k not in ("system", key, f"ratio_vs_{baseline}"))
        print(f"{r['system']:<34} {key} {r[key]:>10.4g}   ×{r[f'ratio_vs_{baseline}']:.2f} vs {baseline}"
              + (f"   ({extras})" if extras else ""))
    second = next((r for r in rows if r["system"] == also_vs), None)
    for r in rows if second is not None else []:
        print(f"{r['system']:<34} ×{r[key] / second[key]:.2f} vs {also_vs}")
    if args is not None and args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        from wsteer.artifacts import write_json

        write_json(Path(args.json), {"title": title, "args": vars(args), "rows": rows,
                                     "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                                     "threads": torch.get_num_threads()})


def suite_context(model, tok, behavior: str, max_items: int | None, prefix: str = "wsteer-suite-"):
    """(cfg, Context) for running a behavior's default evaluation suite on a loaded model with an empty item store
    in a fresh temporary folder, so nothing is reused from earlier runs."""
    import tempfile

    from hydra import compose, initialize_config_dir

    from wsteer.behaviors import Behavior
    from wsteer.recipes._common import Context

    work = Path(tempfile.mkdtemp(prefix=prefix))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="steer", overrides=[f"behavior={behavior}", "logger=none",
                                                      f"output_dir={work / 'out'}", f"paths.cache_dir={work}",
                                                      f"eval.max_items={max_items or 'null'}"])
    (work / "out").mkdir(parents=True)
    return cfg, Context(cfg, model, tok, "bench", Behavior.from_cfg(cfg.behavior), work / "out")


# ---- the machine's limit and the model's FLOPs (issue 19: how far each stage is from what this hardware does) ----

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# SmolLM2-135M's matmuls: hidden 576, intermediate 1536 (q/o/gate/up/down projections have these in/out sizes)
PEAK_SHAPES = ((576, 1536), (1536, 576), (576, 576))


def matmul_peak(dtype: torch.dtype = torch.float32, threads: int | None = None, rows: int = 1024,
                shapes=PEAK_SHAPES, repeats: int = 3, min_seconds: float = 0.3, device: str = "cpu") -> dict:
    """This machine's matmul FLOP/s: a plain `torch.mm` loop, `rows` × in @ in × out for each (in, out) of
    `shapes` (the model's own weight shapes; `rows` = batch × sequence), at `dtype` and `threads` CPU threads.

    Each shape runs back to back for at least `min_seconds`, `repeats` times; the best repeat of the best shape
    is the peak (load from other jobs only slows a repeat down). Returns {"flops": peak FLOP/s, "shape": ...,
    "per_shape": {shape: FLOP/s}, "dtype", "threads", "rows"}.
    """
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        per_shape = {}
        for k, n in shapes:
            a = torch.randn(rows, k, generator=g).to(device=device, dtype=dtype)
            w = torch.randn(n, k, generator=g).to(device=device, dtype=dtype)  # nn.Linear's layout: x @ W.T
            out = torch.empty(rows, n, device=device, dtype=dtype)
            for _ in range(2):  # warm-up: oneDNN/BLAS kernels, page faults
                torch.mm(a, w.t(), out=out)
            best = 0.0
            for _ in range(repeats):
                iters, t0 = 0, time.perf_counter()
                sync(device)
                while True:
                    torch.mm(a, w.t(), out=out)
                    iters += 1
                    if iters % 4 == 0:
                        sync(device)
                        if time.perf_counter() - t0 >= min_seconds:
                            break
                best = max(best, 2 * rows * k * n * iters / (time.perf_counter() - t0))
            per_shape[f"{rows}x{k}@{k}x{n}"] = best
        shape = max(per_shape, key=per_shape.get)
        return {"flops": per_shape[shape], "shape": shape, "per_shape": per_shape,
                "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(), "rows": rows}
    finally:
        torch.set_num_threads(prev)


def model_shape(model) -> dict:
    """What the FLOP counts need: parameters used in matmuls per token (every Linear, LM head included, the input
    embedding not), decoder layers, and the attention width (heads × head dim)."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return {"matmul_params": sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)),
            "layers": cfg.num_hidden_layers, "attn_width": heads * head_dim,
            "peak_shapes": ((cfg.hidden_size, cfg.intermediate_size), (cfg.intermediate_size, cfg.hidden_size),
                            (cfg.hidden_size, cfg.hidden_size))}


def share_of_peak(flops: float, seconds: float, peak: dict) -> dict:
    """Achieved model FLOP/s and its share of the peak measured in the same run (`matmul_peak`)."""
    achieved = flops / seconds
    return {"gflops": achieved / 1e9, "peak_gflops": peak["flops"] / 1e9, "share_of_peak": achieved / peak["flops"]}


def attention_flops(shape: dict, context: float) -> float:
    """Forward FLOPs of attention scores and values for one token attending to `context` positions (QKᵀ and AV:
    2 matmuls × 2 FLOPs per multiply-add × width, in every layer)."""
    return 4 * shape["layers"] * shape["attn_width"] * context


def training_flops(shape: dict, rows: list[int], lora: bool = True) -> float:
    """Model FLOPs of a training step over sequences of these real lengths. With LoRA the base weights are frozen:
    forward (2 × params) + input gradients (2 × params) per token, no weight gradients: 4 × params (6 × for a
    full fine-tune). Attention has no weights: forward + its backward (≈ 2 × forward) = 3 × its forward; a causal
    token at position i attends to i + 1 positions. The LoRA factors' own matmuls (< 1% at r 32) are left out."""
    per_token = (4 if lora else 6) * shape["matmul_params"]
    total = 0.0
    for n in rows:
        total += per_token * n + 3 * attention_flops(shape, n * (n + 1) / 2)
    return total


def generation_flops(shape: dict, prompt_len: int, new_tokens: int) -> float:
    """Model FLOPs of answering one prompt: 2 × params per token for the prompt (prefill) and for every generated
    token (a forward pass each, with the KV cache), plus attention over the context so far. Padding and recomputed
    tokens are not counted: this is the useful work, so achieved FLOP/s falls when compute is wasted."""
    tokens = prompt_len + new_tokens
    contexts = prompt_len * (prompt_len + 1) / 2 + sum(prompt_len + j for j in range(1, new_tokens + 1))
    return 2 * shape["matmul_params"] * tokens + attention_flops(shape, contexts)
