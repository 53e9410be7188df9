"""Weight deltas (paper §5): named entries, each low-rank (B @ A) or dense, fetched one at a time.

`MemoryDelta` holds its entries; `SafetensorsDelta` reads each entry from disk only when asked, so code that
walks a delta name by name (`wsteer.monitoring.similarity`) holds one module in memory at a time. Turning
vectors, dicts, files and adapter folders into these is `wsteer.monitoring.loading`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from wsteer.errors import WsteerError
from wsteer.lora_layout import StoredDelta


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
class Stored:
    """Where one entry of an on-disk delta lives (`file`) and how its tensors make the delta (`how`)."""

    file: Path
    how: StoredDelta

    @property
    def kind(self) -> str:
        return self.how.kind


class SafetensorsDelta(Delta):
    """A delta read from safetensors files on demand: `entry` opens the file and reads only its tensors."""

    def __init__(
        self, specs: Mapping[str, Stored], label: str = "", base: Callable[[str], torch.Tensor] | None = None
    ):
        self.specs = dict(specs)
        self.label = label
        self._base = base
        if base is None and any(s.how.full for s in self.specs.values()):
            raise WsteerError("internal: full-weight entries need a base model")

    def names(self) -> list[str]:
        return list(self.specs)

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def kind(self, name: str) -> str:
        return self.specs[name].kind

    def entry(self, name: str) -> Entry:
        file, s = self.specs[name].file, self.specs[name].how
        with safe_open(str(file), framework="pt") as f:
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

