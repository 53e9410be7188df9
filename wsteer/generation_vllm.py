"""Optional vLLM backend for evaluation generation (GPU; used only when `import vllm` works).

Two ways to serve a steered model, both exact for weight steering:

- `generate_vllm(model, tokenizer, convs, ...)`: export the model's *current* weights (inside
  `with steerer.apply(model, k):` that is θ + k·w, merged; a task fine-tune merged by `base_adapter=` likewise)
  to a temporary HF folder and generate with a fresh `vllm.LLM`. Simple and merged (no LoRA cost per token),
  but every call pays an export and an engine start (seconds for 135M, about a minute for 7B): use it for one
  large batch of prompts per model, not for many small calls.
- `VllmEngine(base_folder, max_lora_rank=64)`: one engine on the unsteered base; each k is served as the rank-2r
  LoRA adapter that `wsteer.export.export_peft_adapter` writes for k·w (merging it gives θ + k·w exactly). A k
  sweep then costs one engine start and one small adapter per k; vLLM's batched LoRA kernels keep the
  unmerged-adapter overhead low.

Not exercised in this project's CPU-only test suite (vLLM needs a GPU build); its outputs are vLLM's, so they need
not equal `wsteer.generation.generate` token for token (different kernels), and finished/unfinished is read
from vLLM's `finish_reason`.
"""

from __future__ import annotations

import gc
import importlib.util
import tempfile
from pathlib import Path

import torch

from wsteer.chat import render_prompt
from wsteer.errors import WsteerError


def available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _vllm():
    if not available():
        raise WsteerError("generation backend 'vllm' needs vLLM: `pip install vllm` (a CUDA machine), "
                          "or use the default backend 'hf'")
    import vllm

    return vllm


def _sampling_params(vllm, max_new_tokens: int, temperature: float, seed: int):
    # temperature 0 is greedy in vLLM as in wsteer; top_p/top_k off so sampling is plain temperature sampling
    return vllm.SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=1.0, top_k=-1, seed=seed)


def _results(outputs) -> list[dict]:
    return [{"text": o.outputs[0].text.strip(), "finished": o.outputs[0].finish_reason == "stop",
             "new_tokens": len(o.outputs[0].token_ids)} for o in outputs]


def _prompts(tokenizer, conversations) -> list[dict]:
    # token ids rendered by our own chat template, so vLLM sees exactly the prompt the HF path sees
    return [{"prompt_token_ids": render_prompt(tokenizer, c)} for c in conversations]


def _dtype(model) -> str:
    dtype = next(model.parameters()).dtype
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def generate_vllm(model, tokenizer, conversations, *, max_new_tokens: int, temperature: float = 0.0,
                  seed: int = 0, gpu_memory_utilization: float = 0.5) -> list[dict]:
    """Answer each conversation with vLLM from the model's current weights (exported merged to a temp folder)."""
    vllm = _vllm()
    with tempfile.TemporaryDirectory(prefix="wsteer-vllm-") as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        # vLLM shares the GPU with the loaded torch model: cap its share of memory
        llm = vllm.LLM(model=folder, tokenizer=folder, dtype=_dtype(model), seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization)
        try:
            outs = llm.generate(_prompts(tokenizer, conversations),
                                _sampling_params(vllm, max_new_tokens, temperature, seed), use_tqdm=False)
        finally:
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return _results(outs)


class VllmEngine:
    """One vLLM engine on the base model; steered models are served as LoRA adapters (k·w, rank 2r)."""

    def __init__(self, base_folder: str | Path, tokenizer, *, max_lora_rank: int = 64, dtype: str = "bfloat16",
                 seed: int = 0, gpu_memory_utilization: float = 0.85):
        vllm = _vllm()
        self.tokenizer = tokenizer
        self.llm = vllm.LLM(model=str(base_folder), dtype=dtype, seed=seed, enable_lora=True,
                            max_lora_rank=max_lora_rank, gpu_memory_utilization=gpu_memory_utilization)
        self._ids: dict[str, int] = {}

    def generate(self, conversations, *, adapter_dir: str | Path | None = None, max_new_tokens: int,
                 temperature: float = 0.0, seed: int = 0) -> list[dict]:
        """Answer with the base (adapter_dir=None) or with the adapter folder written by `export_peft_adapter`."""
        vllm = _vllm()
        from vllm.lora.request import LoRARequest

        lora = None
        if adapter_dir is not None:
            key = str(Path(adapter_dir).resolve())
            self._ids.setdefault(key, len(self._ids) + 1)  # vLLM keys adapters by a positive integer id
            lora = LoRARequest(Path(key).name, self._ids[key], key)
        outs = self.llm.generate(_prompts(self.tokenizer, conversations),
                                 _sampling_params(vllm, max_new_tokens, temperature, seed),
                                 lora_request=lora, use_tqdm=False)
        return _results(outs)
