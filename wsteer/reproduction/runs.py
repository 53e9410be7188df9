"""Reading one finished `evaluate.py` run for the reproduction's results files (C5's premise rows, C6's
fine-tune evaluations)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from wsteer.errors import WsteerError


def read_run(run: str | Path, metrics: list[str] | tuple[str, ...]) -> tuple[object, dict]:
    """A finished `evaluate.py` run: its composed config and `{metric: {item id: score}}` at k = 0 for `metrics`
    (an error names what is missing)."""
    from wsteer.recipes.sweep_report import items_by_k

    run = Path(run)
    if not (run / "eval_items.jsonl").is_file() or not (run / ".hydra" / "config.yaml").is_file():
        raise WsteerError(f"{run} is not a finished evaluate.py run (no eval_items.jsonl or .hydra/config.yaml)")
    by_metric = items_by_k(run / "eval_items.jsonl").get(0.0, {})
    missing = [m for m in metrics if m not in by_metric]
    if missing:
        raise WsteerError(f"{run}: metrics {missing} were not measured at k = 0; measured: {sorted(by_metric)}")
    return OmegaConf.load(run / ".hydra" / "config.yaml"), {m: by_metric[m] for m in metrics}
