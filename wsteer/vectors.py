"""Steering artifacts on disk: safetensors (no pickle) with the manifest in the header metadata.

`WeightVector` stores weight deltas as low-rank factors. w = τ⁺ − τ⁻ (paper §1) is exactly a rank-2r update
per module: for a LoRA pair with ΔW± = s·B± @ A±,
    w = [s·B⁺, −s·B⁻] @ [A⁺; A⁻],
so it is stored as one (B, A) pair per weight matrix: no dense materialisation, 2r columns per module.
`DenseVector` stores small dense tensors by name: bias deltas per MLP (bias-only steering) and per-layer
mean-activation differences (activation steering).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from wsteer.artifacts import atomic_path
from wsteer.errors import WsteerError

REQUIRED_MANIFEST = ("base_model", "base_fingerprint", "behavior", "method")


def _save(tensors: dict[str, torch.Tensor], manifest: dict, fmt: str, path: str | Path) -> Path:
    path = Path(path)
    meta = {"format": fmt, "manifest": json.dumps(manifest, sort_keys=True, default=str)}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return path


def _load(path: str | Path, fmt: str) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise WsteerError(f"vector file {path} does not exist; drop `vector=` to build or reuse the cached vector, "
                          "or point it at a .safetensors file written by wsteer")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WsteerError(f"{path} is not a readable safetensors vector ({e}); it may be truncated or corrupt — "
                          "rebuild it with `python train.py`") from e
    if meta.get("format") != fmt:
        raise WsteerError(f"{path} is not a wsteer {fmt.split('/')[0].split('.')[-1].replace('_', ' ')} "
                          f"(format {meta.get('format')!r}, want {fmt!r})")
    try:
        manifest = json.loads(meta["manifest"])
    except (KeyError, json.JSONDecodeError) as e:
        raise WsteerError(f"{path} has no readable manifest; rebuild it with `python train.py`") from e
    missing = [k for k in REQUIRED_MANIFEST if k not in manifest]
    if missing:
        raise WsteerError(f"{path}: manifest lacks {', '.join(missing)}; rebuild it with `python train.py`")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WsteerError(f"{path} is an invalid vector: its tensor {name} holds {bad} NaN/inf value(s) of "
                              f"{t.numel()}, so the vector file itself is unusable (a diverged training or a damaged "
                              "file); rebuild it with `python train.py`")
    return tensors, manifest


@dataclass
class WeightVector:
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # param name -> (B, A), delta = B @ A
    manifest: dict = field(default_factory=dict)
    FORMAT = "wsteer.weight_vector/1"

    @classmethod
    def contrastive(cls, pos: dict, neg: dict, manifest: dict) -> WeightVector:
        """w = ΔW⁺ − ΔW⁻ from two `{name: (B, A)}` factor dicts (scaling already folded into B)."""
        if pos.keys() != neg.keys():
            raise WsteerError("the pos and neg adapters cover different modules; train both with the same adapter config")
        factors = {n: (torch.cat([pos[n][0], -neg[n][0]], dim=1), torch.cat([pos[n][1], neg[n][1]], dim=0)) for n in pos}
        return cls(factors, manifest)

    def scaled(self, c: float, **manifest_updates) -> WeightVector:
        """c·w (e.g. −τ⁻ for `task_vector_neg`), with the same factors' A and B scaled."""
        return WeightVector({n: (b * c, a) for n, (b, a) in self.factors.items()}, {**self.manifest, **manifest_updates})

    def delta(self, name: str) -> torch.Tensor:
        b, a = self.factors[name]
        return b @ a

    def norm(self) -> float:
        """Frobenius norm over all modules, computed in factored form: ‖BA‖² = tr((BᵀB)(AAᵀ))."""
        total = 0.0
        for b, a in self.factors.values():
            total += float(torch.trace((b.T.double() @ b.double()) @ (a.double() @ a.T.double())))
        return math.sqrt(max(total, 0.0))

    def save(self, path: str | Path) -> Path:
        tensors = {}
        for name, (b, a) in self.factors.items():
            tensors[f"{name}::B"] = b
            tensors[f"{name}::A"] = a
        # The manifest promises the modules the file holds, so a file that lost some is refused at load. Set on
        # this vector too, so what is in memory and what a rerun loads describe themselves the same way.
        self.manifest["modules"] = sorted(self.factors)
        return _save(tensors, self.manifest, self.FORMAT, path)

    @classmethod
    def load(cls, path: str | Path) -> WeightVector:
        tensors, manifest = _load(path, cls.FORMAT)
        factors = {}
        for key in tensors:
            if key.endswith("::B"):
                name = key[:-3]
                if f"{name}::A" not in tensors:
                    raise WsteerError(f"{path}: factor A of {name} is missing; the file is incomplete — rebuild it")
                factors[name] = (tensors[key], tensors[f"{name}::A"])
        promised = manifest.get("modules")
        if promised is not None:
            if not isinstance(promised, list):
                raise WsteerError(f"{path}: its manifest's modules entry is not a list; rebuild it with "
                                  "`python train.py`")
            lacking = sorted(set(promised) - set(factors))
            if lacking:
                raise WsteerError(f"{path}: its manifest promises {len(promised)} module(s) but the file holds factors "
                                  f"for only {len(promised) - len(lacking)} of them (lacking e.g. {lacking[0]}); the "
                                  "file is incomplete — rebuild it with `python train.py`")
        return cls(factors, manifest)


@dataclass
class DenseVector:
    tensors: dict[str, torch.Tensor]  # e.g. "model.layers.3.mlp.down_proj" -> Δb, or "12" -> a¹²
    manifest: dict = field(default_factory=dict)
    FORMAT = "wsteer.dense_vector/1"

    def norm(self) -> float:
        return math.sqrt(sum(float((t.double() ** 2).sum()) for t in self.tensors.values()))

    def save(self, path: str | Path) -> Path:
        return _save(self.tensors, self.manifest, self.FORMAT, path)

    @classmethod
    def load(cls, path: str | Path) -> DenseVector:
        tensors, manifest = _load(path, cls.FORMAT)
        return cls(tensors, manifest)


def load_vector(path: str | Path) -> WeightVector | DenseVector:
    """A saved vector of either kind, told apart by the format in its header (a missing or corrupt file gets the
    loaders' own one-line error)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
    except Exception:  # noqa: BLE001 - missing or corrupt: let the loader produce its clear message
        fmt = None
    return DenseVector.load(path) if fmt == DenseVector.FORMAT else WeightVector.load(path)
