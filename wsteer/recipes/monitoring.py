"""The monitoring experiment (paper §5, small scale): is a bad-advice fine-tune's update closer to behavior
vectors (evil, bad advice) than a control fine-tune's update is?

    python train.py experiment=monitoring

1. Contrastive vectors on the base model: `evil` (shipped data), `bad_advice` (bad vs good advice we wrote) and
   the control `french` (French vs English answers).
2. Two task fine-tunes with the live `CosineMonitor` on: bad advice (the "misaligned" fine-tune) and a neutral
   control set; cosines to each vector every few steps (curves).
3. At the same checkpoints, the emergent-misalignment first-plot questions answered by the model being
   fine-tuned (`EMProbe`), scored by the configured judge for the evil trait and coherence when it can (judge=openai);
   with judge=none the answers are recorded per checkpoint for judging later.
4. Cosine matrices w–τ, w–w and τ–τ as heatmaps.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from wsteer.artifacts import PROJECT_ROOT, save_figure, write_text
from wsteer.behaviors import Behavior
from wsteer.errors import WsteerError
from wsteer.monitoring.similarity import cosine_matrix
from wsteer.monitoring.similarity_report import format_table, heatmap

CONF = PROJECT_ROOT / "conf"


def behavior_from_conf(name: str) -> Behavior:
    """The behavior `name` as `conf/behavior/<name>.yaml` defines it (the monitoring experiment builds several)."""
    node = OmegaConf.load(CONF / "behavior" / f"{name}.yaml")
    return Behavior.from_cfg(node.behavior if "behavior" in node else node)


def _curves(csvs: dict[str, Path], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {name: list(csv.DictReader(p.open())) for name, p in csvs.items() if p.is_file()}
    refs = sorted({r["reference"] for rs in rows.values() for r in rs})
    fig, axes = plt.subplots(1, len(refs), figsize=(4.2 * len(refs), 3.6), squeeze=False)
    for ax, ref in zip(axes[0], refs, strict=True):
        for name, rs in rows.items():
            pts = [(int(r["step"]), float(r["cosine"])) for r in rs if r["reference"] == ref]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"cos(update, w_{ref})")
        ax.set_xlabel("training step")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Monitoring: cosine of the fine-tuning update to behavior vectors")
    fig.tight_layout()
    return save_figure(fig, path)


def _em_section(probes: dict, out: Path) -> str:
    """The EM probe per checkpoint: judged scores (when a judge scored them) and the final answers."""
    lines = ["## Emergent-misalignment first-plot questions, at the monitor's checkpoints", ""]
    judged = any(r["misaligned_rate"] is not None for p in probes.values() for r in p.history)
    if judged:
        lines += ["| fine-tune | step | misaligned rate | mean evil score | mean coherence |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {r['step']} | {r['misaligned_rate']:.2f} | {r['trait']:.1f} | {r['coherence']:.1f} |"
                  for n, p in probes.items() for r in p.history]
        _em_curves(probes, out / "em_curves.png")
        lines += ["", "![EM probe](em_curves.png)"]
    else:
        lines += ["Unjudged (judge=none): every checkpoint's answers are in `<fine-tune>/em_probe.jsonl`; score them "
                  "after the run with `python -m wsteer.reproduction judge-recorded <this run's folder> --override "
                  "judge=openai` (a run with judge=openai scores them in the run, but also filters the vectors' data "
                  "with that judge)."]
    lines += ["", "Answers at the last checkpoint:", ""]
    finals = {n: p.last_answers for n, p in probes.items()}
    questions = next(iter(probes.values())).questions
    for i, q in enumerate(questions):
        lines.append(f"- **{q}**")
        lines += [f"  - {n}: {finals[n][i][:300]!r}" for n in finals]
    return "\n".join(lines) + "\n"


def _em_curves(probes: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for n, p in probes.items():
        pts = [(r["step"], r["misaligned_rate"]) for r in p.history if r["misaligned_rate"] is not None]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=n)
    ax.set_xlabel("training step")
    ax.set_ylabel("misaligned rate (EM questions)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def run_experiment(ctx, wb=None) -> dict[str, float]:
    from wsteer.data.pairs import build_judge
    from wsteer.monitoring.em_probe import EMProbe
    from wsteer.recipes.task_finetune import train_task
    from wsteer.training.build import ensure_artifacts
    from wsteer.training.trainer import build_trainer

    cfg, mon = ctx.cfg, ctx.cfg.monitoring
    if cfg.trainer.get("devices", 1) != 1:
        # several fine-tunes in one job: DDP helper ranks leave after the first one (stop_helper_ranks)
        raise WsteerError(f"trainer.devices={cfg.trainer.devices}: the monitoring experiment trains several "
                          "fine-tunes in one job and runs on one device; use trainer.devices=1")
    out = ctx.out_dir
    vectors: dict[str, Path] = {}
    taus: dict[str, Path] = {}
    for name in mon.vectors:  # 1. contrastive vectors, built (or reused) on the base model
        sub = replace(ctx, behavior=behavior_from_conf(name))
        _, folder, _ = ensure_artifacts(sub, "lora", wb)
        vectors[name] = folder / "contrastive.safetensors"
        taus[f"{name}+"] = folder / "pos.safetensors"

    adapters, csvs, probes = {}, {}, {}
    em_questions = [q["question"] for q in json.loads((PROJECT_ROOT / mon.em_questions).read_text())]
    # The EM answers may be scored by another judge than the one that filters the vectors' data (paper §5 scores
    # EM answers with an LLM judge even when the persona data needs none): monitoring.em_judge, else `judge`.
    judge = build_judge(mon.get("em_judge") or cfg.judge)
    evil = behavior_from_conf("evil")
    for name, data in mon.finetunes.items():  # 2. task fine-tunes with the live monitor and the EM probe
        run_cfg = cfg.copy()
        OmegaConf.set_struct(run_cfg, False)
        monitor = {"_target_": "wsteer.monitoring.callback.CosineMonitor", "every_n_steps": mon.every_n_steps,
                   "references": {k: str(v) for k, v in vectors.items()}, "csv_path": str(out / name / "monitor.csv")}
        # replaces any configured callbacks: this fine-tune is monitored against the vectors built above
        run_cfg.callbacks = {"cosine_monitor": monitor}
        run_cfg = OmegaConf.merge(run_cfg, {"task": {"data": str(PROJECT_ROOT / data)}})
        sub = replace(ctx, cfg=run_cfg, out_dir=out / name)
        sub.out_dir.mkdir(parents=True, exist_ok=True)
        probe = probes[name] = EMProbe(em_questions, ctx.tokenizer, judge, "evil", evil.description,
                                       every_n_steps=mon.get("em_every_n_steps") or mon.every_n_steps,
                                       jsonl_path=out / name / "em_probe.jsonl",
                                       max_new_tokens=cfg.eval.max_new_tokens)

        def make_trainer(*args, _probe=probe, **kwargs):
            trainer = build_trainer(*args, **kwargs)
            trainer.callbacks.append(_probe)
            return trainer

        adapters[name], _ = train_task(sub, "task", make_trainer, wb)
        csvs[name] = out / name / "monitor.csv"
        ctx.model.eval()

    # 3. cosine matrices and heatmaps
    w = {f"w_{k}": v for k, v in vectors.items()}
    tau = {f"τ_{k}": v for k, v in adapters.items()} | {f"τ_{k}": v for k, v in taus.items()}
    results, tables = {}, []
    for title, deltas in [("w vs τ", w | tau), ("w vs w", w), ("τ vs τ", tau)]:
        names, m = cosine_matrix(deltas)
        slug = title.replace(" ", "_").replace("τ", "tau")
        heatmap(names, m, out / f"cosine_{slug}.png", title=f"Cosine similarity: {title}")
        tables.append(f"## {title}\n\n{format_table(names, m)}")
        results.update({f"cos/{a}/{b}": float(m[i][j]) for i, a in enumerate(names) for j, b in enumerate(names) if i < j})
    _curves(csvs, out / "monitor_curves.png")
    write_text(out / "monitoring.md", "# Monitoring experiment (paper §5)\n\n" + "\n\n".join(tables)
               + "\n\n" + _em_section(probes, out))
    for name, probe in probes.items():
        for row in probe.history:
            results.update({f"em/{name}/{k}@step={row['step']}": v for k, v in row.items()
                            if k != "step" and v is not None})
    if wb is not None:
        import wandb

        wb.log({p.stem: wandb.Image(str(p)) for p in out.glob("*.png")})
        wb.summary.update(results)
    print(f"wsteer: monitoring report in {out / 'monitoring.md'}; heatmaps and curves next to it")
    return results
