"""Serving backends behind one small interface, and the `hf` backend.

The `hf` backend keeps one loaded model and one worker thread that owns it. Requests wait in a queue; the worker
takes the oldest, gathers every waiting request that steers and decodes the same way (same behaviors and ks, same
method, same sampling settings) into one batch, and generates the batch inside the steerer's reversible
`apply(model, k)`. The weights hold θ + k·w only inside that block and only the worker touches the model, so no
request ever sees another's k, and one loaded model serves every k. Requests with other steering wait for the
next batch (mixed-k traffic costs more batches, not wrong answers).

Each batch is decoded exactly as `wsteer.generation.generate` decodes (same prompt rendering, left padding and
`GenerationConfig`), so a greedy served answer is the answer `steer.py` writes at the same k. Per-row limits
(each request's `max_tokens`, `stop`, a streaming client that went away) are enforced by a stopping criterion
that ends a row early without touching the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from wsteer.errors import WsteerError
from wsteer.generation import left_pad, render_prompt
from wsteer.serving.schema import APIError, Sampling, Steering

log = logging.getLogger("wsteer.serve")

BACKENDS = ("hf", "vllm", "llamacpp")
NOT_HERE = {
    "vllm": ("backend=vllm is not available in this version of serve.py; serve with backend=hf, or export "
             "k·w as a PEFT LoRA adapter (`python steer.py export_adapter=true k=-2`) and load it in vLLM's own "
             "OpenAI server with --enable-lora --lora-modules"),
    "llamacpp": ("backend=llamacpp is not available in this version of serve.py; serve with backend=hf, or run "
                 "llama.cpp's own server with the GGUF LoRA export (llama-server -m base.gguf --lora-scaled w.gguf -2)"),
}


@dataclass(eq=False)  # rows and jobs are told apart by identity: two identical requests are still two
class Row:
    """One answer to produce: a prompt's token ids and its limits; filled in by the worker."""

    prompt: list[int]
    max_tokens: int
    stop: tuple[str, ...] = ()
    strip: bool = True  # chat answers are stripped, as `generate` strips them; raw completions are not
    stream: bool = False
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    stopped_at: int | None = None  # token count at which a stop string appeared
    sent: str = ""  # streamed so far


@dataclass(eq=False)
class Job:
    """One request: its rows (n choices or several prompts) share steering and decoding, so they batch together.

    `sink` receives events from the worker thread: ("delta", row index, text), then ("done", [result per row])
    or ("error", APIError). It must be cheap and thread-safe (the app hands events to its event loop).
    """

    steering: Steering
    steerer: object  # a Steerer, or None for the base model
    k: float
    sampling: Sampling
    rows: list[Row]
    sink: Callable[[tuple], None]
    cancelled: bool = False
    queued_at: float = field(default_factory=time.monotonic)

    def key(self) -> tuple:
        return (self.steering, self.sampling.key())


class Engine:
    """What the app needs from a backend: tokenize, accept jobs, report its state."""

    name = "base"

    def encode_chat(self, messages: list[dict]) -> list[int]:
        raise NotImplementedError

    def encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    @property
    def context_length(self) -> int | None:
        return None

    def submit(self, job: Job) -> None:
        raise NotImplementedError

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def stats(self) -> dict:
        return {}


def check_backend(name: str) -> None:
    """Refuse a backend this build cannot serve with, before the model is loaded."""
    if name not in BACKENDS:
        raise WsteerError(f"backend={name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if name in NOT_HERE:
        raise WsteerError(NOT_HERE[name])


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
            if self.jobs_of[i].cancelled:
                row.done = True
                continue
            if newest[i] == self.engine.eos:
                row.done = True
                continue
            row.tokens.append(newest[i])
            if row.stop or row.stream:
                text = self.engine.decode(row.tokens)
                if row.stop and any(s in text for s in row.stop):
                    row.done, row.stopped_at = True, len(row.tokens)
                elif row.stream:
                    delta = _stable_delta(row, text)
                    if delta:
                        self.emit[i](delta)
            if len(row.tokens) >= row.max_tokens:
                row.done = True
        return torch.tensor([r.done for r in self.rows], dtype=torch.bool, device=input_ids.device)


def _stable_delta(row: Row, text: str) -> str:
    """The part of `text` that can be streamed now and will not change: trailing whitespace is held back (the
    answer may be stripped, or a tokenizer clean-up may drop a space before punctuation), as are an incomplete
    UTF-8 character and any tail that could still become a stop string."""
    if row.strip:
        text = text.lstrip()
    text = text.rstrip().rstrip("\ufffd")
    for s in row.stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                text = text[:-n]
                break
    if len(text) > len(row.sent) and text.startswith(row.sent):
        delta = text[len(row.sent):]
        row.sent = text
        return delta
    return ""


class HFEngine(Engine):
    """The transformers backend: one worker thread, batches by identical steering, `generate`'s decoding.

    Args:
        model, tokenizer: the loaded base model (in eval mode) and its tokenizer.
        max_batch_rows: most rows (answers) in one `generate` call.
        batch_wait_s: after a request arrives, how long the worker waits for another before it starts a batch
            that is not full (requests sent together by many clients then share one batch).
    """

    name = "hf"

    def __init__(self, model, tokenizer, max_batch_rows: int = 32, batch_wait_s: float = 0.01):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_rows, self.batch_wait_s = max_batch_rows, batch_wait_s
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        # A fast tokenizer's Rust object refuses concurrent borrows ("Already borrowed") when one thread encodes
        # while another changes its padding state: every tokenizer call goes through this lock.
        self._tok_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._pending: list[Job] = []
        self._thread: threading.Thread | None = None
        self._batches = self._rows_done = 0
        self._busy_s = 0.0

    # -- tokenizer (request threads and the worker) --
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

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    # -- queue --
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="wsteer-serve-worker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def submit(self, job: Job) -> None:
        if self._thread is None:
            raise RuntimeError("the engine is not started")
        self._queue.put(job)

    def stats(self) -> dict:
        return {"backend": self.name, "queued": self._queue.qsize() + len(self._pending), "batches": self._batches,
                "rows": self._rows_done, "busy_s": round(self._busy_s, 3),
                "mean_batch_rows": round(self._rows_done / self._batches, 2) if self._batches else None}

    def _rows_waiting(self, key) -> int:
        return sum(len(j.rows) for j in self._pending if j.key() == key)

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting job and every waiting job with its key, up to max_batch_rows; None to stop."""
        while not self._pending:
            job = self._queue.get()
            if job is None:
                return None
            self._pending.append(job)
        # Gather: keep taking arrivals while they come less than batch_wait_s apart and the head's batch has room,
        # for at most 20 × batch_wait_s (so a steady trickle cannot hold the head back for long). The cap matters:
        # 32 clients whose answers came back together resend over ~50-150 ms on a busy 2-core machine, and a
        # 5× cap cut those batches to half (bench/serve.py). A lone client pays batch_wait_s per request.
        while True:  # whatever has already arrived joins at once
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            self._pending.append(job)
        give_up = time.monotonic() + 20 * self.batch_wait_s
        while self._rows_waiting(self._pending[0].key()) < self.max_batch_rows:
            timeout = min(self.batch_wait_s, give_up - time.monotonic())
            if timeout <= 0:
                break
            try:
                job = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            self._pending.append(job)
        for job in self._pending:
            if job.cancelled:
                log.info("a client left (steer=%s) before its answer started", job.steering.label())
        self._pending = [j for j in self._pending if not j.cancelled]
        if not self._pending:
            return []
        key, batch, rows = self._pending[0].key(), [], 0
        for job in self._pending:
            if job.key() == key and (not batch or rows + len(job.rows) <= self.max_batch_rows):
                batch.append(job)
                rows += len(job.rows)
        self._pending = [j for j in self._pending if j not in batch]
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _run(self, jobs: list[Job]) -> None:
        t0 = time.perf_counter()
        head = jobs[0]
        try:
            steering = head.steerer.apply(self.model, head.k) if head.steerer is not None else nullcontext()
            with steering:
                results = self._generate(jobs)
        except Exception as e:  # noqa: BLE001 - one failed batch is answered with an error; the server goes on
            log.error("generation failed for %s: %s", head.steering.label(), traceback.format_exc())
            err = APIError(f"generation failed ({type(e).__name__}: {e})", status=500, type="server_error",
                           code="generation_failed")
            for job in jobs:
                _deliver(job, ("error", err))
            return
        finally:
            self._busy_s += time.perf_counter() - t0
        self._batches += 1
        for job, res in zip(jobs, results, strict=True):
            self._rows_done += len(res)
            if job.cancelled:
                log.info("a client left (steer=%s): its answer stopped after %d tokens", job.steering.label(),
                         max(len(r.tokens) for r in job.rows))
            _deliver(job, ("done", res))
        log.debug("batch %s: %d rows in %.2fs", head.steering.label(), sum(len(j.rows) for j in jobs),
                  time.perf_counter() - t0)

    @torch.no_grad()
    def _generate(self, jobs: list[Job]) -> list[list[dict]]:
        rows = [r for j in jobs for r in j.rows]
        owner = [j for j in jobs for _ in j.rows]
        emit = [self._emitter(j, i) for j in jobs for i in range(len(j.rows))]
        sampling = jobs[0].sampling
        width = max(len(r.prompt) for r in rows)
        ids, mask = left_pad([r.prompt for r in rows], list(range(len(rows))), self.pad, width)
        gen_cfg = decoding_config(max(r.max_tokens for r in rows), sampling, self.pad, self.eos)
        if not sampling.greedy:
            # one seed per batch: a seeded request repeats its answer when it is batched the same way (e.g. alone)
            torch.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())
        # always attached: a row whose client left must stop even when nothing else would end it early
        limits = StoppingCriteriaList([_RowLimits(self, rows, owner, emit)])
        seqs = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                   generation_config=gen_cfg, stopping_criteria=limits)
        new = iter(seqs[:, width:].cpu().tolist())  # rows in the order they were stacked: job by job
        return [[self._finish(row, i, next(new), job) for i, row in enumerate(job.rows)] for job in jobs]

    def _emitter(self, job: Job, index: int) -> Callable[[str], None]:
        return lambda text: _deliver(job, ("delta", index, text))

    def _finish(self, row: Row, index: int, new: list[int], job: Job) -> dict:
        """The row's answer exactly as `generate` computes it (cut at end-of-turn, decoded, stripped), then cut at
        its own max_tokens and stop strings; streams whatever was held back."""
        new = new[: row.max_tokens]  # after a row's own limit come pad tokens, which may equal end-of-turn
        at_eos = self.eos in new
        if at_eos:
            new = new[: new.index(self.eos)]
        if row.stopped_at is not None:
            new, at_eos = new[: row.stopped_at], False
        text = self.decode(new)
        cut = min((i for i in (text.find(s) for s in row.stop) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        if row.strip:
            text = text.strip()
        if row.stream and not job.cancelled:
            if text.startswith(row.sent):
                if len(text) > len(row.sent):
                    _deliver(job, ("delta", index, text[len(row.sent):]))
            else:  # a tokenizer whose decode is not prefix-stable; the final text is authoritative
                log.warning("streamed text diverged from the final answer (tokenizer decode is not prefix-stable)")
            row.sent = text
        return {"text": text, "finish_reason": "stop" if at_eos or cut >= 0 else "length",
                "prompt_tokens": len(row.prompt), "completion_tokens": len(new) + at_eos}  # as `generate` counts


def _deliver(job: Job, event: tuple) -> None:
    """Hand an event to a job's waiter; a waiter that is gone (its event loop closed at shutdown) must not stop the
    worker, which serves everyone else."""
    try:
        job.sink(event)
    except RuntimeError:
        job.cancelled = True


def make_engine(backend: str, model, tokenizer, **settings) -> Engine:
    check_backend(backend)
    return HFEngine(model, tokenizer, **settings)
