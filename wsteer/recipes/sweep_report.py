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
from pathlib import Path

from omegaconf import OmegaConf

from wsteer.artifacts import save_figure, write_text
from wsteer.errors import WsteerError

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
        if sep and name.startswith("eval/"):
            out.setdefault(float(k), {})[name.removeprefix("eval/")] = v
    return out


def collect(sweep_dir: str | Path) -> tuple[list[dict], dict | None]:
    """Rows `{method, k, behavior, job, <evaluator/metric>: value}` and the jobs' trade-off axes (if any)."""
    rows: dict[tuple[str, float], dict] = {}
    tradeoff = None
    for cfg_file in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        job = cfg_file.parent.parent
        cfg = OmegaConf.load(cfg_file)
        ks = cfg.get("k")
        ks = [ks] if isinstance(ks, (int, float)) else list(ks) if OmegaConf.is_list(ks) else None
        if ks is None:
            continue  # a composition job: no single k to plot
        if (job / "metrics.json").is_file():
            per_k = _by_k(json.loads((job / "metrics.json").read_text()))
        elif (job / "report.md").is_file():
            per_k = {float(ks[0]): _metrics_from_report((job / "report.md").read_text(), float(ks[0]))}
        else:
            continue  # a job that failed or is still running
        tradeoff = tradeoff or (OmegaConf.to_container(cfg.tradeoff) if cfg.get("tradeoff") else None)
        for k, m in per_k.items():
            if k in [float(x) for x in ks] or k == 0.0:
                key = (cfg.method.name, k)
                rows.setdefault(key, {"method": cfg.method.name, "k": k, "behavior": cfg.behavior.name,
                                      "job": job.name}).update(m)
    if not rows:
        raise WsteerError(f"no finished steer.py jobs under {sweep_dir} (looked for */.hydra/config.yaml + "
                          "metrics.json or report.md)")
    return sorted(rows.values(), key=lambda r: (r["method"], r["k"])), tradeoff


def plot_tone(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, metric, label in zip(axes, TONE, ["agreement markers", "push-back markers"], strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = [(r["k"], r[metric]) for r in rows if r["method"] == method and metric in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("k  (k < 0 removes the behavior)")
        ax.set_title(label)
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("share of held-out answers")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_tradeoff(rows: list[dict], behavior: str, capability: str, path: Path, title: str) -> Path:
    """Behavior metric (y) against capability metric (x); one line per method ordered by k, darker = larger |k|,
    k = 0 ringed; k values written next to the points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    kmax = max((abs(r["k"]) for r in rows), default=1.0) or 1.0
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        pts = sorted((r["k"], r[capability], r[behavior]) for r in rows
                     if r["method"] == method and capability in r and behavior in r)
        if not pts:
            continue
        color = plt.get_cmap("tab10")(i)
        ax.plot([p[1] for p in pts], [p[2] for p in pts], color=color, lw=1.2, alpha=0.6, label=method)
        for k, x, y in pts:
            ax.scatter([x], [y], color=color, alpha=0.25 + 0.75 * abs(k) / kmax, s=55,
                       edgecolors="black" if k == 0 else "none", zorder=3)
            ax.annotate(f"{k:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_xlabel(f"{capability}  (capability →)")
    ax.set_ylabel(f"{behavior}")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title="method (shade: |k|)", title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def run_report(sweep_dir: str | Path, out_dir: str | Path | None = None, wb=None,
               behavior_metric: str | None = None, capability_metric: str | None = None) -> dict[str, float]:
    rows, tradeoff = collect(sweep_dir)
    tradeoff = tradeoff or {}
    bm, cm = behavior_metric or tradeoff.get("behavior"), capability_metric or tradeoff.get("capability")
    out = Path(out_dir or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    behaviors = sorted({r["behavior"] for r in rows})
    names = sorted({n for r in rows for n in r if "/" in n})
    shown = [n for n in (bm, cm, *TONE) if n in names] or names
    lines = [f"# Sweep report: {sweep_dir}", "", f"behavior: {', '.join(behaviors)}"
             + (f"; trade-off: **{bm}** against **{cm}**" if bm and cm else ""), "",
             "| method | k | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['k']:g} | " + " | ".join(f"{r.get(m, float('nan')):.3f}" for m in shown) + " |")
    other = [n for n in names if n not in shown]
    if other:
        lines += ["", f"Also measured (see each job's metrics.json): {', '.join(other)}."]
    pngs = []
    if bm and cm:
        missing = [m for m in (bm, cm) if m not in names]
        if missing:
            raise WsteerError(f"the trade-off metrics {missing} are in no job's metrics.json; measured: {names}")
        pngs.append(plot_tradeoff(rows, bm, cm, out / "tradeoff.png",
                                  f"{', '.join(behaviors)}: {bm} vs {cm}"))
        lines += ["", "![trade-off](tradeoff.png)"]
    if any(TONE[0] in r for r in rows):
        pngs.append(plot_tone(rows, out / "sweep_report.png", f"Steering {', '.join(behaviors)}: held-out tone by k"))
    write_text(out / "sweep_report.md", "\n".join(lines) + "\n")
    if wb is not None:
        import wandb

        wb.log({p.stem: wandb.Image(str(p)) for p in pngs})
    print(f"wsteer: sweep report written to {out / 'sweep_report.md'}" + "".join(f" and {p}" for p in pngs))
    return {f"sweep/{r['method']}/{m}@k={r['k']:g}": r[m] for r in rows for m in names if m in r}
