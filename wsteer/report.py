"""The markdown before/after report written into each run directory."""

from __future__ import annotations

from wsteer.evaluation.uncertainty import SHOWN, Estimate


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def _k(k: float) -> str:
    return f"{k:g}"


def _value(v) -> str:
    return v.format() if isinstance(v, Estimate) else f"{v:.2f}"


def steering_report(title: str, meta: dict[str, str], questions: list[str], answers: dict[float, list[str]],
                    metrics: dict[float, dict[str, float | Estimate]], notes: list[str] | None = None) -> str:
    """Metrics may be plain numbers or Estimates (shown as `0.25 ± 0.10 (n=20)`)."""
    ks = list(answers)
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {val}" for key, val in meta.items()]
    lines += ["", "## Summary (held-out questions)", ""]
    names = list(next(iter(metrics.values())))
    lines += ["| metric | " + " | ".join(f"k = {_k(k)}" for k in ks) + " |",
              "|---|" + "---|" * len(ks)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_value(metrics[k].get(name, float("nan"))) for k in ks) + " |")
    lines += [""] + [f"> {n}" for n in notes or []] + ["", "## Answers side by side", ""]
    lines += ["| # | question | " + " | ".join(f"k = {_k(k)}" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]
    for i, q in enumerate(questions):
        lines.append(f"| {i + 1} | {_cell(q)} | " + " | ".join(_cell(answers[k][i]) for k in ks) + " |")
    return "\n".join(lines) + "\n"


def _metric_rows(ests: dict[tuple[str, float], dict[str, Estimate]], evaluators: list[str], ks: list[float],
                 fmt) -> list[str]:
    """One table row per evaluator metric, a cell per k."""
    rows = []
    for ev in evaluators:
        for m in dict.fromkeys(m for (e, _), by_metric in ests.items() if e == ev for m in by_metric):
            cells = [ests.get((ev, k), {}).get(m) for k in ks]
            rows.append(f"| {ev}/{m} | " + " | ".join(fmt(c) if c else "" for c in cells) + " |")
    return rows


def evaluation_section(summary: dict[tuple[str, float], dict[str, Estimate]],
                       diffs: dict[tuple[str, float], dict[str, Estimate]], ks: list[float]) -> str:
    """Every evaluator metric per k as `value ± stderr (n)`, then the paired difference of each k against k = 0."""
    evaluators = list(dict.fromkeys(ev for ev, _ in summary))
    if not evaluators:
        return ""
    lines = ["## Evaluations (paper §3)", "", f"{SHOWN}; n = items scored.", "",
             "| metric | " + " | ".join(f"k = {_k(k)}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    lines += _metric_rows(summary, evaluators, ks, lambda e: e.format(3))
    steered = [k for k in ks if k != 0]
    if diffs and steered:
        lines += ["", "### Paired differences against k = 0 (same items)", "",
                  "Δ = metric at k − metric at k = 0 on the items both scored, with a paired-bootstrap 95% interval; "
                  "`*` marks an interval that excludes 0. Without `*` the difference is not resolved at this n.", "",
                  "| metric | " + " | ".join(f"Δ k = {_k(k)}" for k in steered) + " |", "|---|" + "---|" * len(steered)]
        lines += _metric_rows(diffs, evaluators, steered, lambda e: e.format_delta(3))
    return "\n".join(lines) + "\n\nPer-item outputs and scores: `eval_items.jsonl`.\n"
