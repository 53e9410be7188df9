"""W&B runs: offline by default (no account, no network), online when the user configures it."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _hydra_job() -> tuple[str | None, str | None]:
    """(sweep folder name for a multirun job, the job's overrides as text), or Nones outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001 - not launched by Hydra (tests, notebooks)
        return None, None
    sweep = Path(str(hc.sweep.dir)).name if hc.mode == RunMode.MULTIRUN else None
    overrides = [o for o in hc.overrides.task if not o.startswith(("hydra.", "logger."))]
    return sweep, " ".join(overrides) or None


def small_config(cfg: DictConfig) -> dict:
    """The resolved config with the behavior's prompt and question lists replaced by their count and hash (they
    are KBs of text; the full behavior goes to the run as a `behavior` artifact)."""
    from wsteer.artifacts import stable_hash

    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    behavior = config.get("behavior")
    if isinstance(behavior, dict):
        for key, value in list(behavior.items()):
            if isinstance(value, (list, dict)) and len(str(value)) > 200:
                behavior[key] = {"n": len(value), "sha256_16": stable_hash(value)}
    return config


def start_run(cfg: DictConfig, job_type: str):
    """Start a W&B run for this job (`logger=wandb`, conf/logger/wandb.yaml), or return None with `logger=none`.

    A dashboard can use it: one group per Hydra multirun (its sweep folder; else `logger.group`, else the
    experiment), a readable name from the job's overrides, `job_type` (train / steer / evaluate / report), tags for
    behavior, model, method and seed, and a small config (prompt lists as counts and hashes). The config never
    holds secrets (API keys are read from the environment by the components that need them).
    """
    lc = cfg.get("logger")
    if not lc:  # logger=none is an empty group (conf/logger/none.yaml)
        return None
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        return None  # a DDP helper rank (it only trains); rank 0 logs the job
    import wandb

    sweep, overrides = _hydra_job()
    method = (cfg.get("method") or {}).get("name")
    group = lc.group or sweep or (cfg.get("experiment") if isinstance(cfg.get("experiment"), str) else None)
    name = f"{job_type}: {overrides}" if overrides else f"{job_type}: {cfg.behavior.name}" + (
        f" {method}" if method else "") + f" seed={cfg.seed}"
    tags = [cfg.behavior.name, cfg.model.name, *([method] if method and job_type != "train" else []),
            f"seed={cfg.seed}", *lc.tags]
    run = wandb.init(
        project=lc.project,
        entity=lc.entity,
        mode=lc.mode,
        dir=lc.dir,
        group=group,
        name=name[:128],
        job_type=job_type,
        tags=list(dict.fromkeys(tags)),
        config=small_config(cfg),
        reinit="finish_previous",  # Hydra's basic launcher runs every multirun job in one process
    )
    behavior = OmegaConf.to_container(cfg.behavior, resolve=True)
    art = wandb.Artifact(f"behavior-{cfg.behavior.name}", type="behavior",
                         metadata={"version": behavior.get("version")})
    with art.new_file("behavior.json", encoding="utf-8") as f:
        json.dump(behavior, f, ensure_ascii=False, indent=1)
    run.log_artifact(art)
    return run


_SUFFIXES = ("stderr", "ci_low", "ci_high", "n")


def log_by_k(run, flat: dict[str, float], method: str, seed: int, ks: list[float], vector_manifest: dict | None = None,
             ) -> None:
    """Metrics against k as W&B's step metric, one tidy table, and summary keys without k.

    - `define_metric("eval/*", step_metric="k")`: one history row per k with `eval/<evaluator>/<metric>` (and its
      `_stderr`), so "metric vs k per method" is one line plot across all runs of a sweep;
    - `results`: a table (method, k, seed, evaluator, metric, value, stderr, n) for custom charts and grouping;
    - summary `eval/<evaluator>/<metric>` for the run's own k (its single k ≠ 0), beside the `@k=` keys;
    - the vector's validation curve (`vector/val_history`), in every run that uses a vector, not only the one that
      built it.
    """
    if run is None:
        return
    import wandb

    by_k: dict[float, dict[str, float]] = {}
    for key, v in flat.items():
        name, sep, k = key.rpartition("@k=")
        if sep and name.startswith("eval/"):
            by_k.setdefault(float(k), {})[name] = v
    run.define_metric("k")
    run.define_metric("eval/*", step_metric="k")
    table = wandb.Table(columns=["method", "k", "seed", "evaluator", "metric", "value", "stderr", "n"])
    for k in sorted(by_k):
        values = by_k[k]
        run.log({"k": k, **values})
        for name, v in values.items():
            if any(name.endswith(f"_{suf}") and name[: -len(suf) - 1] in values for suf in _SUFFIXES):
                continue  # an uncertainty companion: a column of its metric's row
            _, evaluator, metric = name.split("/", 2)
            table.add_data(method, k, seed, evaluator, metric, v, values.get(f"{name}_stderr"), values.get(f"{name}_n"))
    run.log({"results": table})
    own = [k for k in ks if k != 0]
    if len(own) == 1 and own[0] in by_k:
        run.summary.update({**by_k[own[0]], "k": own[0]})
    history = (vector_manifest or {}).get("val_history")
    if history:
        cols = sorted({c for h in history for c in h})
        t = wandb.Table(columns=cols)
        for h in history:
            t.add_data(*[h.get(c) for c in cols])
        run.log({"vector/val_history": t})


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
