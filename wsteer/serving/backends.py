"""Choosing and building a serving backend (`backend=hf|llamacpp|vllm`), with every refusal before the model loads.

| backend | runs on | weight steering | activation | status |
|---|---|---|---|---|
| hf | CPU, GPU | in-place θ + k·w per batch (`apply`) | forward hooks per batch (`apply`), last position | tested |
| llamacpp | CPU (llama.cpp) | GGUF LoRA per vector at scale k | control vector per batch, every position | tested |
| vllm | CUDA | PEFT LoRA per (vector, k) | no (400) | written against vLLM's API, never run |
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wsteer.errors import WsteerError
from wsteer.serving.engine import Engine

BACKENDS = ("hf", "llamacpp", "vllm")


def check_backend(name: str) -> None:
    """Refuse a backend that is unknown or cannot run here (its library is missing), in one line naming the fix."""
    if name not in BACKENDS:
        raise WsteerError(f"backend={name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if name == "llamacpp":
        from wsteer.serving.llamacpp import check_llama_cpp

        check_llama_cpp()
    elif name == "vllm":
        from wsteer.serving.vllm import check_vllm

        check_vllm()


def base_gguf_of(cfg: DictConfig) -> Path:
    """The GGUF llama.cpp serves: `base_gguf=`, else the model's own GGUF when it is loaded from one."""
    if cfg.get("base_gguf"):
        path = Path(str(cfg.base_gguf)).expanduser()
        if not path.is_file():
            raise WsteerError(f"base_gguf={path} does not exist; pass the base model's .gguf file")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise WsteerError(f"base_gguf={path} is not a GGUF file; pass the base model's .gguf file")
        return path
    if cfg.model.get("source") == "gguf":
        from wsteer.models import gguf_path

        return gguf_path(cfg.model)
    raise WsteerError(f"backend=llamacpp serves a GGUF, and model={cfg.model.name} is not loaded from one: convert it "
                      "with llama.cpp's convert_hf_to_gguf.py and pass base_gguf=FILE.gguf")


def check_backend_settings(cfg: DictConfig) -> None:
    """The backend and its own settings, before the model loads."""
    check_backend(cfg.backend)
    if cfg.backend == "llamacpp":
        base_gguf_of(cfg)
        n = cfg.llamacpp.n_threads
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise WsteerError(f"llamacpp.n_threads must be a positive integer or null, got {n!r}")


def _vllm_rank_needed(cfg: DictConfig, library) -> int:
    """vllm.max_lora_rank, or (null) the largest rank among the library's vectors for this model (contrastive
    vectors are rank 2r), at least 8."""
    if cfg.vllm.max_lora_rank is not None:
        return int(cfg.vllm.max_lora_rank)
    usable, _ = library.listing()
    ranks = [2 * int(v["lora"]["r"]) for v in usable if v.get("lora") and v["lora"].get("r")]
    return max([8, *ranks])


def make_engine(cfg: DictConfig, model, tokenizer, library) -> Engine:
    """The engine for `cfg.backend`, holding the loaded model (hf) or its own copy of the base (llamacpp, vllm)."""
    check_backend(cfg.backend)
    settings = {"max_batch_rows": cfg.max_batch_rows, "batch_wait_s": cfg.batch_wait_ms / 1000}
    adapters = Path(str(cfg.paths.cache_dir)).expanduser() / "serving" / cfg.backend
    if cfg.backend == "llamacpp":
        from wsteer.serving.llamacpp import LlamaCppEngine

        return LlamaCppEngine(base_gguf_of(cfg), tokenizer, adapters, model=model, n_ctx=int(cfg.llamacpp.n_ctx),
                              n_threads=cfg.llamacpp.n_threads, max_adapters=int(cfg.llamacpp.max_adapters),
                              **settings)
    if cfg.backend == "vllm":
        from wsteer.serving.vllm import VLLMEngine

        path = str(cfg.model.path)
        if cfg.model.get("source") == "gguf":  # vLLM loads the dequantized HF folder wsteer keeps for it
            from wsteer.models import cached_gguf_folder

            path = str(cached_gguf_folder(cfg.model, cfg.paths.cache_dir))
        extra = {k: v for k, v in cfg.vllm.items() if k not in ("max_lora_rank", "max_loras") and v is not None}
        return VLLMEngine(path, tokenizer, adapters, max_lora_rank=_vllm_rank_needed(cfg, library),
                          max_loras=int(cfg.vllm.max_loras), model=model, **settings, **extra)
    from wsteer.serving.hf import HFEngine

    return HFEngine(model, tokenizer, **settings)
