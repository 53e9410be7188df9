"""Evaluation generation tokens/s: our generation path vs plain HF `generate`, same prompts, weight-steered model.

The prompts are an evaluation's: the held-out questions of two behaviors × prompt variants (bare, and with a
system prompt), answered greedily. The model is steered with θ + k·w (the cached sycophancy vector of the
default model when it exists, else a random rank-64 vector on every linear layer: speed does not depend on the
values). Systems, all on the same prompts and batch size:

- `hf_generate_peft_unmerged`: k·w exported as a PEFT LoRA adapter (`wsteer.export.export_peft_adapter`) and
  loaded with `PeftModel.from_pretrained`: how a PEFT user would serve the steered model; plain `generate`,
  prompts batched in input order.
- `hf_generate_merged`: plain `generate` on the merged model (θ + k·w written into the weights), prompts batched in
  input order: the baseline the ratios are taken against.
- `ours`: `wsteer.generation.generate` under `WeightSteerer.apply` (merged; length-bucketed batches; on CUDA a
  static KV cache + torch.compile).
- `ours_bs<N>`: the same with a larger batch (`--big-batch`): on CPU the decode step is bound by reading the
  weights, so rows per step are the main lever.
- `ours_vllm` (CUDA, only when vLLM is installed): `backend="vllm"`.

tokens/s counts new tokens up to and including end-of-turn (padding after it is not counted), the same way for
every system. `agree` is the share of answers
identical to the baseline's (greedy: expected 1.0 up to float noise from different batch shapes).

`--dtype bfloat16` runs every system on bf16 weights. Every row also gets its achieved model FLOP/s
(`bench.common.generation_flops`: 2 × matmul parameters per prompt and generated token, plus attention over the
context) as a share of this machine's matmul peak, measured in the same run with a plain `torch.mm` loop at the same
dtype and thread count (`bench.common.matmul_peak`), at a training-sized batch of rows (`--peak-rows`: the compute
limit). The peak at a decode step's rows (`--batch-size`) is printed beside it: how much of the limit a decode
step's shape can reach at all.

    python bench/generation.py                                          # CPU, SmolLM2-135M
    python bench/generation.py --device cuda --arch qwen2.5-7b --batch-size 64 --max-new-tokens 128   # GPU PATH
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    DTYPE_NAMES,
    free,
    generation_flops,
    load,
    matmul_peak,
    model_shape,
    parser,
    questions,
    report,
    setup,
    share_of_peak,
    timed,
)
from wsteer.generation import generate, render_prompt  # noqa: E402
from wsteer.steering.weight import WeightSteerer  # noqa: E402
from wsteer.vectors import WeightVector  # noqa: E402

VARIANT_SYSTEM = "Answer the user's message directly and in a few sentences."


def steering_vector(model, arch: str, rank: int = 64, scale: float = 1e-3) -> WeightVector:
    """The cached real vector for the default model when available, else random factors on every linear layer."""
    if arch == "smollm2_135m":
        found = sorted(Path("~/.cache/wsteer/vectors").expanduser().glob(
            "smollm2_135m-*/sycophancy/lora/*/contrastive.safetensors"))
        if found:
            return WeightVector.load(found[-1])
    g = torch.Generator().manual_seed(0)
    factors = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.startswith("model.layers."):
            b = torch.randn(m.out_features, rank, generator=g) * scale
            a = torch.randn(rank, m.in_features, generator=g) / m.in_features ** 0.5
            factors[f"{name}.weight"] = (b, a)  # fp32 factors at any model dtype, as saved vectors are
    return WeightVector(factors, {"base_model": arch, "method": "weight", "random": True})


def conversations(variants: int) -> list[list[dict]]:
    qs = questions()
    convs = [[{"role": "user", "content": q}] for q in qs]
    if variants > 1:
        convs += [[{"role": "system", "content": VARIANT_SYSTEM}, {"role": "user", "content": q}] for q in qs]
    return convs


@torch.no_grad()
def plain_generate(model, tok, convs, batch_size: int, max_new_tokens: int) -> list[dict]:
    """The textbook loop: left-pad each batch of prompts in input order and call `generate`."""
    tok.padding_side = "left"
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(convs), batch_size):
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs[i : i + batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        seqs = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for row in seqs[:, enc["input_ids"].shape[1] :].tolist():
            finished = tok.eos_token_id in row
            row = row[: row.index(tok.eos_token_id)] if finished else row
            out.append({"text": tok.decode(row, skip_special_tokens=True).strip(), "finished": finished,
                        "new_tokens": len(row) + finished})
    return out


def new_tokens(outs: list[dict]) -> int:
    return sum(o["new_tokens"] for o in outs)


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=20, help="the evaluation's batch size (conf eval.batch_size)")
    p.add_argument("--big-batch", type=int, default=80)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--variants", type=int, default=2, help="prompt variants per question (1 or 2)")
    p.add_argument("--k", type=float, default=-2.0)
    p.add_argument("--repeats", type=int, default=1, help="timed passes per system (best is kept), interleaved")
    p.add_argument("--systems", default="hf_generate_peft_unmerged,hf_generate_merged,ours,ours_big")
    p.add_argument("--warmup", choices=("auto", "full", "short"), default="auto",
                   help="untimed warm-up: a whole pass per system (auto on CUDA: compiles every shape) or a few prompts")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPE_NAMES),
                   help="the model's weights (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--peak-rows", type=int, default=1280, help="rows of the compute-limit matmul (a training batch)")
    p.add_argument("--peak-seconds", type=float, default=0.3, help="per shape and repeat of the matmul peak loop")
    args = p.parse_args()
    setup(args)
    model, tok = load(args.arch, args.device, DTYPE_NAMES.get(args.dtype))
    dtype = next(model.parameters()).dtype
    shape = model_shape(model)
    vector = steering_vector(model, args.arch)
    steerer = WeightSteerer(vector)
    convs = conversations(args.variants)
    lengths = [len(render_prompt(tok, c)) for c in convs]
    print(f"{len(convs)} prompts, {min(lengths)}–{max(lengths)} tokens; vector "
          f"{'random' if vector.manifest.get('random') else 'cached sycophancy w'}; k = {args.k}", flush=True)
    gen = dict(max_new_tokens=args.max_new_tokens)

    peft_model = None
    systems = args.systems.split(",")
    if "hf_generate_peft_unmerged" in systems:
        from peft import PeftModel

        from wsteer.export import export_peft_adapter

        folder = export_peft_adapter(vector, args.k, Path(tempfile.mkdtemp()) / "adapter", base_model_id=args.arch)
        # a copy: PEFT wraps the layers it adapts in place, which would rename the weights the steerer edits
        peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(folder)).eval()

    def run(system, prompts=convs):
        if system == "hf_generate_peft_unmerged":
            return plain_generate(peft_model, tok, prompts, args.batch_size, args.max_new_tokens)
        if system == "hf_generate_merged":
            return plain_generate(model, tok, prompts, args.batch_size, args.max_new_tokens)
        if system == "ours":
            return generate(model, tok, prompts, batch_size=args.batch_size, progress=False, **gen)
        if system == "ours_big":
            return generate(model, tok, prompts, batch_size=args.big_batch, progress=False, **gen)
        if system == "ours_vllm":
            return generate(model, tok, prompts, backend="vllm", **gen)
        raise SystemExit(f"unknown system {system}")

    best: dict[str, tuple[float, list]] = {}
    # θ + k·w is written into the weights once, outside every timed pass: bench/k_switch.py times the switch.
    # The unmerged PEFT system runs on its own copy of the base, which this does not touch.
    with steerer.apply(model, args.k):
        # Warm-up, not timed. On CUDA a whole untimed pass per system, so every compiled shape (batch sizes, prompt
        # widths, cache lengths) exists before timing; on CPU a few prompts (allocator, oneDNN primitives).
        warm = args.warmup if args.warmup != "auto" else ("full" if args.device == "cuda" else "short")
        for system in systems:
            if warm == "full":
                run(system)
            elif system != "ours_vllm":
                generate(model, tok, convs[: min(len(convs), 4)], max_new_tokens=4, batch_size=args.batch_size,
                         progress=False)
        for _ in range(args.repeats):
            for system in systems:
                outs, dt = timed(lambda s=system: run(s), args.device)
                if system not in best or dt < best[system][0]:
                    best[system] = (dt, outs)
                print(f"{system}: {dt:.2f} s", flush=True)
    # The limit, in this run, at the same dtype and threads, on the model's own weight shapes: with a training
    # batch's rows (what the hardware does; the share's denominator) and with a decode step's rows (printed).
    peaks = {rows_: matmul_peak(dtype, torch.get_num_threads(), rows_, shapes=shape["peak_shapes"],
                                min_seconds=args.peak_seconds, device=args.device)
             for rows_ in (args.peak_rows, args.batch_size)}
    peak = peaks[args.peak_rows]
    for rows_, pk in peaks.items():
        print(f"matmul peak at {rows_} rows: {pk['flops'] / 1e9:.1f} GFLOP/s ({pk['dtype']}, {pk['threads']} threads, "
              f"{pk['shape']})")
    base_outs = best.get("hf_generate_merged", next(iter(best.values())))[1]
    rows = []
    for system, (dt, outs) in best.items():
        n = new_tokens(outs)
        agree = sum(a["text"] == b["text"] for a, b in zip(outs, base_outs, strict=True)) / len(outs)
        flops = sum(generation_flops(shape, p, o["new_tokens"]) for p, o in zip(lengths, outs, strict=True))
        achieved = share_of_peak(flops, dt, peak)
        rows.append({"system": system if system != "ours_big" else f"ours_bs{args.big_batch}",
                     "new_tok_per_s": n / dt, "seconds": dt, "new_tokens": n, "agree": agree, **achieved})
    peft_model = None  # noqa: F841  (drop the copy before freeing memory)
    free(args.device)
    report(f"evaluation generation ({args.arch}, {args.device}, {str(dtype).removeprefix('torch.')}, "
           f"{len(convs)} prompts, batch {args.batch_size}, "
           f"≤{args.max_new_tokens} new tokens, weight-steered k={args.k:g})", rows, "hf_generate_merged",
           "new_tok_per_s", args=args,
           also_vs="hf_generate_peft_unmerged")


if __name__ == "__main__":
    main()
