"""The `llamacpp` backend: the base model's GGUF in llama-cpp-python, each weight vector a GGUF LoRA at scale k.

A contrastive w is exactly a LoRA (`wsteer.export_gguf`), so llama.cpp computes θ + k·w by running the exported
adapter at scale k. Each vector is exported once (at k = 1, atomically, into `<cache>/serving/llamacpp/`) and
reused for every k and every composition it appears in: a composition is several adapters on one context, each
at its own behavior's k, which is Σ kᵢ·wᵢ exactly as `wsteer.library.compose` builds it.

One worker thread owns the `Llama`. For a batch (requests with the same steering and decoding) it sets the
adapters with `llama_set_adapters_lora(ctx, adapters, n, scales)` (llama-cpp-python 0.3.36's binding of
llama.h's `llama_set_adapters_lora`, the API `Llama(lora_path=..., lora_scale=...)` itself calls at load time;
llama.cpp's `llama_context::set_adapters_lora` replaces the whole set, and drops an adapter at scale 0), answers
the rows one after another, then clears the set (n = 0). The adapter set only changes between batches and the
KV cache is dropped before every row, so no request ever sees another's k.

`"method": "activation"` is a llama.cpp control vector instead: k·aˡ (each behavior of a composition at its own k,
summed per layer) set with `llama_set_adapter_cvec` for the batch and cleared after, the direction
`steer.py export_gguf=true` writes and `--control-vector-scaled FILE:k` applies. llama.cpp adds it at every
position, so it serves `activation.positions=all` (`wsteer.serving.activation`). Every layer's direction is set
each time (zeros where nothing is added): llama.cpp keeps a layer's old direction when the data stops short of it.

Prompts are rendered and answers decoded by the served model's HF tokenizer (the token ids `steer.py` uses);
llama.cpp sees token ids only. Decoding stops at llama.cpp's end-of-generation tokens.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import random
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wsteer.errors import WsteerError
from wsteer.serving.activation import control_vector
from wsteer.serving.engine import Job, QueueEngine, Row, emitter, finish_row, take_token
from wsteer.serving.hf import TokenizerSide
from wsteer.serving.schema import APIError, Steering

log = logging.getLogger("wsteer.serve")


def check_llama_cpp() -> None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise WsteerError("backend=llamacpp needs llama-cpp-python, which is not installed: `pip install "
                          "llama-cpp-python` (or `bash scripts/setup.sh test`, which builds it); or serve with backend=hf")


class ControlVector(NamedTuple):
    """A batch's activation steering for llama.cpp: `llama_set_adapter_cvec`'s data, one row per block from 1."""

    n_embd: int
    data: np.ndarray


def adapter_file(vector, vector_path: str, method: str, base_gguf: Path, out_dir: Path,
                 model=None) -> tuple[Path, bool]:
    """(path, whether it was written now): the vector (as applied: τ⁻'s sign included) as a GGUF LoRA at k = 1,
    exported once and then reused.

    The file name hashes the vector file's path, size and mtime, the method and the base GGUF, so a vector
    rebuilt in place gets a new export. `export_gguf_lora` writes atomically: a crash or a concurrent export
    never leaves a partial file under the final name.
    """
    from wsteer.export_gguf import export_gguf_lora

    st = os.stat(vector_path)
    key = f"{os.path.abspath(vector_path)}|{st.st_size}|{st.st_mtime_ns}|{method}|{Path(base_gguf).resolve()}"
    behavior = str(vector.manifest.get("behavior", "vector"))
    path = out_dir / f"{behavior}-{method}-{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}.gguf"
    if path.is_file():
        return path, False
    out_dir.mkdir(parents=True, exist_ok=True)
    export_gguf_lora(vector, path, base_gguf, k=1.0, model=model)
    log.info("exported %s (%s) as a GGUF LoRA: %s", behavior, method, path)
    return path, True


class LlamaCppEngine(TokenizerSide, QueueEngine):
    """llama-cpp-python on the base GGUF; steering as GGUF LoRA adapters at per-batch scales.

    Args:
        base_gguf: the base model's GGUF (the file llama.cpp loads with -m).
        tokenizer: the served model's HF tokenizer (prompt rendering and decoding, as the `hf` backend).
        adapter_dir: where exported adapters are cached.
        model: the HF base model, optional: each export then checks that the GGUF holds its weights.
        n_ctx: context length (0: the model's training context).
        n_threads: CPU threads for llama.cpp (None: its default).
        max_adapters: adapters kept loaded (each holds its factors in memory); the oldest unused is freed.
        max_batch_rows, batch_wait_s: see `QueueEngine` (a batch's rows run one after another).
    """

    name = "llamacpp"

    def __init__(self, base_gguf, tokenizer, adapter_dir, *, model=None, n_ctx: int = 0, n_threads: int | None = None,
                 max_adapters: int = 8, max_batch_rows: int = 32, batch_wait_s: float = 0.01):
        import llama_cpp
        from llama_cpp import Llama

        super().__init__(max_batch_rows, batch_wait_s)
        self._use_tokenizer(tokenizer)
        self.base_gguf, self.adapter_dir, self.model = Path(base_gguf), Path(adapter_dir), model
        self.max_adapters = max_adapters
        self._cpp = llama_cpp
        try:
            self.llm = Llama(model_path=str(base_gguf), n_ctx=n_ctx, n_threads=n_threads, seed=0, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise WsteerError(f"llama.cpp could not load {base_gguf} ({e}); pass base_gguf= the base model's GGUF") from e
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._adapters: OrderedDict[str, object] = OrderedDict()  # path -> llama_adapter_lora*, worker only
        self._export_lock = threading.Lock()
        self._exported = 0

    @property
    def context_length(self) -> int | None:
        return self.llm.n_ctx()

    def plan(self, library, steering: Steering):
        """((adapter file, scale), ...) for the steering, exporting any vector not exported yet; for activation
        steering the `ControlVector` to set."""
        if steering.method == "activation":
            return None, 0.0, self._control_vector(library, steering)
        plan = []
        for vector_path, vector, k in library.parts(steering):
            try:
                with self._export_lock:  # one export at a time: two requests for a new vector write it once
                    path, made = adapter_file(vector, vector_path, steering.method, self.base_gguf,
                                              self.adapter_dir, self.model)
                self._exported += made
            except WsteerError as e:
                raise APIError(f"{vector.manifest.get('behavior', 'the vector')!r} cannot be served by llama.cpp: "
                               f"{e}", param="steer", code="vector_unusable") from e
            plan.append((str(path), float(k)))
        return None, 0.0, tuple(plan)

    def _control_vector(self, library, steering: Steering) -> ControlVector | None:
        steerer, k = library.resolve(steering)
        if steerer is None:
            return None
        try:
            n_embd, data = control_vector(steerer, k)
        except WsteerError as e:
            raise APIError(f"{steering.label()} cannot be served by llama.cpp: {e}", param="steer",
                           code="vector_unusable") from e
        want = (self._cpp.llama_model_n_embd(self.llm.model), self._cpp.llama_model_n_layer(self.llm.model))
        if (n_embd, data.size // n_embd + 1) != want:
            raise APIError(f"{steering.label()}: the activation vector has {data.size // n_embd + 1} layers × {n_embd} "
                           f"dims but {self.base_gguf} has {want[1]} × {want[0]}; base_gguf= is not the served model",
                           param="steer", code="vector_unusable")
        return ControlVector(n_embd, data)

    def stats(self) -> dict:
        return {**super().stats(), "adapters_loaded": len(self._adapters), "adapters_exported": self._exported}

    def stop(self) -> None:
        super().stop()
        self._set_adapters([])
        self._set_control_vector(None)
        for adapter in self._adapters.values():
            self._cpp.llama_adapter_lora_free(adapter)
        self._adapters.clear()
        self.llm.close()

    # -- worker only --
    def _adapter(self, path: str):
        if path in self._adapters:
            self._adapters.move_to_end(path)
            return self._adapters[path]
        adapter = self._cpp.llama_adapter_lora_init(self.llm.model, path.encode())
        if not adapter:
            raise RuntimeError(f"llama.cpp could not load the adapter {path}")
        self._adapters[path] = adapter
        while len(self._adapters) > self.max_adapters:  # safe: no adapter is set between batches
            _, old = self._adapters.popitem(last=False)
            self._cpp.llama_adapter_lora_free(old)
        return adapter

    def _set_adapters(self, plan) -> None:
        adapters = [self._adapter(path) for path, _ in plan]
        n = len(adapters)
        arr = (self._cpp.llama_adapter_lora_p_ctypes * n)(*adapters) if n else None
        scales = (ctypes.c_float * n)(*(k for _, k in plan)) if n else None
        if self._cpp.llama_set_adapters_lora(self.llm.ctx, arr, n, scales):
            raise RuntimeError(f"llama.cpp refused the adapters {[p for p, _ in plan]}")

    def _set_control_vector(self, cv: ControlVector | None) -> None:
        if cv is None:
            rc = self._cpp.llama_set_adapter_cvec(self.llm.ctx, None, 0, 0, -1, -1)  # off (layer range -1..-1)
        else:
            buf = (ctypes.c_float * cv.data.size).from_buffer_copy(np.ascontiguousarray(cv.data).tobytes())
            # blocks 1..n_layer, as llama.cpp's --control-vector-scaled applies a control vector
            rc = self._cpp.llama_set_adapter_cvec(self.llm.ctx, buf, cv.data.size, cv.n_embd, 1,
                                                  self._cpp.llama_model_n_layer(self.llm.model))
        if rc:
            raise RuntimeError("llama.cpp refused the control vector")

    def _generate(self, jobs: list[Job]) -> list[list[dict]]:
        plan = jobs[0].plan
        if isinstance(plan, ControlVector):
            self._set_control_vector(plan)
        else:
            self._set_adapters(plan or ())
        try:
            return [[self._answer(job, i, row) for i, row in enumerate(job.rows)] for job in jobs]
        finally:  # the base model again: nothing set can leak into the next batch
            self._set_adapters([])
            self._set_control_vector(None)

    def _answer(self, job: Job, index: int, row: Row) -> dict:
        s = job.sampling
        # Llama.generate reuses the KV cache of a matching prompt prefix; that cache was computed under the
        # previous batch's adapters, so it is dropped (reset) and every prompt is evaluated afresh.
        self.llm.reset()
        if not s.greedy:  # one seed per row, so n choices differ; a seeded request repeats its answers
            self.llm.set_seed((s.seed + index) % 2**32 if s.seed is not None else random.getrandbits(32))
        emit, at_eos = emitter(job, index), False
        # temp 0 is llama.cpp's greedy sampler; otherwise only temperature and top_p, as OpenAI defines them
        # (top_k=0 and min_p=0 turn llama-cpp-python's other default filters off)
        tokens = self.llm.generate(row.prompt, temp=s.temperature, top_p=s.top_p, top_k=0, min_p=0.0,
                                   typical_p=1.0, repeat_penalty=1.0, reset=True)
        for token in tokens:
            if job.cancelled:
                break
            if self._cpp.llama_vocab_is_eog(self._vocab, token):
                at_eos = True
                break
            take_token(row, token, self.decode, emit)
            if row.done:
                break
        tokens.close()
        return finish_row(row, index, job, list(row.tokens), at_eos, self.decode)
