"""Compare saved weight deltas: the cosine matrix as a markdown table and a heatmap (paper §5, Figs 8, 9, 35).

    python -m wsteer.monitoring.compare evil.safetensors french.safetensors outputs/.../adapter --out DIR

Any mix of wsteer vectors (.safetensors), PEFT adapter folders and dense safetensors deltas works, as long as
they were built on the same base model. Writes `similarity.md` and `similarity.png` into the output folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from wsteer.artifacts import write_text
from wsteer.errors import WsteerError
from wsteer.monitoring.deltas import Delta
from wsteer.monitoring.loading import load_delta
from wsteer.monitoring.similarity import cosine_matrix_and_norms
from wsteer.monitoring.similarity_report import format_table, heatmap


def delta_names(paths: list[str | Path]) -> list[str]:
    """Short unique names: file stem or folder name, prefixed by parent folders where they would collide."""
    paths = [Path(p).expanduser() for p in paths]
    depth = 1
    while True:
        names = [
            "/".join([*p.parent.parts[len(p.parent.parts) - depth + 1 :], p.stem if p.is_file() else p.name])
            for p in paths
        ]
        if len(set(names)) == len(names) or depth > max(len(p.parts) for p in paths):
            return names
        depth += 1


def _describe(d: Delta) -> str:
    kinds = [d.kind(n) for n in d.names()]
    lr, dense = kinds.count("lowrank"), kinds.count("dense")
    return ", ".join(x for x in (f"{lr} low-rank" if lr else "", f"{dense} dense" if dense else "") if x)


def compare(
    paths: list[str | Path],
    out_dir: str | Path,
    *,
    names: list[str] | None = None,
    base=None,
    title: str = "Cosine similarity of weight deltas",
) -> tuple[list[str], np.ndarray]:
    """Load saved deltas, print their cosine table, write `similarity.md` and `similarity.png` into `out_dir`.

    Args:
        paths: wsteer `.safetensors` vectors, PEFT adapter folders or dense safetensors deltas (≥ 2).
        out_dir: output folder (created if needed).
        names: display names (default: file stems / folder names).
        base: base weights for PEFT adapters with `modules_to_save` (see `loading.as_delta`).
        title: heatmap title.

    Returns:
        (names, matrix) with the global cosines (NaN where a delta is zero).
    """
    if len(paths) < 2:
        raise WsteerError("comparing weight deltas needs at least two paths")
    names = list(names) if names else delta_names(paths)
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise WsteerError(f"need one unique name per path; got {names}")
    deltas = []
    for name, p in zip(names, paths, strict=True):
        d = load_delta(p, base=base)
        d.label = name
        deltas.append(d)
    matrix, norms = cosine_matrix_and_norms(deltas)
    table = format_table(names, matrix)
    print(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        f"| {n} | `{p}` | {_describe(d)} | {nv:.6g} |"
        for n, p, d, nv in zip(names, paths, deltas, norms, strict=True)
    ]
    write_text(
        out / "similarity.md",
        "\n".join(
            [
                f"# {title}",
                "",
                "Global cosine over all parameters of both deltas (paper §5; low-rank entries factored).",
                "",
                table,
                "| name | path | entries | ‖Δ‖ |",
                "|---|---|---|---|",
                *rows,
                "",
            ]
        ),
    )
    heatmap(names, matrix, out / "similarity.png", title)
    print(f"wsteer: wrote {out / 'similarity.md'} and {out / 'similarity.png'}")
    return names, matrix


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m wsteer.monitoring.compare", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "paths", nargs="+", help="wsteer vectors, PEFT adapter folders or dense safetensors deltas"
    )
    ap.add_argument("--out", default=".", help="folder for similarity.md and similarity.png")
    ap.add_argument("--names", nargs="*", help="display names, one per path")
    ap.add_argument("--base", help="base model safetensors file/folder (PEFT adapters with modules_to_save)")
    args = ap.parse_args(argv)
    try:
        compare(args.paths, args.out, names=args.names, base=args.base)
    except WsteerError as e:
        print(f"wsteer: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
