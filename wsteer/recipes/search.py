"""steer.py search=capability_budget: the strongest k (and, for activation steering, layer) within a capability
budget, chosen on a validation split and reported on held-out items (paper §4: methods compared at equal
capability; the decision logic is `wsteer.search`).

Items: every evaluator's seeded stratified order is cut in two. k is tuned on the first `val_items` items and the
chosen setting is reported, next to k = 0, on the next `test_items`, so the reported numbers are not the ones the
choice was made on. Every evaluation goes through the resumable item store, so k = 0 is answered once and a killed
or repeated search reuses what it finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsteer.artifacts import save_figure, write_json, write_text
from wsteer.config import instantiate
from wsteer.data.pairs import build_judge
from wsteer.errors import WsteerError
from wsteer.evaluation.runner import bootstrap_settings, run_evaluators, write_items
from wsteer.evaluation.uncertainty import SHOWN, differences_vs_k0, summarize
from wsteer.recipes._common import merge_base_adapter, prepare
from wsteer.recipes.layer_sweep import parse_layers
from wsteer.recipes.steer import load_steerer
from wsteer.search import Budget, Trial, bisect_k, choose
from wsteer.steering.activation import ActivationSteerer
from wsteer.tracking import log_by_k, start_run


@dataclass(frozen=True)
class Settings:
    behavior: str  # <evaluator>/<metric>
    capability: str
    goal: str
    sign: int
    budget: Budget
    k_max: float
    steps: int
    inner: int
    layers: object  # None (the configured layer) | "all" | a list
    val_items: int
    test_items: int | None

    @property
    def evaluators(self) -> list[str]:
        return list(dict.fromkeys(m.split("/", 1)[0] for m in (self.behavior, self.capability)))


def settings(cfg: DictConfig) -> Settings:
    """`search.*`, with the metrics defaulting to the behavior suite's trade-off axes; bad values fail here."""
    s, trade = cfg.search, cfg.get("tradeoff") or {}
    metrics = {}
    for axis in ("behavior", "capability"):
        m = s.get(axis) or trade.get(axis)
        if not m or "/" not in str(m):
            raise WsteerError(f"search.{axis}={m!r}: name the metric as <evaluator>/<metric> (e.g. "
                              f"search.{axis}=factual_qa/accuracy); this behavior's suite sets no trade-off default")
        metrics[axis] = str(m)
    for key in ("val_items", "test_items"):
        v = s.get(key)
        if not (v is None and key == "test_items") and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise WsteerError(f"search.{key}={v!r} must be a positive integer (e.g. search.{key}=40)")
    budget = Budget(s.budget, s.rule, bool(s.higher_is_better))
    out = Settings(metrics["behavior"], metrics["capability"], s.goal, s.sign, budget, float(s.k_max), s.steps,
                   s.get("inner", 1), s.get("layers"), s.val_items, s.get("test_items"))
    selected = cfg.get("evaluator") or {}
    missing = [e for e in out.evaluators if e not in selected]
    if missing:
        raise WsteerError(f"search needs evaluator(s) {', '.join(missing)} for {out.behavior} and {out.capability}; "
                          f"add them: 'evaluator=[{','.join(out.evaluators)}]'")
    return out


def split_evaluators(cfg: DictConfig, names: list[str], offset: int, limit: int | None) -> list:
    """The named evaluators on items [offset, offset + limit) of their stratified order (`eval.max_items` caps
    the limit, as everywhere: debug=smoke runs 4 items per split)."""
    cap = cfg.get("eval", {}).get("max_items")
    if cap is not None:
        limit = cap if limit is None else min(limit, cap)
    out = []
    for name in names:
        ecfg = OmegaConf.create(OmegaConf.to_container(cfg.evaluator[name], resolve=True))  # unlocked copy
        ecfg.limit, ecfg.offset = limit, offset
        out.append(instantiate(ecfg, exclude=("name", "report")))
    return out


def _delta(records: list[dict], metric: str, k: float, boot: dict):
    ev, name = metric.split("/", 1)
    return differences_vs_k0(records, **boot).get((ev, float(k)), {}).get(name)


def _trial_fn(ctx, steerer, evaluators, s: Settings, judge, boot: dict, layer):
    def evaluate(k: float) -> Trial:
        k = round(k, 6)
        where = f"k={k:g}" + (f" at layer {layer}" if layer is not None else "")
        print(f"wsteer: search: evaluating {where} on {s.val_items} validation items")
        try:
            _, records = run_evaluators(ctx, evaluators, steerer, [0.0, k], judge=judge)
        except WsteerError as e:  # e.g. non-finite logits at this |k|: inadmissible, and larger |k| is skipped
            return Trial(k, layer, None, None, False, note=str(e).split(";")[0])
        beh, cap = _delta(records, s.behavior, k, boot), _delta(records, s.capability, k, boot)
        trial = Trial(k, layer, beh, cap, s.budget.admits(cap))
        print(f"wsteer: search: {where}: Δ{s.capability} {_fmt(cap)}, Δ{s.behavior} {_fmt(beh)} → "
              + ("within budget" if trial.admissible else "over budget"))
        return trial
    return evaluate


def _fmt(e) -> str:
    return e.format_delta() if e is not None else "n/a"


def run(cfg: DictConfig) -> dict[str, float]:
    s = settings(cfg)  # before the model load: a bad search setting costs a second
    split_evaluators(cfg, s.evaluators, 0, s.val_items)  # a typo in an evaluator setting fails here too
    ctx = prepare(cfg)
    wb = start_run(cfg, "search")
    try:
        steerer, vpath, built = load_steerer(ctx, wb)
        merge_base_adapter(ctx)
        layers = [None]
        if isinstance(steerer, ActivationSteerer) and not steerer.all_layers:
            layers = parse_layers(s.layers, steerer.n_layers) if s.layers is not None else [steerer.layer]
        elif s.layers is not None:
            raise WsteerError(f"search.layers searches the layer of method=activation; method={cfg.method.name} has "
                              "no layer to choose (drop search.layers)")
        judge, boot = build_judge(cfg.judge), bootstrap_settings(cfg)
        val = split_evaluators(cfg, s.evaluators, 0, s.val_items)
        trials: list[Trial] = []
        with ctx.timed("search"):
            for layer in layers:
                if layer is not None:
                    steerer.layer = layer
                trials += bisect_k(_trial_fn(ctx, steerer, val, s, judge, boot, layer), s.sign, s.k_max, s.steps,
                                 s.inner)
        best = choose(trials, s.goal)
        if best is not None and best.layer is not None:
            steerer.layer = best.layer
        ks = [0.0] + ([best.k] if best is not None else [])
        test = split_evaluators(cfg, s.evaluators, s.val_items, s.test_items)
        print(f"wsteer: search: reporting k={ks[-1]:g} next to k=0 on held-out items")
        with ctx.timed("held_out"):
            flat, records = run_evaluators(ctx, test, steerer, ks, judge=judge, wb=wb)
        write_items(ctx.out_dir, records)
        summary, diffs = summarize(records, **boot), differences_vs_k0(records, **boot)
        result = {"search/k": ks[-1], **({"search/layer": float(best.layer)} if best is not None and best.layer is not None else {}), **flat}
        doc = report(cfg, s, steerer.describe(), trials, best, summary, diffs, ks, vpath, built)
        write_text(ctx.out_dir / "search.md", doc)
        write_json(ctx.out_dir / "search.json", {
            "chosen": {"k": ks[-1], "layer": best.layer if best else None},
            "settings": {**OmegaConf.to_container(cfg.search, resolve=True), "behavior": s.behavior,
                         "capability": s.capability},
            "trials": [_trial_row(t) for t in trials], "held_out": flat})
        write_json(ctx.out_dir / "metrics.json", result)
        png = plot(trials, best, s, ctx.out_dir / "search.png", f"{ctx.behavior.name} · {cfg.method.name} · "
                   f"{cfg.model.name}")
        if wb is not None:
            _log(wb, trials, s, png)
            log_by_k(wb, flat, cfg.method.name, cfg.seed, ks, steerer.manifest)
            wb.summary.update({k: v for k, v in result.items() if k.startswith("search/")})
        print(f"wsteer: search chose k={ks[-1]:g}" + (f" at layer {best.layer}" if best is not None and best.layer is not None else "")
              + f"; report written to {ctx.out_dir / 'search.md'}")
        return result
    finally:
        if wb is not None:
            wb.finish()


def _trial_row(t: Trial) -> dict:
    def est(e):
        return None if e is None else {"value": e.value, "low": e.low, "high": e.high, "stderr": e.stderr, "n": e.n}
    return {"k": t.k, "layer": t.layer, "admissible": t.admissible, "behavior_delta": est(t.behavior),
            "capability_delta": est(t.capability), "note": t.note}


def report(cfg, s: Settings, method: str, trials: list[Trial], best: Trial | None, summary, diffs, ks,
           vpath, built) -> str:
    b = s.budget
    rule = ("the 95% interval of Δ" if b.rule == "interval" else "the estimate of Δ") + f" {s.capability}"
    lines = [f"# Strength{' and layer' if best is not None and best.layer is not None else ''} search: {cfg.behavior.name}, "
             f"method={cfg.method.name}", "",
             f"- **method**: {method}",
             f"- **vector**: {vpath} ({'built in this run' if built else 'reused'})" if vpath else "- **vector**: none",
             f"- **goal**: {'raise' if s.goal == 'max' else 'lower'} `{s.behavior}` with k "
             f"{'< 0' if s.sign < 0 else '> 0'}, |k| ≤ {s.k_max:g}",
             f"- **budget**: {rule} must stay within a {'drop' if b.higher_is_better else 'rise'} of {b.max_drop:g} "
             f"against k = 0 (`search.rule={b.rule}`)",
             f"- **validation**: the first {s.val_items} items of each evaluator's stratified order; **held-out**: "
             f"the next {s.test_items if s.test_items else 'all remaining'} (capped by `eval.max_items` if set)",
             f"- **seed**: {cfg.seed} (one vector; run `-m seed=0,1,2` for the vector's variance)", "",
             "## Trials (validation split; Δ against k = 0 on the same items, paired 95% interval)", "",
             "| layer | k | Δ capability | Δ behavior | within budget |", "|---|---|---|---|---|"]
    for t in trials:
        mark = " **← chosen**" if t is best else ""
        lines.append(f"| {t.layer if t.layer is not None else '–'} | {t.k:g} | {_fmt(t.capability)} | "
                     f"{_fmt(t.behavior)} | {'yes' if t.admissible else 'no'}{mark}"
                     + (f" ({t.note})" if t.note else "") + " |")
    lines += [""]
    if best is None:
        lines += [f"**No k within the budget moved `{s.behavior}`** in the wanted direction on the validation "
                  "split: within this budget the answer is the unsteered model (k = 0). Loosen the budget, raise "
                  "`search.val_items` (narrower intervals) or check `search.sign`/`search.goal`.", ""]
    else:
        lines += [f"**Chosen: k = {best.k:g}**" + (f" at layer {best.layer}" if best.layer is not None else "")
                  + ". Re-measured below on held-out items the choice never saw.", ""]
    lines += ["## Held-out items", "", f"{SHOWN}; Δ is paired against k = 0 on the same items (`*`: the interval "
              "excludes 0; without it the difference is not resolved at this n).", "",
              "| metric | " + " | ".join(f"k = {k:g}" for k in ks) + (" | Δ vs k = 0 |" if len(ks) > 1 else " |"),
              "|---|" + "---|" * len(ks) + ("---|" if len(ks) > 1 else "")]
    for metric in (s.behavior, s.capability):
        ev, name = metric.split("/", 1)
        cells = [summary.get((ev, float(k)), {}).get(name) for k in ks]
        row = f"| `{metric}` | " + " | ".join(c.format() if c else "n/a" for c in cells) + " |"
        if len(ks) > 1:
            d = diffs.get((ev, float(ks[-1])), {}).get(name)
            row += f" {_fmt(d)} |"
        lines.append(row)
    return "\n".join(lines + ["", "![search](search.png)", ""])


def plot(trials: list[Trial], best: Trial | None, s: Settings, path: Path, title: str) -> Path:
    """Δbehavior against Δcapability for every trial (95% intervals), the budget as a shaded band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    sign = -1 if s.budget.higher_is_better else 1
    ax.axvline(sign * s.budget.max_drop, color="tab:red", ls="--", lw=1,
               label=f"budget edge ({s.budget.rule}: {'interval' if s.budget.rule == 'interval' else 'estimate'} "
                     "must stay on the grey side)")
    layers = list(dict.fromkeys(t.layer for t in trials))
    cmap = plt.get_cmap("viridis", max(len(layers), 2))
    for t in trials:
        if t.capability is None or t.behavior is None:
            continue
        c, bb = t.capability, t.behavior
        color = cmap(layers.index(t.layer)) if len(layers) > 1 else ("tab:blue" if t.admissible else "tab:red")
        ax.errorbar(c.value, bb.value, xerr=[[c.value - c.low], [c.high - c.value]],
                    yerr=[[bb.value - bb.low], [bb.high - bb.value]], fmt="o" if t.admissible else "x",
                    color=color, ms=6, capsize=2, lw=1)
        ax.annotate(f"k={t.k:g}" + (f", L{t.layer}" if t.layer is not None and len(layers) > 1 else ""),
                    (c.value, bb.value), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if best is not None and best.capability is not None:
        ax.scatter([best.capability.value], [best.behavior.value], s=180, facecolors="none", edgecolors="k",
                   label="chosen")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    lo, hi = ax.get_xlim()
    edge = sign * s.budget.max_drop
    ax.axvspan(*((edge, hi) if sign < 0 else (lo, edge)), color="grey", alpha=0.08)  # within budget
    ax.set_xlim(lo, hi)
    ax.set_xlabel(f"Δ {s.capability} vs k = 0")
    ax.set_ylabel(f"Δ {s.behavior} vs k = 0")
    ax.set_title(f"Search on the validation split — {title}", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def _log(wb, trials: list[Trial], s: Settings, png: Path) -> None:
    """One W&B history row per trial against `search/trial`, a `search_trials` table and the plot."""
    import wandb

    wb.define_metric("search/trial")
    wb.define_metric("search/*", step_metric="search/trial")
    table = wandb.Table(columns=["layer", "k", "admissible", "capability_delta", "capability_low",
                                 "behavior_delta", "behavior_low", "behavior_high"])
    for i, t in enumerate(trials):
        c, b = t.capability, t.behavior
        row = {"search/trial": i, "search/trial_k": t.k, "search/admissible": float(t.admissible)}
        if c is not None:
            row["search/capability_delta"] = c.value
        if b is not None:
            row["search/behavior_delta"] = b.value
        wb.log(row)
        table.add_data(t.layer, t.k, t.admissible, c.value if c else None, c.low if c else None,
                       b.value if b else None, b.low if b else None, b.high if b else None)
    wb.log({"search_trials": table, "search_plot": wandb.Image(str(png))})  # outside search/*: not a trial row
