"""Cosine similarity between weight deltas (paper §5; design/paper.md §4 "Weight monitoring").

A *delta* is any change of a model's weights: a wsteer vector, a `{name: tensor}` dict, a safetensors file or
a PEFT adapter folder (`wsteer.monitoring.loading` lists the forms; `wsteer.monitoring.deltas` the types).

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

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from wsteer.errors import WsteerError
from wsteer.monitoring.deltas import Delta, Entry, LowRank
from wsteer.monitoring.loading import as_delta
from wsteer.monitoring.similarity_report import breakdown_markdown

# Dense tensors are reduced in row blocks of about this many elements (128 MiB per float64 block), so a
# vocabulary-sized embedding delta never needs a full float64 copy.
CHUNK_ELEMENTS = 1 << 24

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


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
        """The global cosine, each side's low-rank/dense norm split, and per-layer and per-module tables."""
        return breakdown_markdown(self)


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

