"""Batched chat generation: left padding, length-sorted batches, a progress bar, explicit decoding settings."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig


def render_prompt(tokenizer, conversation: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


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
) -> list[dict]:
    """Answer each conversation; returns `{"text", "finished"}` per input, in input order.

    temperature 0 means greedy. Prompts are sorted by length so a batch wastes little padding.
    """
    device = next(model.parameters()).device
    prompts = [render_prompt(tokenizer, c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
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
    torch.manual_seed(seed)
    out: list[dict | None] = [None] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding, so every prompt ends where generation starts
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
        for row, i in enumerate(idx):
            new = seqs[row, width:].tolist()
            finished = eos in new
            if finished:
                new = new[: new.index(eos)]
            out[i] = {"text": tokenizer.decode(new, skip_special_tokens=True).strip(), "finished": finished}
    return out  # type: ignore[return-value]
