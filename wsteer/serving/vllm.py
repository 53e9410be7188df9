"""The `vllm` backend (CUDA only): each (vector, k) a vLLM `LoRARequest`, so every k shares one batch.

NOT RUN: this backend has been written against vLLM's documented API but never executed here (no GPU, and vLLM
does not install on this machine). What is tested without vLLM: the start-up refusal when it is missing, and the
per-(vector, k) adapter folders, merged with real PEFT on the tiny model (tests/test_serve_backends.py).

What it follows (vLLM's docs and source, vllm-project/vllm):
- `vllm.LLM(model, tokenizer, enable_lora=True, max_lora_rank=R, max_loras=M, ...)` and
  `LLM.generate(prompts, sampling_params, *, use_tqdm, lora_request)` with one `SamplingParams` and one
  `LoRARequest | None` per prompt (vllm/entrypoints/llm.py; docs "LoRA Adapters" and the offline
  examples/features/lora examples: base and adapter requests in one call, adapters batched together).
- `LoRARequest(lora_name, lora_int_id, lora_path)` (vllm/lora/request.py): the id must be unique per adapter, > 0.
- prompts as token ids, `{"prompt_token_ids": [...]}` (vllm.inputs.TokensPrompt), so vLLM sees exactly the ids
  `steer.py` renders; outputs `RequestOutput.outputs[0].token_ids` / `.finish_reason`.
- `max_lora_rank` must be one of `LoRAConfig`'s `possible_max_ranks` (8, 16, 32, 64, 128, 256, 320, 512 in
  vllm/config/lora.py); vLLM scales an adapter by lora_alpha / r (`PEFTHelper.vllm_lora_scaling_factor`).

vLLM applies a LoRA per request and batches requests with different adapters in one step (punica kernels), so
unlike `hf` and `llamacpp`, requests at different k are not held apart: the worker sends everything waiting in
one `generate` call. k is baked into lora_B (`wsteer.export.export_peft_adapter`: r = lora_alpha, so merging
gives exactly θ + k·w), one cached folder per (vector, k); a composition is one folder of the composed vector.
The sync `LLM` API returns whole answers: a streamed request gets its text in one piece at the end, and a client
that leaves is noticed only after its batch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import logging
import os
import random
import threading
from pathlib import Path

from wsteer.errors import WsteerError
from wsteer.serving.engine import Job, QueueEngine, finish_row
from wsteer.serving.hf import TokenizerSide
from wsteer.serving.schema import APIError, Steering

log = logging.getLogger("wsteer.serve")
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py LoRAConfig possible_max_ranks


def check_vllm() -> None:
    """Refuse backend=vllm at start-up, before any model loads, when vLLM cannot run here."""
    if importlib.util.find_spec("vllm") is None:
        raise WsteerError("backend=vllm needs vLLM, which is not installed: `pip install vllm` on a CUDA machine "
                          "(vLLM runs on NVIDIA GPUs); on this machine serve with backend=hf or backend=llamacpp")
    import torch

    if not torch.cuda.is_available():
        raise WsteerError("backend=vllm needs a CUDA GPU and none is visible; serve with backend=hf or "
                          "backend=llamacpp here, or run serve.py backend=vllm on a CUDA machine")


def vllm_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of `rank`."""
    fits = [r for r in VLLM_RANKS if r >= rank]
    if not fits:
        raise WsteerError(f"an adapter of rank {rank} exceeds vLLM's largest max_lora_rank ({VLLM_RANKS[-1]})")
    return fits[0]


def adapter_folder(vector, k: float, key: str, out_dir: Path, base_model_id: str | None = None,
                   model=None) -> tuple[Path, bool]:
    """(folder, whether it was written now): k·w as a PEFT LoRA folder, exported once per (vector, k).

    `key` names the vector (its files, size and mtime, the method; for a composition the parts' ks too), so a
    rebuilt vector gets a new folder. `export_peft_adapter` writes atomically (a temporary folder renamed into
    place), so a crash never leaves a partial adapter that vLLM would load.
    """
    from wsteer.export import export_peft_adapter

    digest = hashlib.blake2b(f"{key}|k={float(k)!r}".encode(), digest_size=8).hexdigest()
    folder = out_dir / f"{vector.manifest.get('behavior', 'vector')}-k={float(k):g}-{digest}"
    if (folder / "adapter_config.json").is_file():
        return folder, False
    out_dir.mkdir(parents=True, exist_ok=True)
    export_peft_adapter(vector, k, folder, base_model_id=base_model_id, model=model)
    return folder, True


def steering_key(library, steering: Steering) -> str:
    """What identifies the vector a steering resolves to: its files (size, mtime), method and the parts' ks."""
    files = []
    for path, _, k in library.parts(steering):
        st = os.stat(path)
        files.append(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}:{k!r}")
    return f"{steering.method}|{'|'.join(files)}|single={len(steering.parts) == 1}"


class VLLMEngine(TokenizerSide, QueueEngine):
    """vLLM's offline `LLM` engine in the worker thread; every waiting request goes into one `generate` call.

    Args:
        model_path: the base model's HF folder or hub id (the weights the vectors were built on).
        tokenizer: the served model's HF tokenizer (prompt ids as `steer.py`; vLLM decodes nothing we use).
        adapter_dir: where per-(vector, k) PEFT folders are cached.
        max_lora_rank: the largest adapter rank to serve (rounded up to a value vLLM accepts).
        max_loras: adapters vLLM keeps on the GPU at once (distinct ks in one batch beyond this wait a step).
        model: the HF base model, optional: lets the adapter config use short module names.
        llm_kwargs: passed to `vllm.LLM` (dtype, gpu_memory_utilization, max_model_len, ...).
    """

    name = "vllm"

    def __init__(self, model_path: str, tokenizer, adapter_dir, *, max_lora_rank: int, max_loras: int = 8,
                 model=None, max_batch_rows: int = 256, batch_wait_s: float = 0.01, **llm_kwargs):
        from vllm import LLM

        super().__init__(max_batch_rows, batch_wait_s)
        self._use_tokenizer(tokenizer)
        self.adapter_dir, self.model, self.model_path = Path(adapter_dir), model, str(model_path)
        self.max_lora_rank = vllm_rank(max_lora_rank)
        self.eos = tokenizer.eos_token_id
        self.llm = LLM(model=self.model_path, tokenizer=self.model_path, enable_lora=True,
                       max_lora_rank=self.max_lora_rank, max_loras=max_loras, **llm_kwargs)
        self._max_len = getattr(self.llm.llm_engine.model_config, "max_model_len", None)
        self._ids: dict[Path, int] = {}
        self._next_id = itertools.count(1)
        self._export_lock = threading.Lock()

    @property
    def context_length(self) -> int | None:
        return self._max_len

    def batch_key(self, job: Job):
        return None  # one generate call serves every steering and every sampling setting

    def plan(self, library, steering: Steering):
        """(steerer, k, (adapter name, id, folder) or None), exporting k·w for a (vector, k) not seen before."""
        if steering.method == "activation":  # vLLM runs its own model code: there is no residual stream to hook
            raise APIError('backend=vllm serves the weight methods only; "method": "activation" needs hooks on the '
                           "model's layers, which vLLM does not offer: serve it with backend=hf or backend=llamacpp",
                           param="method", code="method_not_served")
        steerer, k = library.resolve(steering)
        if steerer is None:
            return None, 0.0, None
        vector = steerer.vector
        rank = max(b.shape[1] for b, _ in vector.factors.values())
        if rank > self.max_lora_rank:
            raise APIError(f"steering {steering.label()} is a rank-{rank} adapter but the server was started with "
                           f"vllm.max_lora_rank={self.max_lora_rank}; restart it with vllm.max_lora_rank="
                           f"{vllm_rank(rank)} (a composition's rank is the sum of its parts')", param="steer",
                           code="adapter_rank_too_large")
        with self._export_lock:
            folder, made = adapter_folder(vector, k, steering_key(library, steering), self.adapter_dir,
                                          self.model_path, self.model)
            if folder not in self._ids:
                self._ids[folder] = next(self._next_id)
        if made:
            log.info("exported %s as a PEFT LoRA for vLLM: %s", steering.label(), folder)
        return steerer, k, (folder.name, self._ids[folder], str(folder))

    def _generate(self, jobs: list[Job]) -> list[list[dict]]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        prompts, params, loras = [], [], []
        for job in jobs:
            s = job.sampling
            lora = LoRARequest(*job.plan) if job.plan is not None else None
            for i, row in enumerate(job.rows):
                seed = None if s.greedy else ((s.seed + i) if s.seed is not None else random.getrandbits(63))
                prompts.append({"prompt_token_ids": row.prompt})
                params.append(SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p if not s.greedy else 1.0,
                                             seed=seed, max_tokens=row.max_tokens, stop=list(row.stop) or None))
                loras.append(lora)
        outputs = iter(self.llm.generate(prompts, params, use_tqdm=False, lora_request=loras))
        results = []
        for job in jobs:
            answers = []
            for i, row in enumerate(job.rows):
                out = next(outputs).outputs[0]
                new = list(out.token_ids)[: row.max_tokens]
                at_eos = self.eos in new
                if at_eos:
                    new = new[: new.index(self.eos)]
                elif out.finish_reason == "stop" and not row.stop:
                    at_eos = True  # another end-of-generation token from the model's generation config
                row.tokens = new
                answers.append(finish_row(row, i, job, new, at_eos, self.decode))
            results.append(answers)
        return results
