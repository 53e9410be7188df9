"""Evaluation data from anywhere: a local JSONL/JSON/CSV/Parquet file or a hub dataset id, through
`datasets.load_dataset`, with the mapping from its columns to an evaluator's item fields in the evaluator's YAML
(the `dataset_path` / `doc_to_*` idea of lm-evaluation-harness, kept to a column map).

    evaluator:
      factual_qa:
        dataset:
          path: my_questions.jsonl        # or a hub id such as "org/name" (needs network or a warm HF cache)
          name: null                      # the hub dataset's configuration
          split: train                    # a local file is one split, "train"
          id: null                        # the column holding a stable item id; null = "<file stem>-<row>"
          id_format: null                 # or ids made from the row number, e.g. "truthfulqa-{row:04d}"
          columns: {question: q, correct: gold, incorrect: distractor}   # item field: column
          fill: {}                        # a value for a field the file has no column for, e.g. {category: x}

The shipped sets are such nodes too, under `sources:` in `conf/evaluator/<name>.yaml` (`source=` picks one; a
relative path there is found in the wsteer checkout from any working directory). A set that needs code to become
items (parsing, generation, joining two files) names its function instead: `{loader: module.function}`, called
with the evaluator and the node (`evaluation/datasets.py`).

Each evaluator declares the fields it needs (`Evaluator.dataset_fields`: field → required); a missing column or
an empty required value is refused with the row number. Item ids must be unique: the item store keys finished
items by id, and the store key hashes the loaded items, so an edited file never reuses old answers.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

from wsteer.errors import WsteerError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".tsv": "csv"}


def _load(path: str, name: str | None, split: str):
    from datasets import load_dataset

    local = Path(path).expanduser()
    if not local.exists() and not local.is_absolute() and (PROJECT_ROOT / local).exists():
        local = PROJECT_ROOT / local  # a shipped set (data/eval/...) from any working directory
    if local.exists():
        builder = BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise WsteerError(f"dataset.path={path}: a local file must end in {', '.join(BUILDERS)}")
        kwargs = {"delimiter": "\t"} if local.suffix.lower() == ".tsv" else {}
        try:
            return load_dataset(builder, data_files=str(local), split="train", **kwargs), local.stem
        except Exception as e:  # noqa: BLE001 - datasets raises many types for a malformed file
            raise WsteerError(f"dataset.path={path} could not be read as {builder} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if "/" not in path or path.startswith((".", "/", "~")):
        raise WsteerError(f"dataset.path={path}: no such file (give a local .jsonl/.csv/.parquet file, or a hub "
                          "dataset id such as org/name)")
    try:
        return load_dataset(path, name, split=split), path.rsplit("/", 1)[-1]
    except Exception as e:  # noqa: BLE001 - offline, unknown id, unknown split: all one clear line
        raise WsteerError(f"could not load dataset {path!r} (name={name}, split={split}) from the Hugging Face hub "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); this needs network or a warm "
                          "HF datasets cache, or give a local file as dataset.path") from e


def load_items(spec: Mapping, evaluator: str, fields: Mapping[str, bool]) -> list[dict]:
    """The rows of `spec.path` as item dicts `{"id", <field>: value}` through the column map `spec.columns`."""
    if not fields:
        raise WsteerError(f"evaluator {evaluator} does not take a dataset= yet; use its source= options")
    path = spec.get("path")
    if not path:
        raise WsteerError(f"evaluator {evaluator}: dataset.path is empty; give a local file or a hub dataset id")
    columns = dict(spec.get("columns") or {})
    unknown = sorted(set(columns) - set(fields))
    if unknown:
        raise WsteerError(f"evaluator {evaluator}: dataset.columns names unknown field(s) {unknown}; its fields "
                          f"are {', '.join(f + ('' if req else ' (optional)') for f, req in fields.items())}")
    rows, stem = _load(str(path), spec.get("name"), str(spec.get("split") or "train"))
    available = set(rows.column_names)
    mapping = {f: columns.get(f, f) for f in fields if columns.get(f, f) in available or fields[f]}
    missing = [f"{f} (column {c!r})" for f, c in mapping.items() if c not in available]
    if missing:
        raise WsteerError(f"evaluator {evaluator}: {path} has no column for {', '.join(missing)}; its columns are "
                          f"{', '.join(sorted(available))}. Map them in the YAML: dataset.columns.<field>=<column>")
    id_col, id_format = spec.get("id"), spec.get("id_format")
    if id_col and id_col not in available:
        raise WsteerError(f"evaluator {evaluator}: dataset.id={id_col!r} is not a column of {path}")
    fill = dict(spec.get("fill") or {})
    if set(fill) - set(fields):
        raise WsteerError(f"evaluator {evaluator}: dataset.fill names unknown field(s) {sorted(set(fill) - set(fields))}")
    mapping = {f: c for f, c in mapping.items() if f not in fill}
    items, seen = [], set()
    for i, row in enumerate(rows):
        item = {"id": str(row[id_col]) if id_col else id_format.format(row=i) if id_format else f"{stem}-{i:05d}",
                **fill}
        for field, col in mapping.items():
            value = row[col]
            if fields[field] and (value is None or (isinstance(value, str) and not value.strip())):
                raise WsteerError(f"evaluator {evaluator}: {path} row {i + 1} has an empty {col!r} ({field})")
            item[field] = value
        if item["id"] in seen:
            raise WsteerError(f"evaluator {evaluator}: {path} row {i + 1} repeats id {item['id']!r}; ids must be "
                              "unique (finished items are stored by id)")
        seen.add(item["id"])
        items.append(item)
    if not items:
        raise WsteerError(f"evaluator {evaluator}: {path} has no rows")
    return items


def shipped_sources(evaluator: str) -> dict:
    """The `sources:` node of conf/evaluator/<evaluator>.yaml: the shipped sets of an evaluator built in Python
    (Hydra passes the node itself), so each set is described in one place."""
    from omegaconf import OmegaConf

    path = PROJECT_ROOT / "conf" / "evaluator" / f"{evaluator}.yaml"
    if not path.exists():
        raise WsteerError(f"evaluator {evaluator}: its shipped sets are described in {path}, which is missing "
                          "(run from a wsteer checkout, or pass sources= / dataset= yourself)")
    node = OmegaConf.load(path)[evaluator].get("sources")
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def load_source(ev, spec: Mapping) -> list[dict]:
    """Items of one shipped set: a dataset node through the column map and `ev.from_dataset`, or a loader."""
    spec = dict(spec)
    if spec.get("loader"):
        module, _, name = str(spec["loader"]).rpartition(".")
        try:
            loader = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise WsteerError(f"evaluator {ev.name}: loader {spec['loader']!r} is not an importable function "
                              "(module.function)") from e
        return loader(ev, spec)
    return ev.from_dataset(load_items(spec, ev.name, ev.dataset_fields))


def as_list(value) -> list[str]:
    """A list column, or one string holding several values separated by `;` (CSV files have no lists)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(";") if v.strip()]
    return [str(v) for v in value]
