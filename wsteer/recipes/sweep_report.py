"""Collect a Hydra multirun of steer.py jobs into one table and plot (behavior markers against k, per method).

    python evaluate.py report=multirun/steer/<date_time>

Each job's metrics come from its `metrics.json` (or, for older runs, the summary table of its `report.md`).
The paper-style trade-off plot (behavior against capability) arrives with the capability evaluators.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from wsteer.artifacts import save_figure, write_text
from wsteer.errors import WsteerError

METRICS = ("agree_rate", "pushback_rate", "changed_vs_k0", "mean_words")


def _metrics_from_report(text: str, k: float) -> dict[str, float]:
    """Values in the `k = <k>` column of the report's summary table."""
    lines = text.split("## Summary", 1)[-1].split("\n\n")[1].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = header.index(f"k = {k:g}")
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = float(cells[col])
    return out


def collect(sweep_dir: str | Path) -> list[dict]:
    rows = []
    for cfg_file in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        job = cfg_file.parent.parent
        cfg = OmegaConf.load(cfg_file)
        if not isinstance(cfg.get("k"), (int, float)):
            continue
        k = float(cfg.k)
        if (job / "metrics.json").is_file():
            flat = json.loads((job / "metrics.json").read_text())
            m = {name: flat[f"eval/heldout_tone/{name}@k={k:g}"] for name in METRICS
                 if f"eval/heldout_tone/{name}@k={k:g}" in flat}
        elif (job / "report.md").is_file():
            m = _metrics_from_report((job / "report.md").read_text(), k)
        else:
            continue  # a job that failed or is still running
        rows.append({"method": cfg.method.name, "k": k, "behavior": cfg.behavior.name, "job": job.name, **m})
    if not rows:
        raise WsteerError(f"no finished steer.py jobs under {sweep_dir} (looked for */.hydra/config.yaml + report.md)")
    return sorted(rows, key=lambda r: (r["method"], r["k"]))


def plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, metric, label in zip(axes, ["agree_rate", "pushback_rate"], ["agreement markers", "push-back markers"],
                                 strict=True):
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


def run_report(sweep_dir: str | Path, out_dir: str | Path | None = None, wb=None) -> dict[str, float]:
    rows = collect(sweep_dir)
    out = Path(out_dir or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    behaviors = sorted({r["behavior"] for r in rows})
    lines = [f"# Sweep report: {sweep_dir}", "", f"behavior: {', '.join(behaviors)}; metrics are lexical markers on the "
             "held-out answers (a heuristic).", "", "| method | k | " + " | ".join(METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['k']:g} | " + " | ".join(f"{r.get(m, float('nan')):.2f}" for m in METRICS) + " |")
    write_text(out / "sweep_report.md", "\n".join(lines) + "\n")
    png = plot(rows, out / "sweep_report.png", f"Steering {', '.join(behaviors)}: held-out tone by k")
    if wb is not None:
        import wandb

        wb.log({"sweep_report": wandb.Image(str(png))})
    print(f"wsteer: sweep report written to {out / 'sweep_report.md'} and {png}")
    return {f"sweep/{r['method']}/{m}@k={r['k']:g}": r[m] for r in rows for m in METRICS if m in r}
