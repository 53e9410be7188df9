"""W&B runs: offline by default (no account, no network), online when the user configures it."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def start_run(cfg: DictConfig, job_type: str):
    """Start a W&B run for this job, or return None with `logger=none`.

    The resolved config is logged as the run config; it never holds secrets (API keys are read from the
    environment by the components that need them and are not part of any config).
    """
    lc = cfg.logger
    if lc.name == "none":
        return None
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        return None  # a DDP helper rank (it only trains); rank 0 logs the job
    import wandb

    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return wandb.init(
        project=lc.project,
        entity=lc.entity,
        mode=lc.mode,
        dir=lc.dir,
        group=lc.group,
        job_type=job_type,
        tags=[cfg.behavior.name, cfg.model.name, *lc.tags],
        config=config,
        reinit="finish_previous",  # Hydra's basic launcher runs every multirun job in one process
    )


def log_generations(run, questions: list[str], answers: dict[float, list[str]], key: str = "generations") -> None:
    if run is None:
        return
    import wandb

    table = wandb.Table(columns=["question", "k", "answer"])
    for k, outs in answers.items():
        for q, a in zip(questions, outs, strict=True):
            table.add_data(q, k, a)
    run.log({key: table})


def log_results(run, questions: list[str], answers: dict[float, list[str]], summary: dict[str, float]) -> None:
    """The end of an evaluation run: the generations table and the summary metrics."""
    if run is None:
        return
    log_generations(run, questions, answers)
    run.summary.update(summary)
