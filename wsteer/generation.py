"""Batched chat generation: left padding, length-bucketed batches, a progress bar, explicit decoding settings.

Evaluation (k × methods × eval sets × prompt variants) is most of an experiment's cost, so this path is tuned:

- prompts are sorted by length and cut into batches of similar length (`max_batch_tokens` caps a batch's
  padded prompt+answer slots), so little compute goes to padding;
- weight-steered models are evaluated merged: `WeightSteerer.apply` writes θ + k·w into the dense weights, so
  a step costs what an unsteered step costs (an unmerged PEFT LoRA wrapper is several times slower on GPU);
- on CUDA (`compile=None` means "on CUDA, for models without live LoRA layers"), a static KV cache and `torch.compile` of the decoding step
  (transformers' `cache_implementation="static"`), with prompt widths rounded up to a multiple of
  `STATIC_WIDTH_MULTIPLE` and batch sizes kept fixed so a handful of compiled graphs serve a whole sweep;
- `backend="vllm"` hands the prompts to vLLM (`wsteer.generation_vllm`) when it is installed.

On CPU the default path runs exactly the `model.generate` call it always has: greedy outputs are unchanged.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from wsteer.chat import render_prompt  # noqa: F401 - also imported from here by callers
from wsteer.errors import WsteerError

BACKENDS = ("hf", "vllm")
# Static caches are compiled per shape: rounding the padded prompt width to a multiple of this keeps the number
# of distinct shapes (so of compilations) small across batches and k values.
STATIC_WIDTH_MULTIPLE = 64


def length_buckets(lengths: list[int], batch_size: int, max_new_tokens: int = 0,
                   max_batch_tokens: int | None = None) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into batches of at most `batch_size` prompts.

    With `max_batch_tokens`, a batch also stops growing once rows × (its longest prompt + max_new_tokens) would
    exceed the budget (a long-prompt batch gets fewer rows; never less than one). Because prompts are sorted,
    each batch holds prompts of similar length and left padding wastes little.
    """
    if batch_size < 1:
        raise WsteerError(f"generation batch_size must be a positive integer; got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = (lengths[cur[0]] if cur else lengths[i]) + max_new_tokens  # cur[0] is the batch's longest
        full = len(cur) >= batch_size or (max_batch_tokens is not None and cur and (len(cur) + 1) * width > max_batch_tokens)
        if full:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def left_pad(prompts: list[list[int]], idx: list[int], pad: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):  # left padding, so every prompt ends where generation starts
        ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
        mask[row, width - len(prompts[i]) :] = 1
    return ids, mask


def _auto_static(model, device: torch.device) -> bool:
    """Static cache + compile by default only on CUDA and only for plain (merged) models.

    A model with live PEFT LoRA layers is either mid-training (the monitoring probes generate from inside a
    fine-tune, with the adapters changing between calls) or an unmerged wrapper: recompiling it would cost more
    than it saves, so it keeps the dynamic cache unless `compile=True` asks otherwise.
    """
    if device.type != "cuda":
        return False
    from peft.tuners.lora import LoraLayer

    return not any(isinstance(m, LoraLayer) for m in model.modules())


@torch.no_grad()
def generate(
    model,
    tokenizer,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int = 16,
    seed: int = 0,
    desc: str = "generate",
    progress: bool = True,
    max_batch_tokens: int | None = None,
    compile: bool | None = None,
    backend: str = "hf",
) -> list[dict]:
    """Answer each conversation; returns `{"text", "finished", "new_tokens"}` per input, in input order.

    temperature 0 means greedy. `compile` (static KV cache + torch.compile) defaults to on for merged models on
    CUDA and off on CPU, where compiling costs minutes and the decode step is bound by reading the weights.
    `backend="vllm"` generates with vLLM from the model's current (e.g. steered) weights.
    """
    if backend not in BACKENDS:
        raise WsteerError(f"unknown generation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "vllm":
        from wsteer.generation_vllm import generate_vllm

        return generate_vllm(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                             temperature=temperature, seed=seed)
    device = next(model.parameters()).device
    static = _auto_static(model, device) if compile is None else bool(compile)
    prompts = [render_prompt(tokenizer, c) for c in conversations]
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=1.0 if temperature > 0 else None,
        top_k=0 if temperature > 0 else None,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    if static:
        # transformers compiles the decoding forward itself when the cache is static
        gen_cfg.cache_implementation = "static"
    torch.manual_seed(seed)
    out: list[dict | None] = [None] * len(prompts)
    batches = length_buckets([len(p) for p in prompts], batch_size, max_new_tokens, max_batch_tokens)
    for idx in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
        width = max(len(prompts[i]) for i in idx)
        rows = len(idx)
        if static:
            width = -(-width // STATIC_WIDTH_MULTIPLE) * STATIC_WIDTH_MULTIPLE
            # Every new row count is a new shape (a recompile). Filling a short batch up to batch_size would waste
            # up to half the rows of a small eval set (80 prompts at batch 64 → 128 rows), so round the row count
            # up to a power of two instead: at most log2(batch_size) extra shapes, never 2× the rows.
            if max_batch_tokens is None:
                rows = min(batch_size, 1 << (len(idx) - 1).bit_length())
        ids, mask = left_pad(prompts, idx + [idx[0]] * (rows - len(idx)), pad, width)  # filler: copies of row 0
        seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
        seqs = seqs.cpu()
        for row, i in enumerate(idx):
            new = seqs[row, width:].tolist()
            finished = eos in new
            if finished:
                new = new[: new.index(eos)]
            out[i] = {"text": tokenizer.decode(new, skip_special_tokens=True).strip(), "finished": finished,
                      "new_tokens": len(new) + finished}  # generated tokens, end-of-turn included
    return out  # type: ignore[return-value]
