"""How similarity numbers are shown (paper §5, Figs 8, 9, 35): markdown tables and an annotated heatmap."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from wsteer.artifacts import save_figure


def fmt(v: float) -> str:
    """A cosine for tables and plots: — where undefined."""
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
        lines.append(f"| **{row}** | " + " | ".join(fmt(float(v)) for v in m[i]) + " |")
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
                fmt(v),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if math.isfinite(v) and abs(v) > 0.6 * lim else "black",
            )
    fig.colorbar(im, ax=ax, label="cosine (scale: off-diagonal range)", shrink=0.8)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def breakdown_markdown(bd) -> str:
    """A `similarity.Breakdown` as markdown.

    The global cosine, each side's norm split between low-rank and dense entries, and per-layer and
    per-module tables of inner-product and norm shares.
    """
    a, b = bd.labels
    t = bd.total
    lines = [
        f"cosine({a}, {b}) = {fmt(t.cosine)} (⟨{a},{b}⟩ = {t.inner:.6g}, "
        f"‖{a}‖ = {math.sqrt(t.sq_a):.6g}, ‖{b}‖ = {math.sqrt(t.sq_b):.6g}); "
        f"over LoRA-covered weights only: {fmt(bd.lora_covered().cosine)}",
        "",
    ]
    split = bd.norm_split()
    for side, lab in (("a", a), ("b", b)):
        sq = split[side]["lowrank"] + split[side]["dense"]
        if sq > 0:
            lines.append(
                f"- ‖{lab}‖² split: low-rank {split[side]['lowrank'] / sq:.1%}, "
                f"dense {split[side]['dense'] / sq:.1%}"
            )
    for title, groups in (("layer", bd.by_layer()), ("module", bd.by_module())):
        lines += [
            "",
            f"| {title} | ⟨{a},{b}⟩ | share of ⟨{a},{b}⟩ | ‖{a}‖² share | ‖{b}‖² share | cosine |",
            "|---|---|---|---|---|---|",
        ]
        for k, p in groups.items():
            share = lambda x, tot: f"{x / tot:.1%}" if tot else "—"  # noqa: E731
            lines.append(
                f"| {'non-layer' if k is None else k} | {p.inner:.4g} | {share(p.inner, t.inner)} | "
                f"{share(p.sq_a, t.sq_a)} | {share(p.sq_b, t.sq_b)} | {fmt(p.cosine)} |"
            )
    return "\n".join(lines) + "\n"
