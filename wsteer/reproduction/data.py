"""The committed raw results of a reproduction experiment: per-seed, per-k, per-item scores as small JSON.

`export` reads a finished Hydra multirun of `steer.py` (the same collection `evaluate.py report=` uses) and keeps
only the metrics a claim needs, with each evaluator's item ids listed once and the scores as aligned lists. `load`
turns such a file back into the rows the claims and tables work on, so `docs/reproduction.md` regenerates from the
committed files alone, without the run directories or the model.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from wsteer.artifacts import git_commit, write_json
from wsteer.errors import WsteerError
from wsteer.evaluation.uncertainty import Estimate, paired_seed_difference, seed_estimate
from wsteer.reproduction import monitoring
from wsteer.reproduction.runs import read_run

FORMAT = 1
NOT_SCORED = "-"  # an item this setting did not score (null is a scored item where the metric is undefined)
BOOT_SEED = 0  # the same seed gives bitwise the same intervals, so the report regenerates exactly


@dataclass
class Row:
    """One (method, k) setting: per seed, per metric, `{item id: score}` (None where the metric is undefined)."""

    method: str
    k: float
    scores: dict[int, dict[str, dict[str, float | None]]] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.scores)


@dataclass
class Experiment:
    name: str
    meta: dict
    rows: dict[tuple[str, float], Row]

    def row(self, method: str, k: float) -> Row:
        try:
            return self.rows[(method, float(k))]
        except KeyError:
            have = ", ".join(f"{m}@{k:g}" for m, k in sorted(self.rows))
            raise WsteerError(f"experiment {self.name!r} has no row {method}@{k:g}; it has {have}") from None

    def ks(self, method: str) -> list[float]:
        return sorted(k for m, k in self.rows if m == method)

    def methods(self) -> list[str]:
        return sorted({m for m, _ in self.rows})

    def estimate(self, method: str, k: float, metric: str) -> Estimate | None:
        """The mean over seeds with its two-level bootstrap interval (seeds, then items)."""
        row = self.row(method, k)
        per_seed = [row.scores[s][metric] for s in row.seeds if metric in row.scores[s]]
        if not per_seed:
            return None
        return seed_estimate([[d[i] for i in sorted(d)] for d in per_seed], BOOT_SEED)

    def difference(self, a: tuple[str, float], b: tuple[str, float], metric: str) -> Estimate | None:
        """metric(a) − metric(b) on the seeds and items both settings share, paired (two-level paired bootstrap)."""
        ra, rb = self.row(*a), self.row(*b)
        seeds = [s for s in ra.seeds if s in rb.seeds and metric in ra.scores[s] and metric in rb.scores[s]]
        if not seeds:
            return None
        return paired_seed_difference([ra.scores[s][metric] for s in seeds], [rb.scores[s][metric] for s in seeds],
                                      BOOT_SEED)


def _compact(v: float | None):
    if v is None or not math.isfinite(float(v)):
        return None
    v = float(v)
    return int(v) if v.is_integer() else round(v, 6)


def export(sweep_dir: str | Path, out: str | Path, name: str, metrics: list[str], commands: list[str],
           notes: str = "", code_commit: str | None = None) -> Path:
    """Write the per-item scores of `metrics` from a finished sweep to `out` (JSON, atomically)."""
    from wsteer.recipes.sweep_report import (
        collect,  # the report's own reader: one definition of a sweep's rows
    )

    rows, _ = collect(sweep_dir, n_boot=2)
    measured = sorted({m for r in rows for s in r["items"].values() for m in s})
    # "<src>=<name>" keeps a metric under another name, e.g. the CoT run's evil_mcq/evil_rate as
    # evil_mcq_cot/evil_rate, so that it sits beside the zero-shot run's in one claim (`merge`)
    pairs = [tuple(m.split("=", 1)) if "=" in m else (m, m) for m in metrics]
    names = dict(pairs)
    dsts = [d for _, d in pairs]
    bad = [d for d in dsts if d.count("/") != 1 or not all(d.split("/"))]
    if len(names) != len(pairs) or len(set(dsts)) != len(dsts) or bad:
        raise WsteerError(f"--metric {metrics}: give each metric once, as <evaluator>/<metric> or "
                          "<evaluator>/<metric>=<name>/<metric>, with every kept name different")
    missing = [m for m in names if m not in measured]
    if missing:
        raise WsteerError(f"metrics {missing} are in no job's eval_items.jsonl under {sweep_dir}; "
                          f"measured: {', '.join(measured)}")
    entries = [(r["method"], r["k"], int(seed), {dst: r["items"][seed][src] for src, dst in names.items()
                                                  if src in r["items"][seed]})
               for r in rows for seed in sorted(r["items"])]
    metrics = list(names.values())
    root = Path(sweep_dir)
    starts = [p.stat().st_mtime for p in root.glob("**/.hydra/config.yaml")]
    ends = [p.stat().st_mtime for p in root.glob("**/metrics.json")]
    return _write(out, name, entries, metrics, commands, notes, code_commit,
                  round(max(ends) - min(starts)) if starts and ends else None, max(ends) if ends else None)


def _write(out, name: str, entries: list[tuple[str, float, int, dict]], metrics: list[str], commands: list[str],
           notes: str, code_commit: str | None, wall_s: float | None, finished: float | None) -> Path:
    """The results file: each evaluator's item ids once, then per (method, k, seed) the aligned scores."""
    ids: dict[str, set[str]] = {}
    for *_, by_metric in entries:
        for m in metrics:
            ids.setdefault(m.split("/", 1)[0], set()).update(by_metric.get(m, {}))
    items = {ev: sorted(v) for ev, v in sorted(ids.items())}
    rows = []
    for method, k, seed, by_metric in entries:
        scores = {m: [_compact(by_metric[m][i]) if i in by_metric[m] else NOT_SCORED
                      for i in items[m.split("/", 1)[0]]] for m in metrics if m in by_metric}
        if scores:
            rows.append({"method": method, "k": k, "seed": seed, "scores": scores})
    meta = {"format": FORMAT, "name": name, "commands": commands, "notes": notes,
            "seeds": sorted({r["seed"] for r in rows}), "n_items": {ev: len(v) for ev, v in items.items()},
            "sweep_wall_s": wall_s,
            "finished": time.strftime("%Y-%m-%d", time.gmtime(finished)) if finished is not None else None,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "commit": code_commit or git_commit()}
    write_json(out, {"meta": meta, "items": items, "rows": rows})
    return Path(out)


def export_runs(runs: dict[str, str | Path], out: str | Path, name: str, metrics: list[str], commands: list[str],
                notes: str = "", code_commit: str | None = None, wall_s: float | None = None) -> Path:
    """Like `export`, for single `evaluate.py` runs that a sweep's (method, k) cannot tell apart (a base model and
    its task fine-tune, both unsteered): each run becomes the row `(label, k = 0)` of its seed."""
    entries, ends = [], []
    for label, run in runs.items():
        cfg, by_metric = read_run(run, metrics)
        entries.append((label, 0.0, int(cfg.get("seed", 0)), by_metric))
        ends.append((Path(run) / "eval_items.jsonl").stat().st_mtime)
    return _write(out, name, entries, metrics, commands, notes, code_commit, wall_s, max(ends))


def merge(exps: list[Experiment]) -> Experiment:
    """One experiment from several results files of one claim (e.g. a judge-free sweep and the judged CoT run of the
    same vectors): rows are joined per (method, k, seed) and metric; a metric present in two files is an error."""
    if len(exps) == 1:
        return exps[0]
    rows: dict[tuple[str, float], Row] = {}
    for e in exps:
        for key, r in e.rows.items():
            row = rows.setdefault(key, Row(r.method, r.k))
            for seed, by_metric in r.scores.items():
                per = row.scores.setdefault(seed, {})
                clash = sorted(set(per) & set(by_metric))
                if clash:
                    raise WsteerError(f"{e.name}: {r.method}@{r.k:g} seed {seed} has {clash}, which an earlier results "
                                      "file of the same claim has too; export each metric from one run only")
                per.update(by_metric)
    metas = [e.meta for e in exps]
    n_items: dict[str, int] = {}
    for e in exps:
        for ev, n in e.meta.get("n_items", {}).items():
            n_items[ev if n_items.get(ev, n) == n else f"{ev} ({e.name})"] = n
    walls = [m["sweep_wall_s"] for m in metas if m.get("sweep_wall_s") is not None]
    finished = [str(m["finished"]) for m in metas if m.get("finished")]
    meta = {**metas[0], "name": "+".join(e.name for e in exps),
            "commands": [c for m in metas for c in m.get("commands", [])],
            "seeds": sorted({s for m in metas for s in m.get("seeds", [])}), "n_items": n_items,
            "sweep_wall_s": sum(walls) if walls else None,  # what was measured; a file without a time adds none
            "finished": max(finished) if finished else None,
            "machine": ", ".join(dict.fromkeys(str(m.get("machine")) for m in metas if m.get("machine"))),
            "commit": ", ".join(dict.fromkeys(str(m["commit"])[:7] for m in metas if m.get("commit"))),
            "notes": "\n\n".join(m["notes"] for m in metas if m.get("notes"))}
    return Experiment(meta["name"], meta, rows)


def load(path: str | Path):
    """An `Experiment` (per-item scores) or, for the monitoring experiment, a `monitoring.Monitoring`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        meta = raw["meta"]
        if meta.get("format") == monitoring.FORMAT:
            return monitoring.load_monitoring(raw, meta.get("name", path.stem))
        items = raw["items"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WsteerError(f"{path} is not a reproduction results file ({e!r}); re-export it with "
                          "`python -m wsteer.reproduction export`") from None
    if meta.get("format") != FORMAT:
        raise WsteerError(f"{path} has format {meta.get('format')!r}; this wsteer reads format {FORMAT} and "
                          f"{monitoring.FORMAT!r}")
    rows: dict[tuple[str, float], Row] = {}
    for r in raw["rows"]:
        row = rows.setdefault((r["method"], float(r["k"])), Row(r["method"], float(r["k"])))
        per = row.scores.setdefault(int(r["seed"]), {})
        for m, vals in r["scores"].items():
            ev_ids = items[m.split("/", 1)[0]]
            if len(vals) != len(ev_ids):
                raise WsteerError(f"{path}: {r['method']}@{r['k']} seed {r['seed']} has {len(vals)} scores for "
                                  f"{m} but {len(ev_ids)} items")
            # None stays: an item scored but outside the metric's subset still pairs with the other setting
            per[m] = {i: v for i, v in zip(ev_ids, vals, strict=True) if v != NOT_SCORED}
    return Experiment(meta.get("name", path.stem), meta, rows)
