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
