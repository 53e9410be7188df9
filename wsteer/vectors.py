"""Weight vectors stored as low-rank factors: w = τ⁺ − τ⁻ (paper §1) is exactly a rank-2r update per module.

For a LoRA pair with ΔW± = s·B± @ A±, the contrastive vector is
    w = [s·B⁺, −s·B⁻] @ [A⁺; A⁻],
so it is stored as one (B, A) pair per weight matrix: no dense materialisation, 2r columns per module.
Files are safetensors (no pickle) with the manifest in the header metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wsteer.artifacts import atomic_path
from wsteer.errors import WsteerError

FORMAT = "wsteer.weight_vector/1"
REQUIRED_MANIFEST = ("base_model", "base_fingerprint", "behavior", "method")


@dataclass
class WeightVector:
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # param name -> (B, A), delta = B @ A
    manifest: dict = field(default_factory=dict)

    @classmethod
    def contrastive(cls, pos: dict, neg: dict, manifest: dict) -> WeightVector:
        """w = ΔW⁺ − ΔW⁻ from two `{name: (B, A)}` factor dicts (scaling already folded into B)."""
        if pos.keys() != neg.keys():
            raise WsteerError("the pos and neg adapters cover different modules; train both with the same adapter config")
        factors = {n: (torch.cat([pos[n][0], -neg[n][0]], dim=1), torch.cat([pos[n][1], neg[n][1]], dim=0)) for n in pos}
        return cls(factors, manifest)

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
        path = Path(path)
        tensors = {}
        for name, (b, a) in self.factors.items():
            tensors[f"{name}::B"] = b.contiguous()
            tensors[f"{name}::A"] = a.contiguous()
        meta = {"format": FORMAT, "manifest": json.dumps(self.manifest, sort_keys=True, default=str)}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> WeightVector:
        path = Path(path)
        if not path.is_file():
            raise WsteerError(f"vector file {path} does not exist; drop `vector=` to build or reuse the cached vector, "
                              "or point it at a .safetensors file written by wsteer")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise WsteerError(f"{path} is not a readable safetensors vector ({e}); it may be truncated or corrupt — "
                              "rebuild it with `python train.py`") from e
        if meta.get("format") != FORMAT:
            raise WsteerError(f"{path} is not a wsteer weight vector (format {meta.get('format')!r}, want {FORMAT!r})")
        try:
            manifest = json.loads(meta["manifest"])
        except (KeyError, json.JSONDecodeError) as e:
            raise WsteerError(f"{path} has no readable manifest; rebuild it with `python train.py`") from e
        missing = [k for k in REQUIRED_MANIFEST if k not in manifest]
        if missing:
            raise WsteerError(f"{path}: manifest lacks {', '.join(missing)}; rebuild it with `python train.py`")
        factors = {}
        for key in tensors:
            if key.endswith("::B"):
                name = key[:-3]
                if f"{name}::A" not in tensors:
                    raise WsteerError(f"{path}: factor A of {name} is missing; the file is incomplete — rebuild it")
                factors[name] = (tensors[key], tensors[f"{name}::A"])
        return cls(factors, manifest)
