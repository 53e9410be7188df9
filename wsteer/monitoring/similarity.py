"""Cosine similarity between weight deltas (paper §5; design/paper.md §4 "Weight monitoring").

A *delta* is any change of a model's weights, given as one of:
- a `WeightVector` (low-rank factors `{param: (B, A)}`, delta = B @ A): contrastive vectors w = τ⁺ − τ⁻, task
  vectors τ, LoRA checkpoints;
- a dense `{param_name: tensor}` mapping (a checkpoint's θ_t − θ_pre, a full fine-tune) or a `DenseVector`;
- a path: a wsteer `.safetensors` vector, a plain safetensors file (or folder of shards) of dense deltas, or a
  PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`).

The paper compares deltas with **one global cosine over all parameters** (design §4: the authors sum
elementwise products and squared norms over every tensor, dense embed/lm_head deltas included). Here that
number is computed without ever materialising a dense matrix for a low-rank side:

    ⟨B₁A₁, B₂A₂⟩ = tr(A₁ᵀB₁ᵀB₂A₂) = Σ (B₁ᵀB₂) ⊙ (A₁A₂ᵀ)        (r₁×r₂ matrices only)
    ⟨BA, D⟩      = tr(AᵀBᵀD)       = Σ (BᵀD) ⊙ A                (BᵀD accumulated over row blocks of D)

and dense deltas are read one module at a time (from disk with `safe_open`, tensor by tensor) and reduced in
row blocks of float64, so a 7B-sized delta is never held in memory twice. All sums are float64.

`breakdown` also splits the global inner product and norms per layer, per module type and between low-rank
(LoRA-covered) and dense entries: the authors' fork found that dense embedding deltas can dominate the global
cosine (design §8), and the split shows whether they do.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from wsteer.artifacts import save_figure
from wsteer.errors import WsteerError
from wsteer.vectors import DenseVector, WeightVector

# Dense tensors are reduced in row blocks of about this many elements (128 MiB per float64 block), so a
# vocabulary-sized embedding delta never needs a full float64 copy.
CHUNK_ELEMENTS = 1 << 24

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


@dataclass(frozen=True)
class LowRank:
    """One low-rank entry: delta = b @ a, with b (out × r) and a (r × in)."""

    b: torch.Tensor
    a: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.b.shape[0]), int(self.a.shape[1]))

    def to(self, device) -> LowRank:
        return LowRank(self.b.to(device), self.a.to(device))


Entry = LowRank | torch.Tensor


# ----------------------------------------------------------------------------------------------------
# Deltas: named entries, fetched one at a time


class Delta:
    """A weight delta: named entries (parameter names of the base model), each low-rank or dense.

    Subclasses fetch entries on demand: a caller handling one name at a time holds one module in memory.
    """

    label: str = ""

    def names(self) -> list[str]:
        raise NotImplementedError

    def kind(self, name: str) -> str:
        """`"lowrank"` or `"dense"`, without loading the entry."""
        raise NotImplementedError

    def entry(self, name: str) -> Entry:
        raise NotImplementedError

    def __contains__(self, name: str) -> bool:
        return name in set(self.names())

    def __len__(self) -> int:
        return len(self.names())


class MemoryDelta(Delta):
    """A delta held in memory: low-rank factors and/or dense tensors by parameter name."""

    def __init__(
        self,
        lowrank: Mapping[str, LowRank | tuple[torch.Tensor, torch.Tensor]] | None = None,
        dense: Mapping[str, torch.Tensor] | None = None,
        label: str = "",
    ):
        self.lowrank = {
            n: f if isinstance(f, LowRank) else LowRank(f[0], f[1]) for n, f in (lowrank or {}).items()
        }
        self.dense = dict(dense or {})
        both = self.lowrank.keys() & self.dense.keys()
        if both:
            raise WsteerError(f"{sorted(both)[:3]} given both as low-rank factors and as dense tensors")
        self._names = [*self.lowrank, *self.dense]
        self._set = set(self._names)
        self.label = label

    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._set

    def kind(self, name: str) -> str:
        return "lowrank" if name in self.lowrank else "dense"

    def entry(self, name: str) -> Entry:
        return self.lowrank[name] if name in self.lowrank else self.dense[name]

    def to(self, device) -> MemoryDelta:
        return MemoryDelta(
            {n: f.to(device) for n, f in self.lowrank.items()},
            {n: t.to(device) for n, t in self.dense.items()},
            self.label,
        )


@dataclass(frozen=True)
class _Spec:
    """Where one entry of an on-disk delta lives and how to turn the stored tensors into the delta."""

    kind: str  # "lowrank" | "dense"
    file: Path
    key: str  # the dense tensor, or B
    key_a: str | None = None  # A (low-rank only)
    scale: float = 1.0
    transpose: bool = False  # delta = (B @ A)ᵀ: PEFT embedding LoRAs and fan_in_fan_out (Conv1D) layers
    full: bool = False  # the stored tensor is a trained full weight (PEFT modules_to_save): delta = t − base


class SafetensorsDelta(Delta):
    """A delta read from safetensors files on demand: `entry` opens the file and reads only its tensors."""

    def __init__(
        self, specs: Mapping[str, _Spec], label: str = "", base: Callable[[str], torch.Tensor] | None = None
    ):
        self.specs = dict(specs)
        self.label = label
        self._base = base
        if base is None and any(s.full for s in self.specs.values()):
            raise WsteerError("internal: full-weight entries need a base model")

    def names(self) -> list[str]:
        return list(self.specs)

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def kind(self, name: str) -> str:
        return self.specs[name].kind

    def entry(self, name: str) -> Entry:
        s = self.specs[name]
        with safe_open(str(s.file), framework="pt") as f:
            t = f.get_tensor(s.key)
            a = f.get_tensor(s.key_a) if s.key_a else None
        if s.kind == "lowrank":
            b = t
            if s.transpose:
                b, a = a.T, b.T  # (B A)ᵀ = Aᵀ Bᵀ
            return LowRank(b * s.scale if s.scale != 1.0 else b, a)
        if s.full:
            # float32 so that θ_ft − θ_pre of bf16 weights is not rounded to bf16 a second time
            return t.float() - self._base(name).to(t.device).float()
        return t * s.scale if s.scale != 1.0 else t


# ----------------------------------------------------------------------------------------------------
# Loading


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
        specs: dict[str, _Spec] = {}
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


def _file_specs(path: Path) -> dict[str, _Spec]:
    keys, meta = _keys_and_meta(path)
    if meta.get("format") == WeightVector.FORMAT:
        names = [k[:-3] for k in keys if k.endswith("::B")]
        missing = [n for n in names if f"{n}::A" not in keys]
        if missing:
            raise WsteerError(
                f"{path}: factor A of {missing[0]} is missing; the file is incomplete — rebuild it"
            )
        return {n: _Spec("lowrank", path, f"{n}::B", f"{n}::A") for n in names}
    return {k: _Spec("dense", path, k) for k in keys}


_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"(?P<mod>.+)\.lora_(?P<emb>embedding_)?(?P<ab>[AB])(?:\.[^.]+){0,2}$")


def _alpha(cfg: dict, module: str) -> float:
    """lora_alpha for one module, honouring `alpha_pattern` the way PEFT matches it (`(.*\\.)?key$`)."""
    for key, alpha in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(alpha)
    return float(cfg.get("lora_alpha", 8))


def _load_peft(folder: Path, base) -> SafetensorsDelta:
    """A PEFT LoRA adapter folder as factors (B·alpha/r, A) per module, plus dense deltas for full weights."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise WsteerError(f"{folder}: only LoRA adapters are supported (peft_type {cfg.get('peft_type')!r})")
    if cfg.get("use_dora"):
        raise WsteerError(
            f"{folder}: DoRA adapters are not low-rank deltas; merge the adapter and compare "
            "the dense difference (merged − base) instead"
        )
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
    factors: dict[str, dict[str, str]] = {}
    specs: dict[str, _Spec] = {}
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    trains_bias = cfg.get("bias", "none") != "none"
    for key in keys:
        k = key.removeprefix(_PEFT_PREFIX)
        if "lora_magnitude_vector" in k:
            raise WsteerError(f"{folder}: DoRA weights found ({key}); DoRA deltas are not low-rank")
        if "trainable_tokens" in k:
            raise WsteerError(f"{folder}: trainable-token adapters are not supported ({key})")
        m = _LORA_KEY.fullmatch(k)
        if m and k.endswith(".bias") and m["ab"] == "B":
            # lora_bias=True: the merged bias gains lora_B.bias · scaling; a dense delta on `<module>.bias`
            factors.setdefault(m["mod"], {})["bias"] = key  # its spec is made below, with the module's scale
            continue
        if m:
            role = ("emb_" if m["emb"] else "") + m["ab"]
            factors.setdefault(m["mod"], {})[role] = key
            continue
        if trains_bias and k.endswith(".bias"):
            specs[k.replace(".base_layer.", ".")] = _Spec("dense", file, key, full=True)
            continue
        if ".base_layer." in k:
            continue  # a copy of a base weight (save_embedding_layers), not part of the delta
        # modules_to_save: the trained full weight, with or without the `.modules_to_save[.adapter]` infix
        # (design §8: an older regex in the authors' fork silently dropped these; never drop them here)
        name = re.sub(r"\.modules_to_save(\.[^.]+)?(?=\.[^.]+$)", "", k)
        specs[name] = _Spec("dense", file, key, full=True)
    rslora = bool(cfg.get("use_rslora"))
    for mod, roles in factors.items():
        emb = "emb_A" in roles or "emb_B" in roles
        ka, kb = (roles.get("emb_A"), roles.get("emb_B")) if emb else (roles.get("A"), roles.get("B"))
        if ka is None or kb is None:
            raise WsteerError(
                f"{folder}: module {mod} has only one of its LoRA factors; the adapter is incomplete"
            )
        r = shapes[ka][0]
        scale = _alpha(cfg, mod) / (math.sqrt(r) if rslora else r)
        # Embedding LoRA stores A (r × vocab) and B (dim × r) with delta = (B A)ᵀ·s (PEFT `Embedding`).
        specs[f"{mod}.weight"] = _Spec("lowrank", file, kb, ka, scale, transpose=emb or fan_in_fan_out)
        if "bias" in roles:
            specs[f"{mod}.bias"] = _Spec("dense", file, roles["bias"], scale=scale)
    if not any(s.kind == "lowrank" for s in specs.values()):
        raise WsteerError(f"{folder}: no LoRA factors found in adapter_model.safetensors")
    full = sorted(n for n, s in specs.items() if s.full)
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
    for cand in (name, _PEFT_PREFIX + name):
        if cand in keys:
            return cand
    if name.endswith("lm_head.weight"):  # tied embeddings: checkpoints store only embed_tokens
        tied = [k for k in keys if k.endswith("embed_tokens.weight")]
        if len(tied) == 1:
            return tied[0]
    raise WsteerError(f"the base weights have no {name}; is base= the model the adapter was trained on?")


# ----------------------------------------------------------------------------------------------------
# Entry-level products (float64)


def _shape(e: Entry) -> tuple[int, ...]:
    return e.shape if isinstance(e, LowRank) else tuple(e.shape)


def _row_blocks(t: torch.Tensor, device) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, float64 block) over the rows of `t` viewed as 2-D, ~CHUNK_ELEMENTS elements per block."""
    t2 = t.reshape(t.shape[0], -1) if t.dim() >= 1 else t.reshape(1, 1)
    step = max(1, CHUNK_ELEMENTS // max(1, t2.shape[1]))
    for i in range(0, t2.shape[0], step):
        j = min(i + step, t2.shape[0])
        yield i, j, t2[i:j].to(device=device, dtype=torch.float64)


def sq_norm_entry(e: Entry) -> float:
    """‖e‖²; for low-rank entries ‖BA‖² = Σ (BᵀB) ⊙ (AAᵀ)."""
    if isinstance(e, LowRank):
        b, a = e.b.double(), e.a.to(e.b.device).double()
        return float(((b.T @ b) * (a @ a.T)).sum())
    return math.fsum(float((blk * blk).sum()) for _, _, blk in _row_blocks(e, e.device))


def inner_entry(x: Entry, y: Entry, name: str = "") -> float:
    """Frobenius inner product ⟨x, y⟩ of two entries of one parameter, never densifying a low-rank side."""
    if _shape(x) != _shape(y):
        raise WsteerError(
            f"{name or 'an entry'} has shape {_shape(x)} in one delta and {_shape(y)} in the other; "
            "were they built on the same base model?"
        )
    if isinstance(y, LowRank) and not isinstance(x, LowRank):
        x, y = y, x
    if isinstance(x, LowRank):
        dev = x.b.device
        b1, a1 = x.b.double(), x.a.to(dev).double()
        if isinstance(y, LowRank):
            b2, a2 = y.b.to(dev).double(), y.a.to(dev).double()
            return float(((b1.T @ b2) * (a1 @ a2.T)).sum())
        # ⟨BA, D⟩ = Σ (BᵀD) ⊙ A, with BᵀD (r × in) accumulated over row blocks of D
        m = torch.zeros_like(a1)
        for i, j, blk in _row_blocks(y, dev):
            m += b1[i:j].T @ blk
        return float((m * a1).sum())
    return math.fsum(
        float((bx * by).sum())
        for (i, j, bx), (_, _, by) in zip(_row_blocks(x, x.device), _row_blocks(y, x.device), strict=True)
    )


# ----------------------------------------------------------------------------------------------------
# Global numbers and breakdowns


@dataclass
class Parts:
    """Inner product and squared norms of a group of parameters; cosines of groups add up via these sums."""

    inner: float = 0.0
    sq_a: float = 0.0
    sq_b: float = 0.0

    @property
    def cosine(self) -> float:
        d = math.sqrt(self.sq_a * self.sq_b)
        return self.inner / d if d > 0 else math.nan


@dataclass(frozen=True)
class ParamPart:
    """One parameter's contribution: `kind_*` is "lowrank", "dense", or None where that delta lacks it."""

    name: str
    layer: int | None
    module: str
    kind_a: str | None
    kind_b: str | None
    inner: float
    sq_a: float
    sq_b: float


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def module_of(name: str) -> str:
    """Module type of a parameter: `model.layers.3.self_attn.q_proj.weight` → `q_proj`."""
    parts = name.split(".")
    return parts[-2] if len(parts) > 1 and parts[-1] in ("weight", "bias") else parts[-1]


def _sum(rows: Iterable[ParamPart]) -> Parts:
    rows = list(rows)
    return Parts(
        math.fsum(r.inner for r in rows), math.fsum(r.sq_a for r in rows), math.fsum(r.sq_b for r in rows)
    )


@dataclass
class Breakdown:
    """Per-parameter inner products and squared norms of two deltas, with group sums.

    The global cosine is `total.inner / sqrt(total.sq_a · total.sq_b)`, and every grouping (`by_layer`,
    `by_module`, `by_kind`) partitions the same parameters, so the global numbers are exactly the sums of any
    grouping's parts.
    """

    params: list[ParamPart]
    labels: tuple[str, str] = ("a", "b")

    @property
    def total(self) -> Parts:
        return _sum(self.params)

    @property
    def cosine(self) -> float:
        return self.total.cosine

    @property
    def inner(self) -> float:
        return self.total.inner

    def _group(self, key: Callable[[ParamPart], object]) -> dict:
        groups: dict[object, list[ParamPart]] = {}
        for p in self.params:
            groups.setdefault(key(p), []).append(p)
        return {k: _sum(v) for k, v in groups.items()}

    def by_layer(self) -> dict[int | None, Parts]:
        """By the `layers.N.` index; None collects parameters outside decoder layers (embeddings, head)."""
        g = self._group(lambda p: p.layer)
        return {k: g[k] for k in sorted(k for k in g if k is not None)} | (
            {None: g[None]} if None in g else {}
        )

    def by_module(self) -> dict[str, Parts]:
        """By module type (q_proj, k_proj, …, embed_tokens, lm_head)."""
        return self._group(lambda p: p.module)

    def by_kind(self) -> dict[str, Parts]:
        """By the pair of entry kinds, e.g. `lowrank×dense` (`-` where one delta lacks the parameter)."""
        return self._group(lambda p: f"{p.kind_a or '-'}×{p.kind_b or '-'}")

    def norm_split(self) -> dict[str, dict[str, float]]:
        """Each delta's squared norm split between its low-rank (LoRA-covered) and dense entries."""
        out = {}
        for side, kind_of, sq_of in (
            ("a", lambda p: p.kind_a, lambda p: p.sq_a),
            ("b", lambda p: p.kind_b, lambda p: p.sq_b),
        ):
            out[side] = {
                k: math.fsum(sq_of(p) for p in self.params if kind_of(p) == k) for k in ("lowrank", "dense")
            }
        return out

    def where(self, keep: Callable[[ParamPart], bool]) -> Parts:
        return _sum(p for p in self.params if keep(p))

    def lora_covered(self) -> Parts:
        """Parameters low-rank in at least one delta: the cosine without dense-only (embed/head) deltas."""
        return self.where(lambda p: "lowrank" in (p.kind_a, p.kind_b))

    def to_markdown(self) -> str:
        a, b = self.labels
        t = self.total
        lines = [
            f"cosine({a}, {b}) = {_fmt(t.cosine)} (⟨{a},{b}⟩ = {t.inner:.6g}, "
            f"‖{a}‖ = {math.sqrt(t.sq_a):.6g}, ‖{b}‖ = {math.sqrt(t.sq_b):.6g}); "
            f"over LoRA-covered weights only: {_fmt(self.lora_covered().cosine)}",
            "",
        ]
        split = self.norm_split()
        for side, lab in (("a", a), ("b", b)):
            sq = split[side]["lowrank"] + split[side]["dense"]
            if sq > 0:
                lines.append(
                    f"- ‖{lab}‖² split: low-rank {split[side]['lowrank'] / sq:.1%}, "
                    f"dense {split[side]['dense'] / sq:.1%}"
                )
        for title, groups in (("layer", self.by_layer()), ("module", self.by_module())):
            lines += [
                "",
                f"| {title} | ⟨{a},{b}⟩ | share of ⟨{a},{b}⟩ | ‖{a}‖² share | ‖{b}‖² share | cosine |",
                "|---|---|---|---|---|---|",
            ]
            for k, p in groups.items():
                share = lambda x, tot: f"{x / tot:.1%}" if tot else "—"  # noqa: E731
                lines.append(
                    f"| {'non-layer' if k is None else k} | {p.inner:.4g} | {share(p.inner, t.inner)} | "
                    f"{share(p.sq_a, t.sq_a)} | {share(p.sq_b, t.sq_b)} | {_fmt(p.cosine)} |"
                )
        return "\n".join(lines) + "\n"


def _union(lists: Iterable[list[str]]) -> list[str]:
    seen, out = set(), []
    for names in lists:
        for n in names:
            if n not in seen:
                seen.add(n)
                out.append(n)
    return out


def breakdown(a, b, *, base=None) -> Breakdown:
    """Per-parameter inner products and squared norms of two deltas (any form), one module at a time."""
    da, db = as_delta(a, base=base, label="a"), as_delta(b, base=base, label="b")
    rows = []
    for name in _union([da.names(), db.names()]):
        ea = da.entry(name) if name in da else None
        eb = db.entry(name) if name in db else None
        rows.append(
            ParamPart(
                name,
                layer_of(name),
                module_of(name),
                da.kind(name) if ea is not None else None,
                db.kind(name) if eb is not None else None,
                inner_entry(ea, eb, name) if ea is not None and eb is not None else 0.0,
                sq_norm_entry(ea) if ea is not None else 0.0,
                sq_norm_entry(eb) if eb is not None else 0.0,
            )
        )
        del ea, eb  # one module in memory at a time
    return Breakdown(rows, (da.label or "a", db.label or "b"))


def inner(a, b, *, base=None) -> float:
    """Global Frobenius inner product ⟨a, b⟩ over all parameters (only shared parameters contribute)."""
    da, db = as_delta(a, base=base), as_delta(b, base=base)
    shared = [n for n in da.names() if n in db]
    return math.fsum(inner_entry(da.entry(n), db.entry(n), n) for n in shared)


def sq_norm(a, *, base=None) -> float:
    d = as_delta(a, base=base)
    return math.fsum(sq_norm_entry(d.entry(n)) for n in d.names())


def norm(a, *, base=None) -> float:
    """Global Frobenius norm of a delta."""
    return math.sqrt(sq_norm(a, base=base))


def cosine(a, b, *, base=None) -> float:
    """The paper's global cosine ⟨a, b⟩ / (‖a‖‖b‖) over all parameters of both (NaN if either is 0)."""
    return breakdown(a, b, base=base).cosine


def cosine_matrix(named_deltas: Mapping[str, object], *, base=None) -> tuple[list[str], np.ndarray]:
    """Pairwise global cosines of several deltas.

    Streams parameter by parameter over the union of names: each stored tensor is read once in total, and at
    most one module per delta is in memory at a time.
    """
    names = list(named_deltas)
    m, _ = cosine_matrix_and_norms([as_delta(d, base=base, label=n) for n, d in named_deltas.items()])
    return names, m


def cosine_matrix_and_norms(deltas: list[Delta]) -> tuple[np.ndarray, list[float]]:
    """(cosine matrix, norms); see `cosine_matrix`."""
    n = len(deltas)
    sq = [[] for _ in range(n)]
    dots = {(i, j): [] for i in range(n) for j in range(i + 1, n)}
    for pname in _union(d.names() for d in deltas):
        have = {i: d.entry(pname) for i, d in enumerate(deltas) if pname in d}
        for i, e in have.items():
            sq[i].append(sq_norm_entry(e))
        for i in have:
            for j in have:
                if i < j:
                    dots[(i, j)].append(inner_entry(have[i], have[j], pname))
        del have
    norms = [math.sqrt(math.fsum(s)) for s in sq]
    m = np.full((n, n), np.nan)
    for i in range(n):
        if norms[i] > 0:
            m[i, i] = 1.0
        for j in range(i + 1, n):
            if norms[i] > 0 and norms[j] > 0:
                m[i, j] = m[j, i] = math.fsum(dots[(i, j)]) / (norms[i] * norms[j])
    return m, norms


# ----------------------------------------------------------------------------------------------------
# Presentation


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    # Cosines between unrelated deltas of big models are tiny (paper §5: "absolute cosines are small"), so
    # keep significant digits rather than fixed decimals below 1e-3.
    return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def format_table(names: list[str], matrix) -> str:
    """A markdown table of a cosine matrix."""
    m = np.asarray(matrix, dtype=float)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, row in enumerate(names):
        lines.append(f"| **{row}** | " + " | ".join(_fmt(float(v)) for v in m[i]) + " |")
    return "\n".join(lines) + "\n"


def heatmap(
    names: list[str], matrix, path: str | Path, title: str = "Cosine similarity of weight deltas"
) -> Path:
    """Write an annotated cosine heatmap as PNG (Agg, no pyplot state), atomically (temp file + rename).

    The colour scale spans ± the largest off-diagonal |cosine|: the diagonal is 1 by definition, and scaling
    to it would wash out the small cross-delta cosines the paper compares (§5).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=float)
    n = len(names)
    off = m[~np.eye(n, dtype=bool)]
    off = off[np.isfinite(off)]
    lim = float(np.abs(off).max()) if off.size else 1.0
    lim = lim if lim > 0 else 1.0
    size = max(4.5, 0.8 * n + 2.5)
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.clip(m, -lim, lim), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=names)
    for i in range(n):
        for j in range(n):
            v = float(m[i, j])
            ax.text(
                j,
                i,
                _fmt(v),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if math.isfinite(v) and abs(v) > 0.6 * lim else "black",
            )
    fig.colorbar(im, ax=ax, label="cosine (scale: off-diagonal range)", shrink=0.8)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)
