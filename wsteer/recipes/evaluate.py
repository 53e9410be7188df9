"""evaluate.py: any model (base, `base_adapter=` task fine-tune, or steered by a saved `vector=` at k) on the
selected evaluators of paper §3 (`evaluator=[...]`, default: the behavior's suite), plus the held-out answers.

Also two modes that load no model: `report=MULTIRUN_DIR` (trade-off plot of a sweep) and
`evaluator=weight_similarity` (cosine matrix of saved deltas, paper §5).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wsteer.artifacts import write_json, write_text
from wsteer.evaluation.runner import bootstrap_settings
from wsteer.recipes._common import merge_base_adapter, prepare
from wsteer.recipes.steer import load_steerer, measured, parse_ks
from wsteer.report import steering_report
from wsteer.tracking import log_by_k, log_results, start_run
from wsteer.vectors import load_vector


def run(cfg: DictConfig) -> dict[str, float]:
    if "weight_similarity" in (cfg.get("evaluator") or {}):
        return compare_deltas(cfg)
    if cfg.report:
        from wsteer.recipes.sweep_report import run_report

        wb = start_run(cfg, "report")
        try:
            return run_report(cfg.report, cfg.output_dir, wb, extra_metrics=list(cfg.get("report_metrics") or []),
                              **{k: v for k, v in bootstrap_settings(cfg).items()})
        finally:
            if wb is not None:
                wb.finish()
    ks = parse_ks(cfg.k)
    from wsteer.evaluation.runner import build_evaluators

    build_evaluators(cfg)
    if cfg.vector:
        load_vector(Path(cfg.vector))  # fail on a bad file before the model load
    ctx = prepare(cfg)
    wb = start_run(cfg, "evaluate")
    try:
        steerer = None
        if cfg.vector:
            steerer, _, _ = load_steerer(ctx)
        else:
            ks = [0.0]
        merge_base_adapter(ctx)
        flat, eval_md, answers, metrics = measured(ctx, steerer, ks, wb)
        meta = {"model": f"{cfg.model.path} (fingerprint {ctx.fingerprint})",
                "vector": str(cfg.vector) if cfg.vector else "none (base model)"}
        write_text(ctx.out_dir / "report.md", steering_report(f"Evaluation: {ctx.behavior.name} held-out questions",
                                                             meta, ctx.behavior.heldout_questions, answers, metrics)
                   + "\n" + eval_md)
        write_json(ctx.out_dir / "metrics.json", flat)
        log_results(wb, ctx.behavior.heldout_questions, answers, flat)
        log_by_k(wb, flat, cfg.method.name if cfg.vector else "none", cfg.seed, ks, steerer.manifest if steerer else None)
        print(f"wsteer: report written to {ctx.out_dir / 'report.md'}")
        return flat
    finally:
        if wb is not None:
            wb.finish()


def compare_deltas(cfg: DictConfig) -> dict[str, float]:
    """Cosine matrix of saved deltas (paper §5) as a table and heatmap; no model is loaded."""
    from wsteer.errors import WsteerError
    from wsteer.monitoring.compare import compare

    paths = [str(p) for p in cfg.vectors]
    if len(paths) < 2:
        raise WsteerError("evaluator=weight_similarity needs at least two deltas: 'vectors=[a.safetensors,b/]'")
    names, matrix = compare(paths, Path(cfg.output_dir))
    return {f"similarity/{a}/{b}": float(matrix[i][j]) for i, a in enumerate(names) for j, b in enumerate(names) if i < j}
