"""Run the configured evaluators at each k: one `Trainer.test` per (evaluator, k), results in the run dir and W&B.

`cfg.evaluator` holds the selected evaluators by name (`evaluator=[factual_qa,mmlu]`, or a behavior's default
suite from `conf/suite/`). Each one's finished items are kept in a store keyed by everything that determines the
result (model weights, steering method and vector, k, evaluator settings), so re-running the same command after
a kill resumes, and re-running it after success costs only the model load.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from wsteer.artifacts import stable_hash, write_text
from wsteer.config import instantiate
from wsteer.errors import WsteerError
from wsteer.evaluation.base import Evaluator, ItemStore, finite
from wsteer.evaluation.uncertainty import N_BOOT, flat_uncertainty, summarize
from wsteer.interrupts import stop_promptly_on_sigterm
from wsteer.models import dtype_key


def bootstrap_settings(cfg) -> dict:
    """`eval.bootstrap` (resamples) and `eval.bootstrap_seed`: the same seed gives the same intervals."""
    e = cfg.get("eval") or {}
    return {"seed": int(e.get("bootstrap_seed", 0)), "n_boot": int(e.get("bootstrap", N_BOOT))}


def write_items(out_dir: Path, records: list[dict]) -> None:
    """Every item's outputs and scores, one JSON line each: what reports and sweep reports recompute from."""
    write_text(Path(out_dir) / "eval_items.jsonl",
               "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def build_evaluators(cfg: DictConfig) -> list[Evaluator]:
    """Instantiate every selected evaluator (cheap: no model, no data loaded yet) so typos fail early."""
    group = cfg.get("evaluator") or {}
    out = []
    for key, ecfg in group.items():
        if not isinstance(ecfg, DictConfig) or "_target_" not in ecfg:
            continue  # weight_similarity and other modes of evaluate.py that are not item evaluators
        cap = cfg.get("eval", {}).get("max_items")
        if cap is not None and (ecfg.get("limit") is None or ecfg.limit > cap):
            ecfg = OmegaConf.create({**OmegaConf.to_container(ecfg, resolve=True), "limit": cap})  # may lack `limit`
        ev = instantiate(ecfg, exclude=("name", "report"))
        if ev.name != key:
            if not ev.dataset:
                raise WsteerError(f"conf/evaluator/{key}.yaml builds evaluator {ev.name!r}; the key must match the "
                                  "name (or give it its own `dataset:`, which makes it a new evaluation set)")
            # a new evaluation set is one YAML: an existing evaluator on its own data, named (metrics, item store)
            # by the YAML's key, e.g. eval/my_questions/accuracy
            ev.name = key
        out.append(ev)
    return out


def steering_id(steerer) -> dict:
    """What identifies the steering (method and artifact) in a store key; never the tensors themselves."""
    if steerer is None:
        return {"method": "none"}
    # the whole manifest (data hash, schedule, creation time, …): a rebuilt or different vector never reuses items
    return {"method": steerer.describe(), "artifact": stable_hash(steerer.manifest or {})}


def run_evaluators(ctx, evaluators: list[Evaluator], steerer, ks: list[float], judge=None, wb=None,
                   ) -> tuple[dict[str, float], list[dict]]:
    """Evaluate at every k; return flat metrics `eval/<evaluator>/<metric>@k=<k>` with their uncertainty
    (`…_stderr`, `…_ci_low`, `…_ci_high`, `…_n`; see `uncertainty.py`) and the per-item records."""
    cfg = ctx.cfg
    root = Path(cfg.paths.cache_dir).expanduser() / "eval"
    flat: dict[str, float] = {}
    records: list[dict] = []
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-call GPU/TPU banners
    model_id = ctx.ft_fingerprint or ctx.fingerprint
    where: dict = {}
    with stop_promptly_on_sigterm(where):
        _evaluate_all(ctx, evaluators, steerer, ks, judge, root, model_id, flat, records, where)
    _relative_to_k0(evaluators, records, flat)
    flat.update(flat_uncertainty(summarize(records, **bootstrap_settings(cfg))))
    if wb is not None:
        _log_items(wb, records)
    return flat, records


def _evaluate_all(ctx, evaluators, steerer, ks, judge, root: Path, model_id: str, flat: dict, records: list,
                  where: dict) -> None:
    from wsteer.steering.guards import assert_finite_logits

    cfg = ctx.cfg
    for k in ks:
        # keys and stored items first: the key never depends on the applied weights, so a k whose every item is
        # stored (a cached rerun) is reported from the store without merging k·w into the weights (issue 19)
        plans = []
        for ev in evaluators:
            ev.bind(ctx.model, ctx.tokenizer, steerer=steerer, k=k, judge=judge, behavior=ctx.behavior)
            items = ev.items()
            ev.store_folder = root / ev.name / _store_key(ctx, ev, steerer, k, model_id)
            plans.append((ev, items, ItemStore(ev.store_folder).done))  # what earlier (killed) runs finished
        missing = any(it["id"] not in done for _, items, done in plans for it in items)
        apply = steerer.apply(ctx.model, k) if steerer is not None and missing else nullcontext()
        with apply:
            if steerer is not None and k != 0 and missing:
                assert_finite_logits(ctx.model, ctx.tokenizer, k, steerer.name)
            for ev, items, done in plans:
                trainer = L.Trainer(accelerator=cfg.eval.accelerator, devices=cfg.eval.devices,
                                    strategy=cfg.eval.strategy, logger=False,
                                    enable_checkpointing=False, enable_model_summary=False,
                                    enable_progress_bar=True, inference_mode=True)
                resumed = sum(it["id"] in done for it in items)
                if resumed:
                    print(f"wsteer: {ev.name} at k={k:g}: {resumed}/{len(items)} items already done, resuming")
                # similar lengths share a batch, so little compute goes to padding (MMLU: 2.4× faster on CPU,
                # identical predictions); metrics are means over items, so the order does not change them
                loader = _loader(sorted(items, key=lambda it: len(json.dumps(it, ensure_ascii=False))), ev.batch_size)
                where.update(what=f"{ev.name} at k={k:g}", kept=f"the item store {ev.store_folder}")
                with ctx.timed(f"eval/{ev.name}"):
                    out = finite(trainer.test(ev, dataloaders=loader, verbose=False)[0])
                for name, v in out.items():
                    flat[f"{name}@k={k:g}"] = float(v)
                done = ItemStore(ev.store_folder).done  # every rank's items
                records += [{"evaluator": ev.name, **done[it["id"]], "k": k} for it in items]
                ev.lm = None  # the model belongs to the context, not to the evaluator


def _store_key(ctx, ev, steerer, k: float, model_id: str) -> str:
    """The item-store key of one evaluator at one k."""
    # k = 0 is the unsteered model whatever the method, so every job of a sweep shares its items
    steering = steering_id(steerer) if k != 0 else {"method": "none"}
    # `limit` (and `offset`, part of "sample") only choose which of the stable item ids run, so neither is in the
    # key: a larger limit reuses every item a smaller one finished. The data's contents are: an edited question
    # file with unchanged ids must not reuse the old answers.
    settings = {n: v for n, v in ev.settings().items() if n not in ("limit", "sample")}
    # the weights' dtype too: bf16 answers differ from fp32 ones and must never stand in for them
    return stable_hash({"model": model_id, **dtype_key(ctx.model), "steering": steering, "k": k,
                        "data": ev.data_hash, **settings})


def _relative_to_k0(evaluators: list[Evaluator], records: list[dict], flat: dict[str, float]) -> None:
    """Add each evaluator's scores relative to k = 0 (same items at every k) to its records and to `flat`."""
    for ev in evaluators:
        if not ev.relative_metrics:
            continue
        mine = [r for r in records if r["evaluator"] == ev.name]
        k0 = {r["id"]: r for r in mine if r["k"] == 0}
        if not k0:
            continue  # no k = 0 in this run: the relative metrics are absent
        sums: dict[tuple[float, str], list[float]] = {}
        for r in mine:
            if r["id"] in k0:
                extra = ev.relative_to_k0(r, k0[r["id"]])
                r["scores"] = {**r["scores"], **extra}
                for m, v in extra.items():
                    if v is not None:
                        sums.setdefault((r["k"], m), []).append(float(v))
        for (k, m), vals in sums.items():
            flat[f"eval/{ev.name}/{m}@k={k:g}"] = sum(vals) / len(vals)


def _loader(items, batch_size):
    from torch.utils.data import DataLoader

    return DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=list)  # batches stay lists of dicts


def _log_items(wb, records: list[dict]) -> None:
    import wandb

    table = wandb.Table(columns=["evaluator", "k", "id", "outputs", "scores"])
    for r in records:
        table.add_data(r["evaluator"], r["k"], r["id"], json.dumps(r.get("outputs", {}), ensure_ascii=False)[:4000],
                       json.dumps(r.get("scores", {})))
    wb.log({"eval_items": table})
