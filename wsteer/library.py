"""The behavior-vector library: list the cached vectors, compose several behaviors, guard the base model.

Vectors live in the artifact cache written by `wsteer.recipes.train.ensure_artifacts`, keyed by
(base model fingerprint, behavior, source, data hash, settings hash):

    <cache>/vectors/<model>-<fp12>/<behavior>/<source>/<data hash12>-<settings hash8>/
        contrastive.safetensors, pos.safetensors, neg.safetensors
        (or bias / activation / <side>_step<n>.safetensors) + COMPLETE

Only folders with `COMPLETE` (written last) are listed; a half-written folder is never offered for reuse.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from wsteer.errors import WsteerError
from wsteer.steering.base import Steerer
from wsteer.steering.k import check_k
from wsteer.vectors import DenseVector, WeightVector

COLUMNS = ("model", "fingerprint", "behavior", "source", "artifact", "data_hash", "settings_hash", "norm",
           "created", "path")


def _read_header(path: Path) -> tuple[str | None, dict]:
    """(format, manifest) from the safetensors header, without reading the tensors."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return meta.get("format"), json.loads(meta.get("manifest", "{}"))


def _norm(path: Path, fmt: str | None, manifest: dict) -> float | None:
    if isinstance(manifest.get("norm"), (int, float)):
        return float(manifest["norm"])
    if fmt == DenseVector.FORMAT:  # bias/activation manifests carry no norm; they are small enough to read
        return DenseVector.load(path).norm()
    if fmt == WeightVector.FORMAT:
        return WeightVector.load(path).norm()
    return None


def list_vectors(cache_dir: str | Path) -> list[dict]:
    """Every artifact file in every complete cache folder under `<cache_dir>/vectors`, one dict per file.

    Each row has `model`, `fingerprint` (the manifest's full base fingerprint, else the folder's
    12-character prefix), `behavior`, `source` (cache folder: lora, bias, activation, finetune), `method`
    and `variant` (from the manifest), `artifact` (file stem: contrastive, pos, neg, …), `data_hash`,
    `settings_hash`, `path`, `norm`, `created`, `format`, `size_bytes`, and `error` (None, or why the file
    could not be read).
    Sorted by model, behavior, source, creation time and artifact.
    """
    root = Path(cache_dir).expanduser() / "vectors"
    rows: list[dict] = []
    for done in sorted(root.glob("*/*/*/*/COMPLETE")):
        folder = done.parent
        model_fp, behavior, source = folder.parts[-4], folder.parts[-3], folder.parts[-2]
        model, _, fp12 = model_fp.rpartition("-")
        data_hash, _, settings_hash = folder.name.partition("-")
        for path in sorted(folder.glob("*.safetensors")):
            row = {"model": model or model_fp, "fingerprint": fp12, "behavior": behavior, "source": source,
                   "method": None, "variant": None, "artifact": path.stem, "data_hash": data_hash,
                   "settings_hash": settings_hash, "path": str(path), "norm": None, "created": None,
                   "format": None, "size_bytes": path.stat().st_size, "error": None}
            try:
                fmt, manifest = _read_header(path)
                row.update(format=fmt, method=manifest.get("method"), variant=manifest.get("variant"),
                           created=manifest.get("created"), norm=_norm(path, fmt, manifest))
                row["fingerprint"] = manifest.get("base_fingerprint") or fp12
                row["behavior"] = manifest.get("behavior") or behavior
                row["data_hash"] = manifest.get("data_hash") or data_hash
            except (SafetensorError, OSError, ValueError, RuntimeError, WsteerError) as e:
                # One unreadable file must not hide the rest of the library; the row says what is wrong.
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["behavior"], r["source"], r["created"] or "", r["artifact"]))
    return rows


def format_listing(rows: list[dict]) -> str:
    """A markdown table of `list_vectors` rows (readable as plain text too)."""
    if not rows:
        return "no vectors found (build one with `python train.py behavior=<name>`)\n"

    def cell(row: dict, col: str) -> str:
        v = row.get(col)
        if col == "norm" and isinstance(v, float):
            return f"{v:.4g}"
        if col == "fingerprint" and v:
            return str(v)[:12]
        if col == "data_hash" and v:
            return str(v)[:12]
        if col == "artifact" and row.get("error"):
            return f"{v} (unreadable: {row['error']})"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compose(vectors: dict[str, tuple[WeightVector, float]]) -> WeightVector:
    """One WeightVector equal to Σᵢ kᵢ·wᵢ, exactly, in factored form.

    For each module, B = [k₁B₁, k₂B₂, …] (columns scaled by each part's own k) and A = [A₁; A₂; …] (rows
    stacked), so B @ A = Σ kᵢ BᵢAᵢ; a module present in only some parts gets only those parts' columns (its
    rank is smaller). Parts at k = 0 contribute nothing and are only recorded. The result carries its ks,
    so it is applied at k = 1 (`WeightSteerer(compose(...)).apply(model, 1.0)`, reversible like any
    vector); another k scales every part together. Composition concatenates factors rather than summing
    dense deltas: it stays exact and low-rank (rank Σ Rᵢ), and exports as one PEFT adapter
    (`wsteer.export.export_peft_adapter`).

    Args:
        vectors: `{name: (vector, k)}`, e.g. `{"sycophancy": (w_syc, -2.0), "evil": (w_evil, -1.0)}`.

    Returns:
        The composed vector; its manifest lists the parts (name, k, behavior, method, norm, data hash) and
        takes base model and fingerprint from them.

    Raises:
        WsteerError: no parts, a non-finite k, parts built on different base models, or a module whose shape
            differs between parts.
    """
    if not vectors:
        raise WsteerError("compose needs at least one vector, e.g. {sycophancy: (w, -2)}")
    parts = {name: (vec, check_k(k)) for name, (vec, k) in vectors.items()}
    bases = {v.manifest.get("base_fingerprint") for v, _ in parts.values()} - {None}
    if len(bases) > 1:
        raise WsteerError(f"cannot compose vectors built on different base models (fingerprints "
                          f"{sorted(bases)}); build every behavior on the same model=")
    factors: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    shapes: dict[str, tuple[tuple[int, int], str]] = {}
    for name, (vec, k) in parts.items():
        for module, (b, a) in vec.factors.items():
            shape = (b.shape[0], a.shape[1])
            if module in shapes and shapes[module][0] != shape:
                raise WsteerError(f"{module} is {shapes[module][0]} in {shapes[module][1]!r} but {shape} in "
                                  f"{name!r}; the vectors are for different architectures")
            shapes.setdefault(module, (shape, name))
            if k == 0:
                continue
            bs, as_ = factors.setdefault(module, ([], []))
            bs.append(b.float() * k)
            as_.append(a.float())
    composed = {m: (torch.cat(bs, dim=1), torch.cat(as_, dim=0)) for m, (bs, as_) in factors.items()}
    first = next(iter(parts.values()))[0].manifest
    manifest = {
        "base_model": first.get("base_model"),
        "model_name": first.get("model_name"),
        "base_fingerprint": next(iter(bases), None),
        "behavior": "+".join(str(v.manifest.get("behavior", n)) for n, (v, _) in parts.items()),
        "method": "composed",
        "parts": [{"name": n, "k": k, "behavior": v.manifest.get("behavior"),
                   "method": v.manifest.get("method"), "variant": v.manifest.get("variant"),
                   "data_hash": v.manifest.get("data_hash"), "norm": v.manifest.get("norm", v.norm()),
                   "modules": len(v.factors)}
                  for n, (v, k) in parts.items()],
    }
    out = WeightVector(composed, manifest)
    out.manifest["norm"] = out.norm() if composed else 0.0
    if not math.isfinite(out.manifest["norm"]):
        raise WsteerError("the composed vector has a non-finite norm; check the parts for NaN/inf")
    return out


def check_fingerprint(
    vector: WeightVector | DenseVector, fingerprint: str, allow_transfer: bool = False
) -> None:
    """Refuse a vector built on another base model, unless `allow_transfer` (a deliberate transfer).

    Raises:
        WsteerError: naming both fingerprints and the `allow_transfer=true` override.
    """
    # Same rule and message as every steerer's check (one place to change it).
    Steerer(vector.manifest).check_compatible(None, fingerprint, allow_transfer)


def main(argv: list[str] | None = None) -> int:
    """`python -m wsteer.library [CACHE_DIR]`: print the vector library (default: $WSTEER_CACHE or
    ~/.cache/wsteer, the same default as `paths.cache_dir`)."""
    import os
    import sys

    args = sys.argv[1:] if argv is None else argv
    cache = args[0] if args else os.environ.get("WSTEER_CACHE", "~/.cache/wsteer")
    print(format_listing(list_vectors(cache)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
