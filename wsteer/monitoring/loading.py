"""Turning what a caller has into a `Delta` (paper §5): vectors, dicts, safetensors files and PEFT adapters.

A delta can be given as
- a `WeightVector` (low-rank factors `{param: (B, A)}`, delta = B @ A): contrastive vectors w = τ⁺ − τ⁻, task
  vectors τ, LoRA checkpoints;
- a dense `{param_name: tensor}` mapping (a checkpoint's θ_t − θ_pre, a full fine-tune) or a `DenseVector`;
- a path: a wsteer `.safetensors` vector, a plain safetensors file (or folder of shards) of dense deltas, or a
  PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`; its layout is read by
  `wsteer.lora_layout`).

Files are opened for their keys and shapes only; tensors are read entry by entry when a caller asks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from wsteer.errors import WsteerError
from wsteer.lora_layout import PREFIX, StoredDelta, adapter_deltas, read_adapter_config
from wsteer.monitoring.deltas import Delta, LowRank, MemoryDelta, SafetensorsDelta, Stored
from wsteer.vectors import DenseVector, WeightVector


def as_delta(x, *, base=None, label: str = "") -> Delta:
    """Turn any supported delta (see module docstring) into a `Delta`.

    Args:
        x: a `Delta`, `WeightVector`, `DenseVector`, a mapping `{name: (B, A) | LowRank | tensor}`, or a path.
        base: the base model's weights, needed only for PEFT adapters with dense `modules_to_save` (whose
            files store trained weights, not deltas): a state dict, an `nn.Module`, or a safetensors
            file/folder.
        label: a name for messages and tables.
    """
    if isinstance(x, Delta):
        return x
    if isinstance(x, WeightVector):
        return MemoryDelta(x.factors, None, label)
    if isinstance(x, DenseVector):
        return MemoryDelta(None, x.tensors, label)
    if isinstance(x, (str, Path)):
        return load_delta(x, base=base)
    if isinstance(x, Mapping):
        lowrank, dense = {}, {}
        for name, v in x.items():
            if isinstance(v, LowRank) or (
                isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(t, torch.Tensor) for t in v)
            ):
                lowrank[name] = v
            elif isinstance(v, torch.Tensor):
                dense[name] = v
            else:
                raise WsteerError(
                    f"delta entry {name!r} is a {type(v).__name__}; expected a tensor or (B, A)"
                )
        return MemoryDelta(lowrank, dense, label)
    raise WsteerError(
        f"cannot read a weight delta from a {type(x).__name__}; pass a WeightVector, a "
        "{name: tensor} dict, a .safetensors file or a PEFT adapter folder"
    )


def load_delta(path: str | Path, *, base=None) -> Delta:
    """A delta stored on disk, read lazily (entries load one at a time).

    Accepts a wsteer `WeightVector`/`DenseVector` file, a plain safetensors file of dense deltas keyed by
    parameter name, a folder of such shards, or a PEFT LoRA adapter folder (or a folder holding exactly one
    adapter subfolder, as `save_pretrained(selected_adapters=[...])` writes).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise WsteerError(f"weight delta {path} does not exist")
    label = path.stem if path.is_file() else path.name
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return _load_peft(path, base)
        subs = sorted(p.parent for p in path.glob("*/adapter_config.json"))
        if len(subs) == 1:
            return _load_peft(subs[0], base)
        if len(subs) > 1:
            raise WsteerError(
                f"{path} holds several PEFT adapters ({', '.join(p.name for p in subs)}); "
                "point at one of them"
            )
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise WsteerError(f"{path} is neither a PEFT adapter folder nor a folder of .safetensors deltas")
        specs: dict[str, Stored] = {}
        for shard in shards:
            for name, spec in _file_specs(shard).items():
                if name in specs:
                    raise WsteerError(f"{name} appears in both {specs[name].file.name} and {shard.name}")
                specs[name] = spec
        return SafetensorsDelta(specs, label)
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        raise WsteerError(
            f"{path}: pickle checkpoints are not read (they can run code); convert to safetensors"
        )
    return SafetensorsDelta(_file_specs(path), label)


def _keys_and_meta(path: Path) -> tuple[list[str], dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WsteerError(f"{path} is not a readable safetensors file ({e})") from e


def _file_specs(path: Path) -> dict[str, Stored]:
    keys, meta = _keys_and_meta(path)
    if meta.get("format") == WeightVector.FORMAT:
        names = [k[:-3] for k in keys if k.endswith("::B")]
        missing = [n for n in names if f"{n}::A" not in keys]
        if missing:
            raise WsteerError(
                f"{path}: factor A of {missing[0]} is missing; the file is incomplete — rebuild it"
            )
        return {n: Stored(path, StoredDelta(f"{n}::B", f"{n}::A")) for n in names}
    return {k: Stored(path, StoredDelta(k)) for k in keys}


def _load_peft(folder: Path, base) -> SafetensorsDelta:
    """A PEFT LoRA adapter folder as factors (B·alpha/r, A) per module, plus dense deltas for full weights."""
    cfg = read_adapter_config(folder)
    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        extra = (
            " (only a pickle adapter_model.bin, which is not read)"
            if (folder / "adapter_model.bin").is_file()
            else ""
        )
        raise WsteerError(f"{folder} has no adapter_model.safetensors{extra}")
    keys, _ = _keys_and_meta(file)
    with safe_open(str(file), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    specs = {name: Stored(file, how) for name, how in adapter_deltas(cfg, shapes, folder).items()}
    full = sorted(n for n, s in specs.items() if s.how.full)
    reader = None
    if full:
        if base is None:
            raise WsteerError(
                f"{folder} stores trained full weights ({', '.join(full[:3])}"
                f"{', …' if len(full) > 3 else ''}, modules_to_save); their delta needs the base "
                "model: pass base= (a state dict, a model, or its safetensors folder)"
            )
        reader = _base_reader(base)
    return SafetensorsDelta(specs, folder.name, reader)


def _base_reader(base) -> Callable[[str], torch.Tensor]:
    """name → base weight, from a state dict, a module, or safetensors file(s) read tensor by tensor."""
    if isinstance(base, torch.nn.Module):
        base = base.state_dict()
    if isinstance(base, Mapping):
        table = dict(base)

        def lookup(name: str) -> torch.Tensor:
            return table[_base_key(name, table)]

        return lookup
    path = Path(base).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise WsteerError(f"base={base}: no safetensors weights found")
    index = {k: f for f in files for k in _keys_and_meta(f)[0]}

    def read(name: str) -> torch.Tensor:
        key = _base_key(name, index)
        with safe_open(str(index[key]), framework="pt") as f:
            return f.get_tensor(key)

    return read


def _base_key(name: str, keys) -> str:
    for cand in (name, PREFIX + name):
        if cand in keys:
            return cand
    if name.endswith("lm_head.weight"):  # tied embeddings: checkpoints store only embed_tokens
        tied = [k for k in keys if k.endswith("embed_tokens.weight")]
        if len(tied) == 1:
            return tied[0]
    raise WsteerError(f"the base weights have no {name}; is base= the model the adapter was trained on?")
