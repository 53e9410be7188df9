"""The `hf` backend: transformers on the CPU or a GPU, batches of one steering inside `apply(model, k)`.

The worker gathers every waiting request that steers and decodes the same way (same behaviors and ks, same
method, same sampling settings) into one batch, and generates the batch inside the steerer's reversible
`apply(model, k)`. The weights hold θ + k·w only inside that block and only the worker touches the model, so no
request ever sees another's k, and one loaded model serves every k. Requests with other steering wait for the
next batch (mixed-k traffic costs more batches, not wrong answers). `"method": "activation"` is the same with the
activation steerer: its `apply` registers the forward hooks that add k·aˡ for the batch and removes them on exit
(the weights are never touched), as `steer.py method=activation` generates inside it.

Each batch is decoded exactly as `wsteer.generation.generate` decodes (same prompt rendering, left padding and
`GenerationConfig`), so a greedy served answer is the answer `steer.py` writes at the same k. Per-row limits
are enforced by a stopping criterion that ends a row early without touching the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from wsteer.generation import left_pad, render_prompt
from wsteer.serving.engine import Job, QueueEngine, Row, emitter, finish_row, take_token
from wsteer.serving.schema import APIError, Sampling


def decoding_config(max_new_tokens: int, sampling: Sampling, pad: int, eos: int) -> GenerationConfig:
    """The `GenerationConfig` that `wsteer.generation.generate` builds, with the request's top_p when sampling."""
    sample = not sampling.greedy
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=sampling.temperature if sample else None,
        top_p=sampling.top_p if sample else None,
        top_k=0 if sample else None,
        pad_token_id=pad,
        eos_token_id=eos,
    )


class _RowLimits(StoppingCriteria):
    """Ends each row at its own max_tokens, at a stop string or when its client left; streams new text.

    Called by `generate` after every step with the whole batch; it reads only each row's newest token and
    returns which rows are done, so a finished row stops while the others go on unchanged.
    """

    def __init__(self, engine: HFEngine, rows: list[Row], jobs_of: list[Job], emit: list[Callable]):
        self.engine, self.rows, self.jobs_of, self.emit = engine, rows, jobs_of, emit

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if row.done:
                continue
            if self.jobs_of[i].cancelled or newest[i] == self.engine.eos:
                row.done = True
                continue
            take_token(row, newest[i], self.engine.decode, self.emit[i])
        return torch.tensor([r.done for r in self.rows], dtype=torch.bool, device=input_ids.device)


class TokenizerSide:
    """Prompts rendered and answers decoded by the served model's HF tokenizer, exactly as `steer.py` does, so
    every backend sees the same prompt token ids and turns the same tokens into the same text."""

    def _use_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        # A fast tokenizer's Rust object refuses concurrent borrows ("Already borrowed") when one thread encodes
        # while another changes its padding state: every tokenizer call goes through this lock.
        self._tok_lock = threading.Lock()

    def encode_chat(self, messages: list[dict]) -> list[int]:
        try:
            with self._tok_lock:
                return render_prompt(self.tokenizer, messages)
        except Exception as e:  # noqa: BLE001 - a chat template raises whatever its author chose
            raise APIError(f"the model's chat template refused these messages ({type(e).__name__}: {e})",
                           param="messages", code="invalid_value") from e

    def encode_text(self, text: str) -> list[int]:
        with self._tok_lock:
            return self.tokenizer(text).input_ids  # special tokens (a BOS) as the model expects, as vLLM does

    def decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)


class HFEngine(TokenizerSide, QueueEngine):
    """The transformers backend: one worker thread, batches by identical steering, `generate`'s decoding.

    Args:
        model, tokenizer: the loaded base model (in eval mode) and its tokenizer.
        max_batch_rows, batch_wait_s: see `QueueEngine`.
    """

    name = "hf"

    def __init__(self, model, tokenizer, max_batch_rows: int = 32, batch_wait_s: float = 0.01):
        super().__init__(max_batch_rows, batch_wait_s)
        self._use_tokenizer(tokenizer)
        self.model = model
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.device = next(model.parameters()).device

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @torch.no_grad()
    def _generate(self, jobs: list[Job]) -> list[list[dict]]:
        head = jobs[0]
        with head.steerer.apply(self.model, head.k) if head.steerer is not None else nullcontext():
            rows = [r for j in jobs for r in j.rows]
            owner = [j for j in jobs for _ in j.rows]
            emit = [emitter(j, i) for j in jobs for i in range(len(j.rows))]
            sampling = head.sampling
            width = max(len(r.prompt) for r in rows)
            ids, mask = left_pad([r.prompt for r in rows], list(range(len(rows))), self.pad, width)
            gen_cfg = decoding_config(max(r.max_tokens for r in rows), sampling, self.pad, self.eos)
            if not sampling.greedy:
                # one seed per batch: a seeded request repeats its answer when it is batched the same way (alone)
                torch.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())
            # always attached: a row whose client left must stop even when nothing else would end it early
            limits = StoppingCriteriaList([_RowLimits(self, rows, owner, emit)])
            seqs = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                       generation_config=gen_cfg, stopping_criteria=limits)
        new = iter(seqs[:, width:].cpu().tolist())  # rows in the order they were stacked: job by job
        return [[self._finish(row, i, next(new), job) for i, row in enumerate(job.rows)] for job in jobs]

    def _finish(self, row: Row, index: int, new: list[int], job: Job) -> dict:
        """The row's answer exactly as `generate` computes it (cut at end-of-turn, decoded, stripped), then cut at
        its own max_tokens and stop strings."""
        new = new[: row.max_tokens]  # after a row's own limit come pad tokens, which may equal end-of-turn
        at_eos = self.eos in new
        if at_eos:
            new = new[: new.index(self.eos)]
        return finish_row(row, index, job, new, at_eos, self.decode)

