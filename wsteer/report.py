"""The markdown before/after report written into each run directory."""

from __future__ import annotations


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def _k(k: float) -> str:
    return f"{k:g}"


def steering_report(title: str, meta: dict[str, str], questions: list[str], answers: dict[float, list[str]],
                    metrics: dict[float, dict[str, float]], notes: list[str] | None = None) -> str:
    ks = list(answers)
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {val}" for key, val in meta.items()]
    lines += ["", "## Summary (held-out questions)", ""]
    names = list(next(iter(metrics.values())))
    lines += ["| metric | " + " | ".join(f"k = {_k(k)}" for k in ks) + " |",
              "|---|" + "---|" * len(ks)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{metrics[k].get(name, float('nan')):.2f}" for k in ks) + " |")
    lines += [""] + [f"> {n}" for n in notes or []] + ["", "## Answers side by side", ""]
    lines += ["| # | question | " + " | ".join(f"k = {_k(k)}" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]
    for i, q in enumerate(questions):
        lines.append(f"| {i + 1} | {_cell(q)} | " + " | ".join(_cell(answers[k][i]) for k in ks) + " |")
    return "\n".join(lines) + "\n"


def evaluation_section(flat: dict[str, float], ks: list[float]) -> str:
    """`eval/<evaluator>/<metric>@k=<k>` values as one table: a row per metric, a column per k."""
    rows: dict[str, dict[float, float]] = {}
    for key, v in flat.items():
        name, _, k = key.rpartition("@k=")
        rows.setdefault(name, {})[float(k)] = v
    if not rows:
        return ""
    lines = ["## Evaluations (paper §3)", "", "| metric | " + " | ".join(f"k = {_k(k)}" for k in ks) + " |",
             "|---|" + "---|" * len(ks)]
    for name, by_k in rows.items():
        cells = [f"{by_k[k]:.3f}" if k in by_k else "" for k in ks]
        lines.append(f"| {name.removeprefix('eval/')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nPer-item outputs and scores: `eval_items.jsonl`.\n"
