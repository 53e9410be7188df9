"""Collect a Hydra multirun of steer.py jobs into one table and the paper-style plots.

    python evaluate.py report=multirun/steer/<date_time>

- `tradeoff.png`: the behavior metric against the capability metric, one line per method, points shaded by |k|
  (paper Figs 2–6). Which metrics: the jobs' `tradeoff` config (set by each behavior's suite and each
  experiment), e.g. non-sycophancy against baseline accuracy for sycophancy (§3.1).
- `sweep_report.png`: the held-out tone markers against k, per method (a quick heuristic).
- `sweep_report.md`: every metric per (method, k).

Each job's metrics come from its `metrics.json` (`eval/<evaluator>/<metric>@k=<k>`; older runs: the summary
table of its `report.md`). Every job also evaluated k = 0 (the unsteered model), which starts each line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from wsteer.artifacts import save_figure, write_text
from wsteer.errors import WsteerError
from wsteer.evaluation.uncertainty import N_BOOT, SHOWN, paired_seed_difference, scores_by, seed_estimate

UNCERTAINTY_SUFFIXES = ("_stderr", "_ci_low", "_ci_high", "_n")

TONE = ("heldout_tone/agree_rate", "heldout_tone/pushback_rate")


def _metrics_from_report(text: str, k: float) -> dict[str, float]:
    """Values in the `k = <k>` column of an old report's summary table."""
    lines = text.split("## Summary", 1)[-1].split("\n\n")[1].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = header.index(f"k = {k:g}")
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[f"heldout_tone/{cells[0]}"] = float(cells[col])
    return out


def _by_k(flat: dict[str, float]) -> dict[float, dict[str, float]]:
    out: dict[float, dict[str, float]] = {}
    for key, v in flat.items():
        name, sep, k = key.rpartition("@k=")
        if sep and name.startswith("eval/") and not name.endswith(UNCERTAINTY_SUFFIXES):
            out.setdefault(float(k), {})[name.removeprefix("eval/")] = v
    return out


def items_by_k(path: Path) -> dict[float, dict[str, dict[str, float | None]]]:
    """`{k: {"<evaluator>/<metric>": {item id: score}}}` from a job's eval_items.jsonl."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out: dict[float, dict[str, dict[str, float | None]]] = {}
    for (ev, k), by_metric in scores_by(records).items():
        out.setdefault(k, {}).update({f"{ev}/{m}": scores for m, scores in by_metric.items()})
    return out


def collect(sweep_dir: str | Path, n_boot: int = N_BOOT, boot_seed: int = 0) -> tuple[list[dict], dict | None]:
    """Rows `{method, k, behavior, jobs, seeds, <evaluator/metric>: value, "est": {metric: Estimate}}` and the jobs'
    trade-off axes (if any).

    Jobs are grouped by (method, k): jobs that differ only in `seed` are one row, whose value is the mean over
    seeds and whose Estimate carries both seed and item variance (two-level bootstrap). Per-item scores come from
    each job's eval_items.jsonl; older jobs without it contribute values only (no interval).
    """
    rows: dict[tuple[str, float], dict] = {}
    tradeoff = None
    root = Path(sweep_dir)
    for cfg_file in sorted(root.glob("**/.hydra/config.yaml")):  # a job dir nests when an override holds a "/"
        job = cfg_file.parent.parent
        if job == root:
            continue  # the report's own run dir
        cfg = OmegaConf.load(cfg_file)
        ks = cfg.get("k")
        ks = [ks] if isinstance(ks, (int, float)) else list(ks) if OmegaConf.is_list(ks) else None
        if ks is None:
            continue  # a composition job: no single k to plot
        items: dict[float, dict] = {}
        if (job / "metrics.json").is_file():
            per_k = _by_k(json.loads((job / "metrics.json").read_text()))
            if (job / "eval_items.jsonl").is_file():
                items = items_by_k(job / "eval_items.jsonl")
        elif (job / "report.md").is_file():
            per_k = {float(ks[0]): _metrics_from_report((job / "report.md").read_text(), float(ks[0]))}
        else:
            continue  # a job that failed or is still running
        tradeoff = tradeoff or (OmegaConf.to_container(cfg.tradeoff) if cfg.get("tradeoff") else None)
        seed = int(cfg.get("seed", 0))
        for k, m in per_k.items():
            if k in [float(x) for x in ks] or k == 0.0:
                row = rows.setdefault((cfg.method.name, k), {"method": cfg.method.name, "k": k,
                                                             "behavior": cfg.behavior.name, "jobs": [],
                                                             "values": {}, "items": {}})
                row["jobs"].append(str(job.relative_to(root)))
                row["values"].setdefault(seed, {}).update(m)
                if k in items:
                    row["items"].setdefault(seed, {}).update(items[k])
    if not rows:
        raise WsteerError(f"no finished steer.py jobs under {sweep_dir} (looked for */.hydra/config.yaml + "
                          "metrics.json or report.md)")
    for row in rows.values():
        row["seeds"] = sorted(row["values"])
        row["est"] = {}
        names = dict.fromkeys(n for v in row["values"].values() for n in v)
        for name in names:
            per_seed = [row["items"][s][name] for s in row["seeds"] if name in row["items"].get(s, {})]
            est = seed_estimate([[d[i] for i in sorted(d)] for d in per_seed], boot_seed, n_boot) if per_seed else None
            if est is not None:
                row["est"][name] = est
                row[name] = est.value
            else:  # no per-item scores: the mean of the jobs' values
                vals = [v[name] for v in row["values"].values() if name in v]
                row[name] = sum(vals) / len(vals)
    return sorted(rows.values(), key=lambda r: (r["method"], r["k"])), tradeoff


def differences(rows: list[dict], names: list[str], n_boot: int = N_BOOT, boot_seed: int = 0,
                ) -> tuple[list[tuple[str, float, dict]], list[tuple[float, str, str, dict]]]:
    """Paired differences with two-level bootstrap intervals: each (method, k ≠ 0) against the same method's k = 0,
    and every pair of methods at the same k (same seeds, same items)."""
    by = {(r["method"], r["k"]): r for r in rows}

    def diff(a: dict, b: dict) -> dict:
        seeds = [s for s in a["seeds"] if s in b["seeds"]]
        out = {}
        for n in names:
            xa = [a["items"].get(s, {}).get(n) for s in seeds]
            xb = [b["items"].get(s, {}).get(n) for s in seeds]
            keep = [(x, y) for x, y in zip(xa, xb, strict=True) if x is not None and y is not None]
            if keep:
                d = paired_seed_difference([x for x, _ in keep], [y for _, y in keep], boot_seed, n_boot)
                if d is not None:
                    out[n] = d
        return out

    vs_k0 = [(m, k, diff(r, by[(m, 0.0)])) for (m, k), r in by.items() if k != 0 and (m, 0.0) in by]
    methods = sorted({m for m, _ in by})
    pairs = []
    for k in sorted({k for _, k in by if k != 0}):
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                if (a, k) in by and (b, k) in by:
                    pairs.append((k, a, b, diff(by[(a, k)], by[(b, k)])))
    return vs_k0, pairs


def _err(r: dict, name: str) -> tuple[float, float]:
    """Distances from the value to its 95% interval's ends (0 where there is no interval)."""
    e = r.get("est", {}).get(name)
    if e is None or not (math.isfinite(e.low) and math.isfinite(e.high)):
        return 0.0, 0.0
    return max(0.0, e.value - e.low), max(0.0, e.high - e.value)


def plot_tone(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, metric, label in zip(axes, TONE, ["agreement markers", "push-back markers"], strict=True):
        methods = list(dict.fromkeys(r["method"] for r in rows))
        step = 0.02 * (max(r["k"] for r in rows) - min(r["k"] for r in rows) or 1.0)
        for i, method in enumerate(methods):
            pts = [r for r in rows if r["method"] == method and metric in r]
            err = [_err(r, metric) for r in pts]
            shift = (i - (len(methods) - 1) / 2) * step  # side by side, so the intervals do not hide each other
            ax.errorbar([r["k"] + shift for r in pts], [r[metric] for r in pts],
                        yerr=[[e[0] for e in err], [e[1] for e in err]], marker="o", ms=4, capsize=3, label=method)
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("k  (k < 0 removes the behavior)")
        ax.set_title(label)
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("share of held-out answers (95% interval)")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_tradeoff(rows: list[dict], behavior: str, capability: str, path: Path, title: str) -> Path:
    """Behavior metric (y) against capability metric (x); one line per method ordered by k, darker = larger |k|,
    k = 0 ringed; k values written next to the points; bars on both axes are 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    kmax = max((abs(r["k"]) for r in rows), default=1.0) or 1.0
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        pts = sorted((r["k"], r[capability], r[behavior], r) for r in rows
                     if r["method"] == method and capability in r and behavior in r)
        if not pts:
            continue
        color = plt.get_cmap("tab10")(i)
        ax.plot([p[1] for p in pts], [p[2] for p in pts], color=color, lw=1.2, alpha=0.6, label=method)
        for k, x, y, r in pts:
            xe, ye = _err(r, capability), _err(r, behavior)
            ax.errorbar([x], [y], xerr=[[xe[0]], [xe[1]]], yerr=[[ye[0]], [ye[1]]], fmt="none", ecolor=color,
                        alpha=0.45, capsize=2, lw=0.9, zorder=2)
            ax.scatter([x], [y], color=color, alpha=0.25 + 0.75 * abs(k) / kmax, s=55,
                       edgecolors="black" if k == 0 else "none", zorder=3)
            ax.annotate(f"{k:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_xlabel(f"{capability}  (capability →)")
    ax.set_ylabel(f"{behavior}")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title="method (shade: |k|; bars: 95% CI)", title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _cell(r: dict, name: str) -> str:
    e = r.get("est", {}).get(name)
    if e is not None:
        return e.format(3)
    return f"{r[name]:.3f}" if name in r else ""


def run_report(sweep_dir: str | Path, out_dir: str | Path | None = None, wb=None,
               behavior_metric: str | None = None, capability_metric: str | None = None,
               n_boot: int = N_BOOT, seed: int = 0, extra_metrics: list[str] = ()) -> dict[str, float]:
    boot_seed = seed
    rows, tradeoff = collect(sweep_dir, n_boot, boot_seed)
    tradeoff = tradeoff or {}
    bm, cm = behavior_metric or tradeoff.get("behavior"), capability_metric or tradeoff.get("capability")
    out = Path(out_dir or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    behaviors = sorted({r["behavior"] for r in rows})
    names = sorted({n for r in rows for n in r if "/" in n})
    unknown = [m for m in extra_metrics if m not in names]
    if unknown:
        raise WsteerError(f"report_metrics {unknown} are in no job's results; measured: {', '.join(names)}")
    shown = [n for n in dict.fromkeys((bm, cm, *extra_metrics, *TONE)) if n in names] or names
    seeds = sorted({s for r in rows for s in r["seeds"]})
    lines = [f"# Sweep report: {sweep_dir}", "", f"behavior: {', '.join(behaviors)}"
             + (f"; trade-off: **{bm}** against **{cm}**" if bm and cm else ""), "",
             f"Training seeds: {len(seeds)} ({', '.join(map(str, seeds))}). Each cell is the mean over seeds, "
             f"{SHOWN}; n = items scored per seed. Intervals come from a two-level bootstrap (seeds, then "
             "items within each seed), so they carry both the vector's and the items' variance.", "",
             "| method | k | seeds | " + " | ".join(shown) + " |", "|---|---|---|" + "---|" * len(shown)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['k']:g} | {len(r['seeds'])} | " + " | ".join(_cell(r, m) for m in shown) + " |")
    vs_k0, pairs = differences(rows, shown, n_boot, boot_seed)
    star = "`*` marks an interval that excludes 0; without it the difference is not resolved at this n."
    if any(d for *_, d in vs_k0):
        lines += ["", "## Paired differences against k = 0 (same method, seeds and items)", "",
                  f"Δ = metric at k − metric at k = 0, two-level paired bootstrap 95% interval. {star}", "",
                  "| method | k | " + " | ".join(f"Δ {m}" for m in shown) + " |", "|---|---|" + "---|" * len(shown)]
        for m, k, d in vs_k0:
            lines.append(f"| {m} | {k:g} | " + " | ".join(d[n].format_delta(3) if n in d else "" for n in shown) + " |")
    if any(d for *_, d in pairs):
        lines += ["", "## Method against method at the same k (same seeds and items)", "",
                  f"Δ = A − B, two-level paired bootstrap 95% interval (seeds paired by number). {star}", "",
                  "| k | A − B | " + " | ".join(f"Δ {m}" for m in shown) + " |", "|---|---|" + "---|" * len(shown)]
        for k, a, b, d in pairs:
            lines.append(f"| {k:g} | {a} − {b} | " + " | ".join(d[n].format_delta(3) if n in d else ""
                                                              for n in shown) + " |")
    other = [n for n in names if n not in shown]
    if other:
        lines += ["", f"Also measured (see each job's metrics.json): {', '.join(other)}."]
    pngs = []
    if bm and cm:
        missing = [m for m in (bm, cm) if m not in names]
        if missing:  # e.g. non-sycophancy when no question was answered plainly right: say so, report the rest
            note = f"No trade-off plot: no job scored {', '.join(missing)} (no item had that metric defined)."
            print(f"wsteer: warning: {note}")
            lines += ["", note]
        else:
            pngs.append(plot_tradeoff(rows, bm, cm, out / "tradeoff.png", f"{', '.join(behaviors)}: {bm} vs {cm} "
                                      f"({len(seeds)} seed{'s' * (len(seeds) > 1)})"))
            lines += ["", "![trade-off](tradeoff.png)"]
    if any(TONE[0] in r for r in rows):
        pngs.append(plot_tone(rows, out / "sweep_report.png", f"Steering {', '.join(behaviors)}: held-out tone by k "
                              f"({len(seeds)} seed{'s' * (len(seeds) > 1)}, 95% intervals)"))
    write_text(out / "sweep_report.md", "\n".join(lines) + "\n")
    if wb is not None:
        import wandb

        wb.log({p.stem: wandb.Image(str(p)) for p in pngs})
    print(f"wsteer: sweep report written to {out / 'sweep_report.md'}" + "".join(f" and {p}" for p in pngs))
    result = {f"sweep/{r['method']}/{m}@k={r['k']:g}": r[m] for r in rows for m in names if m in r}
    result.update({f"sweep/{r['method']}/{m}_stderr@k={r['k']:g}": e.stderr for r in rows
                   for m, e in r["est"].items() if math.isfinite(e.stderr)})
    return result
