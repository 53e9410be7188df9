"""Layer sweep for activation steering (paper §1, "Layer choice"): steer at every layer at a fixed k, measure
the behavior on the held-out questions, plot metric against layer. Keep the best layer in
conf/behavior_model/<behavior>_<model>.yaml (`activation_layer:`)."""

from __future__ import annotations

from pathlib import Path

from wsteer.artifacts import save_figure, write_text
from wsteer.errors import WsteerError
from wsteer.evaluation.lexical import tone_metrics, tone_records
from wsteer.evaluation.uncertainty import SHOWN, summarize


def parse_layers(spec, n_layers: int) -> list[int]:
    if spec == "all":
        return list(range(1, n_layers + 1))
    layers = [int(x) for x in (spec if isinstance(spec, (list, tuple)) else list(spec))]
    bad = [x for x in layers if not 1 <= x <= n_layers]
    if bad:
        raise WsteerError(f"layers={bad} out of range: this model has layers 1..{n_layers}")
    return layers


def sweep_layers(ctx, steerer, ks: list[float], answer_fn, run=None) -> dict[str, float]:
    """Run `answer_fn` at each layer for each k ≠ 0; write layer_sweep.md/.png into the run dir."""
    from wsteer.steering.activation import ActivationSteerer

    if not isinstance(steerer, ActivationSteerer) or steerer.all_layers:
        raise WsteerError("layers= sweeps the single-layer activation method; use method=activation")
    layers = parse_layers(ctx.cfg.layers, steerer.n_layers)
    ks = [k for k in ks if k != 0] or [1.0]
    base = answer_fn(ctx, steerer, [0.0])[0.0]
    rows: dict[float, dict[int, dict[str, float]]] = {k: {} for k in ks}
    errs: dict[float, dict[int, dict[str, float]]] = {k: {} for k in ks}
    questions = ctx.behavior.heldout_questions
    for layer in layers:
        steerer.layer = layer
        answers = answer_fn(ctx, steerer, ks)
        for k in ks:
            est = summarize(tone_records(questions, {0.0: base, k: answers[k]}))[("heldout_tone", k)]
            rows[k][layer] = {n: e.value for n, e in est.items()}
            errs[k][layer] = {n: e.stderr for n, e in est.items()}
    ref = tone_metrics(base)
    lines = ["# Activation steering layer sweep", "",
             f"k = {', '.join(f'{k:g}' for k in ks)}; k = 0: agree {ref['agree_rate']:.2f}, "
             f"push-back {ref['pushback_rate']:.2f}. Metrics are lexical markers (a heuristic) on "
             f"n = {len(questions)} held-out questions; {SHOWN}. Rates that differ by less than about two standard "
             "errors between layers are not resolved at this n.", "",
             "| k | layer | agree_rate | pushback_rate | changed_vs_k0 | mean_words |", "|---|---|---|---|---|---|"]
    for k in ks:
        for layer, m in rows[k].items():
            e = errs[k][layer]
            lines.append(f"| {k:g} | {layer} | {m['agree_rate']:.2f} ± {e['agree_rate']:.2f} | "
                         f"{m['pushback_rate']:.2f} ± {e['pushback_rate']:.2f} | "
                         f"{m['changed_vs_k0']:.2f} ± {e['changed_vs_k0']:.2f} | {m['mean_words']:.1f} |")
    write_text(ctx.out_dir / "layer_sweep.md", "\n".join(lines) + "\n")
    png = plot_sweep(rows, ref, ctx.out_dir / "layer_sweep.png", errs=errs, title=f"{ctx.behavior.name} · {ctx.cfg.model.name}")
    if run is not None:
        import wandb

        run.log({"layer_sweep": wandb.Image(str(png))})
        # one history row per layer, with `layer` as the step metric: "marker vs layer" is one W&B line plot
        run.define_metric("layer")
        run.define_metric("layer_sweep/*", step_metric="layer")
        for layer in layers:
            run.log({"layer": layer, **{f"layer_sweep/{name}@k={k:g}": rows[k][layer][name] for k in ks
                                        for name in rows[k][layer]},
                     **{f"layer_sweep/{name}_stderr@k={k:g}": errs[k][layer][name] for k in ks
                        for name in errs[k][layer]}})
    return {f"sweep/{name}@k={k:g}@layer={layer}": v
            for k, by_layer in rows.items() for layer, m in by_layer.items() for name, v in m.items()}


def plot_sweep(rows, ref: dict[str, float], path: Path, title: str, errs=None) -> Path:
    """One panel per marker against layer; shaded bands are ±1.96 standard errors (when `errs` is given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharex=True)
    for ax, metric, label in zip(axes, ["agree_rate", "pushback_rate", "changed_vs_k0"],
                                 ["agreement markers", "push-back markers", "answers changed vs k = 0"], strict=True):
        for k, by_layer in rows.items():
            xs, ys = list(by_layer), [m[metric] for m in by_layer.values()]
            (line,) = ax.plot(xs, ys, marker="o", ms=3, label=f"k = {k:g}")
            if errs is not None:
                half = [1.959963984540054 * errs[k][x][metric] for x in xs]
                ax.fill_between(xs, [y - h for y, h in zip(ys, half, strict=True)],
                                [y + h for y, h in zip(ys, half, strict=True)], color=line.get_color(), alpha=0.15)
        if metric in ref:
            ax.axhline(ref[metric], color="grey", ls="--", lw=1, label="k = 0")
        ax.set_title(label)
        ax.set_xlabel("layer")
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("share of held-out answers")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"Activation steering by layer — {title}")
    fig.tight_layout()
    return save_figure(fig, path)
