"""The backend interface every serving backend implements, and the queue-and-worker loop they share.

A backend (`hf.py`, `llamacpp.py`, `vllm.py`) owns one loaded model and one worker thread; only that thread
touches the model. Requests wait in a queue; the worker takes the oldest, gathers every waiting request that
may share a pass with it (`batch_key`: for `hf` and `llamacpp` the same steering and decoding, for `vllm`
anything, since each row carries its own adapter) and runs them. Per-row limits (each request's `max_tokens`,
`stop`, a streaming client that went away) and the streamed text are handled here, the same for every backend.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from wsteer.serving.schema import APIError, Sampling, Steering

log = logging.getLogger("wsteer.serve")


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
    `steerer`/`k` are what the `hf` backend applies; `plan` is what another backend prepared for this steering
    (exported adapter files and their scales), made by `Engine.plan` before the job is queued.
    """

    steering: Steering
    steerer: object  # a Steerer, or None for the base model
    k: float
    sampling: Sampling
    rows: list[Row]
    sink: Callable[[tuple], None]
    plan: object = None
    cancelled: bool = False
    queued_at: float = field(default_factory=time.monotonic)

    def key(self) -> tuple:
        return (self.steering, self.sampling.key())


class Engine:
    """What the app needs from a backend: tokenize, turn a steering into what it applies, accept jobs, report."""

    name = "base"

    def encode_chat(self, messages: list[dict]) -> list[int]:
        raise NotImplementedError

    def encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    @property
    def context_length(self) -> int | None:
        return None

    def plan(self, library, steering: Steering) -> tuple[object, float, object]:
        """(steerer, k, plan) for a request; runs in a request thread, so slow preparation (exporting an
        adapter) never stalls the worker. Raises `APIError` (400) for a steering this backend cannot apply."""
        steerer, k = library.resolve(steering)
        return steerer, k, None

    def submit(self, job: Job) -> None:
        raise NotImplementedError

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def stats(self) -> dict:
        return {}


def stable_delta(row: Row, text: str) -> str:
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


def take_token(row: Row, token: int, decode: Callable[[list[int]], str], emit: Callable[[str], None]) -> None:
    """Add one generated (non end-of-turn) token to a row: stop at a stop string or max_tokens, stream new text."""
    row.tokens.append(token)
    if row.stop or row.stream:
        text = decode(row.tokens)
        if row.stop and any(s in text for s in row.stop):
            row.done, row.stopped_at = True, len(row.tokens)
        elif row.stream:
            delta = stable_delta(row, text)
            if delta:
                emit(delta)
    if len(row.tokens) >= row.max_tokens:
        row.done = True


def finish_row(row: Row, index: int, job: Job, new: list[int], at_eos: bool,
               decode: Callable[[list[int]], str]) -> dict:
    """A row's answer from its new tokens (already cut at end-of-turn): cut at its stop strings, stripped for chat,
    and whatever streaming held back sent. `completion_tokens` counts the end-of-turn token, as `generate` does."""
    if row.stopped_at is not None:
        new, at_eos = new[: row.stopped_at], False
    text = decode(new)
    cut = min((i for i in (text.find(s) for s in row.stop) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    if row.strip:
        text = text.strip()
    if row.stream and not job.cancelled:
        if text.startswith(row.sent):
            if len(text) > len(row.sent):
                deliver(job, ("delta", index, text[len(row.sent):]))
        else:  # a tokenizer whose decode is not prefix-stable; the final text is authoritative
            log.warning("streamed text diverged from the final answer (tokenizer decode is not prefix-stable)")
        row.sent = text
    return {"text": text, "finish_reason": "stop" if at_eos or cut >= 0 else "length",
            "prompt_tokens": len(row.prompt), "completion_tokens": len(new) + at_eos}


def emitter(job: Job, index: int) -> Callable[[str], None]:
    """What streams row `index` of `job`: each call sends one text delta to its client."""
    return lambda text: deliver(job, ("delta", index, text))


def deliver(job: Job, event: tuple) -> None:
    """Hand an event to a job's waiter; a waiter that is gone (its event loop closed at shutdown) must not stop the
    worker, which serves everyone else."""
    try:
        job.sink(event)
    except RuntimeError:
        job.cancelled = True


class QueueEngine(Engine):
    """One worker thread, a queue, and batches of jobs that share `batch_key`; subclasses implement `_generate`.

    Args:
        max_batch_rows: most rows (answers) in one batch.
        batch_wait_s: after a request arrives, how long the worker waits for another before it starts a batch
            that is not full (requests sent together by many clients then share one batch).
    """

    def __init__(self, max_batch_rows: int = 32, batch_wait_s: float = 0.01):
        self.max_batch_rows, self.batch_wait_s = max_batch_rows, batch_wait_s
        self._queue: queue.Queue = queue.Queue()
        self._pending: list[Job] = []
        self._thread: threading.Thread | None = None
        self._batches = self._rows_done = 0
        self._busy_s = 0.0

    def batch_key(self, job: Job):
        """Jobs with equal keys may run in one batch (default: same steering, same decoding)."""
        return job.key()

    def _generate(self, jobs: list[Job]) -> list[list[dict]]:
        """Answer a batch: one result dict per row, per job (`finish_row`'s shape)."""
        raise NotImplementedError

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"wsteer-serve-{self.name}", daemon=True)
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
        return sum(len(j.rows) for j in self._pending if self.batch_key(j) == key)

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
        while self._rows_waiting(self.batch_key(self._pending[0])) < self.max_batch_rows:
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
        key, batch, rows = self.batch_key(self._pending[0]), [], 0
        for job in self._pending:
            if self.batch_key(job) == key and (not batch or rows + len(job.rows) <= self.max_batch_rows):
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
            results = self._generate(jobs)
        except Exception as e:  # noqa: BLE001 - one failed batch is answered with an error; the server goes on
            log.error("generation failed for %s: %s", head.steering.label(), traceback.format_exc())
            err = APIError(f"generation failed ({type(e).__name__}: {e})", status=500, type="server_error",
                           code="generation_failed")
            for job in jobs:
                deliver(job, ("error", err))
            return
        finally:
            self._busy_s += time.perf_counter() - t0
        self._batches += 1
        for job, res in zip(jobs, results, strict=True):
            self._rows_done += len(res)
            if job.cancelled:
                log.info("a client left (steer=%s): its answer stopped after %d tokens", job.steering.label(),
                         max(len(r.tokens) for r in job.rows))
            deliver(job, ("done", res))
        log.debug("batch %s: %d rows in %.2fs", head.steering.label(), sum(len(j.rows) for j in jobs),
                  time.perf_counter() - t0)
