"""steer.py: θ + k·w on the held-out questions, next to k = 0, with a markdown report and W&B table (paper §1)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from wsteer.artifacts import write_json, write_text
from wsteer.data.pairs import build_judge
from wsteer.errors import WsteerError
from wsteer.evaluation.heldout import NAME as HELDOUT
from wsteer.evaluation.heldout import HeldOut, answers_by_k
from wsteer.evaluation.lexical import VERSION as LEXICAL_VERSION
from wsteer.evaluation.lexical import tone_metrics
from wsteer.evaluation.runner import bootstrap_settings, build_evaluators, run_evaluators, write_items
from wsteer.evaluation.uncertainty import SHOWN, differences_vs_k0, summarize
from wsteer.recipes._common import Context, merge_base_adapter, prepare
from wsteer.report import evaluation_section, steering_report
from wsteer.steering.base import GIVEN, Steerer
from wsteer.steering.k import check_k
from wsteer.steering.weight import WeightSteerer
from wsteer.targets import instantiate, settings, target_class
from wsteer.tracking import log_by_k, log_generations, log_results, start_run
from wsteer.training.build import ensure_artifacts
from wsteer.training.builder import ArtifactBuilder
from wsteer.vectors import WeightVector, load_vector


def parse_ks(k) -> list[float]:
    """`k=-2` or `k=[-2,-1,0,1,2]` (a list is swept in-process on one loaded model)."""
    values = list(k) if isinstance(k, (list, tuple, ListConfig)) else [k]
    if not values:
        raise WsteerError("k is an empty list; give a number (k=-2) or a list (k=[-2,0,2])")
    return [check_k(v) for v in values]


def heldout_evaluator(ctx: Context) -> HeldOut:
    """The behavior's held-out questions as an evaluator (report decoding: `eval.max_new_tokens`, `eval.batch_size`)."""
    return HeldOut(max_new_tokens=ctx.cfg.eval.max_new_tokens, batch_size=ctx.cfg.eval.batch_size)


def answer_heldout(ctx: Context, steerer, ks: list[float]) -> dict[float, list[str]]:
    """Greedy answers to the behavior's held-out questions at each k (system prompt stripped, as in training),
    through the item store: answers generated before for the same weights, steering and k are reused."""
    _, records = run_evaluators(ctx, [heldout_evaluator(ctx)], steerer, ks)
    return answers_by_k(records, ctx.behavior.heldout_questions, ks)


def method_builder(method: DictConfig) -> ArtifactBuilder | None:
    """The builder a method names in its YAML (`artifact: {_target_: ...}`), or None for a method that needs no
    artifact (`artifact: null`, e.g. the system-prompt baseline)."""
    node = method.get("artifact")
    if node is None:
        return None
    builder = instantiate(node, f"method={method.name}'s artifact")
    if not isinstance(builder, ArtifactBuilder):
        raise WsteerError(f"method={method.name}: artifact._target_ {node._target_!r} is not an ArtifactBuilder "
                          "(wsteer.training.builder)")
    return builder


def method_class(method: DictConfig) -> type[Steerer]:
    """The Steerer class a method names (`_target_`), imported but not built: checks that need no model."""
    cls = target_class(method, f"method={method.name}")
    if not (isinstance(cls, type) and issubclass(cls, Steerer)):
        raise WsteerError(f"method={method.name}: _target_ {method._target_!r} is not a Steerer (wsteer.steering.base)")
    return cls


def load_steerer(ctx: Context, run=None):
    """Build the configured method's steerer from a given `vector=` file or its builder's cached/built artifacts.

    Returns (steerer, the vector file or cache folder or None, whether the artifacts were built in this call).
    """
    cfg, m = ctx.cfg, ctx.cfg.method
    builder = method_builder(m)
    path, built, arts = None, False, {}
    if builder is not None:
        if cfg.vector:
            path = Path(cfg.vector)
            art = load_vector(path)
            made_by = art.manifest.get("method")
            if not builder.accepts_file(made_by):
                raise WsteerError(f"{path} holds a {made_by!r} artifact, which method={m.name} cannot use; pass a "
                                  f"vector built with train.py source={builder.kind} (finetune reads the cache)")
            arts = {GIVEN: art}
        else:
            arts, path, built = ensure_artifacts(ctx, builder, run)
    steerer = method_class(m).from_artifacts(arts, ctx, **settings(m, exclude=("artifact",)))
    steerer.check_compatible(ctx.model, ctx.fingerprint, allow_transfer=cfg.allow_transfer)
    steerer.behavior_note = behavior_mismatch(steerer.manifest, ctx.behavior.name, path)
    if steerer.behavior_note:
        print(f"wsteer: note: {steerer.behavior_note}")
    return steerer, path, built


def behavior_mismatch(manifest: dict, behavior: str, path) -> str | None:
    """A vector built for behavior A used with `behavior=B` (possibly on purpose: a transfer experiment)."""
    made_for = (manifest or {}).get("behavior")
    if path is None or not made_for or made_for == behavior:
        return None
    return (f"{path} was built for behavior {made_for!r}, but this run has behavior={behavior}: its held-out "
            f"questions and default evaluators are {behavior}'s (pass behavior={made_for} unless this is on purpose)")


def composed_steerer(ctx: Context) -> tuple[WeightSteerer, str]:
    """`k={sycophancy: -2, evil: -1}`: one exact vector Σᵢ kᵢ·wᵢ from each behavior's contrastive vector,
    taken from `vector={name: path}` or else the newest matching vector in the library (cache)."""
    from wsteer.library import compose, list_vectors

    cfg, parts = ctx.cfg, {}
    paths = cfg.vector if isinstance(cfg.vector, DictConfig) else {}
    for name, k in cfg.k.items():
        path = paths.get(name)
        if path is None:
            found = [r for r in list_vectors(cfg.paths.cache_dir) if r["behavior"] == name and not r["error"]
                     and r["artifact"] == "contrastive" and r["fingerprint"] == ctx.fingerprint]
            if not found:
                raise WsteerError(f"no cached {name!r} vector for this model; build it with "
                                  f"`python train.py behavior={name}` or pass vector.{name}=PATH")
            path = max(found, key=lambda r: r["created"] or "")["path"]
        vector = WeightVector.load(path)
        WeightSteerer(vector).check_compatible(ctx.model, ctx.fingerprint, cfg.allow_transfer)
        parts[name] = (vector, check_k(k))
    label = " + ".join(f"{k:g}·w[{n}]" for n, (_, k) in parts.items())
    return WeightSteerer(compose(parts), name=f"composition {label}"), label


def measured(ctx: Context, steerer, ks: list[float], wb=None):
    """Everything measured at each k, in one loop that applies each k once (`run_evaluators`): the held-out answers
    with their tone markers, and the selected evaluators (`evaluator=[...]`, default: the behavior's suite, §3),
    with standard errors and paired Δ against k = 0.

    Returns (flat metrics for metrics.json/W&B, the evaluation section of report.md, the held-out answers per k,
    per-k tone estimates). Writes every item's record (held-out answers and evaluators) to `eval_items.jsonl`.
    """
    boot = bootstrap_settings(ctx.cfg)
    evaluators = [heldout_evaluator(ctx), *build_evaluators(ctx.cfg)]
    flat, records = run_evaluators(ctx, evaluators, steerer, ks, judge=build_judge(ctx.cfg.judge), wb=wb)
    write_items(ctx.out_dir, records)
    summary = summarize(records, **boot)
    tone = {k: summary[(HELDOUT, k)] for k in ks}
    # the tone rates as exact means of the per-answer markers (the evaluators' own values are float32 running means)
    flat.update({f"eval/{HELDOUT}/{name}@k={k:g}": e.value for k, ests in tone.items() for name, e in ests.items()})
    suite = {key: ests for key, ests in summary.items() if key[0] != HELDOUT}  # tone has its own report table
    diffs = differences_vs_k0(records, **boot)
    return flat, evaluation_section(suite, diffs, ks), answers_by_k(records, ctx.behavior.heldout_questions, ks), tone


def run(cfg: DictConfig) -> dict[str, float]:
    if cfg.list_vectors:
        from wsteer.library import format_listing, list_vectors

        print(format_listing(list_vectors(cfg.paths.cache_dir)))
        return {}
    if isinstance(cfg.k, DictConfig):
        return run_composition(cfg)
    ks = parse_ks(cfg.k)  # fail on a bad k before loading anything
    build_evaluators(cfg)  # a typo in an evaluator's settings fails here, not after training
    method_class(cfg.method), method_builder(cfg.method)  # so does a method whose classes cannot be built
    if cfg.get("export_gguf") and cfg.method.name not in ("activation", "weight", "task_vector_pos", "task_vector_neg"):
        raise WsteerError(f"export_gguf=true writes a weight vector as a GGUF LoRA or a single-layer activation vector "
                          f"as a control vector; method={cfg.method.name} is neither")
    if (cfg.get("export_gguf") and cfg.method.name != "activation" and not cfg.get("base_gguf")
            and cfg.model.get("source") != "gguf"):
        raise WsteerError(f"export_gguf=true needs base_gguf=FILE.gguf for model={cfg.model.name} (convert it with "
                          "llama.cpp's convert_hf_to_gguf.py); the embedded default model needs none")
    if (cfg.save_model or cfg.export_adapter) and not issubclass(method_class(cfg.method), WeightSteerer):
        raise WsteerError(f"save_model/export_adapter need a weight-vector method (weight, task_vector_pos/neg); "
                          f"method={cfg.method.name} steers otherwise, which a saved model or LoRA cannot hold")
    t_start = time.perf_counter()
    ctx = prepare(cfg)
    wb = start_run(cfg, "steer")
    try:
        steerer, vpath, built = load_steerer(ctx, wb)
        merge_base_adapter(ctx)  # θ_ft, after the artifacts were built on θ_pre
        if cfg.get("layers") is not None:
            from wsteer.recipes.layer_sweep import sweep_layers

            result = sweep_layers(ctx, steerer, ks, answer_heldout, wb)
            print(f"wsteer: layer sweep written to {ctx.out_dir / 'layer_sweep.png'}")
            return result
        sweep = [0.0] + [k for k in dict.fromkeys(ks) if k != 0]
        flat, eval_md, answers, metrics = measured(ctx, steerer, sweep, wb)
        man = steerer.manifest
        sched = man.get("schedule", {})
        meta = {
            "model": f"{cfg.model.path} (fingerprint {ctx.fingerprint})"
            + (f"; steered θ_ft = base + {cfg.base_adapter} (fingerprint {ctx.ft_fingerprint})" if ctx.ft_fingerprint else ""),
            "behavior": f"{ctx.behavior.name} (v{ctx.behavior.version}), {len(ctx.behavior.heldout_questions)} held-out questions",
            "method": steerer.describe(),
            "vector": (f"{vpath} ({'built in this run' if built else 'reused'})" if vpath else "none")
            + (f" — **note**: {steerer.behavior_note}" if getattr(steerer, "behavior_note", None) else ""),
            "vector built with": (f"trainer={sched.get('name')} ({sched.get('steps')} steps × batch {sched.get('batch_size')}, "
                                  f"lr {sched.get('lr')}, max length {sched.get('max_length')}), LoRA r{man['lora']['r']} "
                                  f"α{man['lora']['alpha']}, data {man.get('data_counts')}") if sched
            else f"{man.get('method', 'n/a')} from data {man.get('data_counts', 'n/a')}",
            "decoding": f"greedy, ≤ {cfg.eval.max_new_tokens} new tokens, no system prompt",
        }
        notes = [f"Tone metrics are lexical markers (v{LEXICAL_VERSION}), a quick heuristic, not a judge; {SHOWN}; "
                 f"n = held-out questions."]
        report = steering_report(f"Steering {ctx.behavior.name} with k = {', '.join(f'{k:g}' for k in ks)}", meta,
                                 ctx.behavior.heldout_questions, answers, metrics, notes)
        report += "\n" + eval_md
        write_text(ctx.out_dir / "report.md", report)
        if cfg.save_model or cfg.export_adapter:
            from wsteer.export import export_merged_model, export_peft_adapter

            with ctx.timed("export"):
                for k in (k for k in ks if k != 0):
                    card = {"evaluation": {n: e.value for n, e in metrics[k].items()}, "vector_path": str(vpath)}
                    if cfg.save_model:
                        export_merged_model(ctx.model, ctx.tokenizer, steerer, k, ctx.out_dir / f"steered_model_k={k:g}", card)
                    if cfg.export_adapter:
                        export_peft_adapter(steerer.vector, k, ctx.out_dir / f"adapter_k={k:g}", cfg.model.path,
                                            model=ctx.model)
        if cfg.get("export_gguf"):
            with ctx.timed("export"):
                export_gguf(ctx, steerer, ks)
        ctx.timings["total"] = time.perf_counter() - t_start
        write_json(ctx.out_dir / "timings.json", ctx.timings)
        write_json(ctx.out_dir / "metrics.json", flat)
        write_text(ctx.out_dir / "generations.jsonl", "".join(
            json.dumps({"k": k, "question": q, "answer": a}) + "\n"
            for k, outs in answers.items() for q, a in zip(ctx.behavior.heldout_questions, outs, strict=True)))
        if wb is not None:
            log_generations(wb, ctx.behavior.heldout_questions, answers)
            wb.summary.update({**flat, **{f"time/{s}": v for s, v in ctx.timings.items()}})
            log_by_k(wb, flat, cfg.method.name, cfg.seed, ks, steerer.manifest)
        print(f"wsteer: report written to {ctx.out_dir / 'report.md'}")
        print("wsteer: stage timings (s): " + ", ".join(f"{s} {v:.1f}" for s, v in ctx.timings.items()))
        return flat
    finally:
        if wb is not None:
            wb.finish()


def export_gguf(ctx: Context, steerer, ks: list[float]) -> None:
    """`export_gguf=true`: w as a llama.cpp GGUF LoRA adapter (k chosen at run time, plus one file per k with k baked
    in, for Ollama's scale-less ADAPTER), or the activation vector as a llama.cpp control vector (docs/gguf.md)."""
    from wsteer.control_vector import export_control_vector
    from wsteer.export_gguf import export_gguf_lora
    from wsteer.models import gguf_path

    cfg = ctx.cfg
    if ctx.ft_fingerprint:
        raise WsteerError("export_gguf=true writes w for the base model's GGUF, not for θ_ft; drop base_adapter=")
    if cfg.method.name == "activation":
        export_control_vector(steerer.vector, ctx.out_dir / "control_vector.gguf", layer=steerer.layer)
        print(f"wsteer: control vector written to {ctx.out_dir / 'control_vector.gguf'}")
        return
    base = cfg.get("base_gguf") or gguf_path(cfg.model)  # checked in run(): a gguf model or base_gguf=
    export_gguf_lora(steerer.vector, ctx.out_dir / "vector.gguf", base, model=ctx.model)
    for k in (k for k in ks if k != 0):
        export_gguf_lora(steerer.vector, ctx.out_dir / f"vector_k={k:g}.gguf", base, k=k, model=ctx.model)
    print(f"wsteer: GGUF LoRA written to {ctx.out_dir / 'vector.gguf'} (llama-server --lora-scaled vector.gguf:<k>)")


def run_composition(cfg: DictConfig) -> dict[str, float]:
    """Several behaviors at once, each at its own k, through one reversible apply (k = 1 of the composed vector)."""
    for v in cfg.k.values():
        check_k(v)
    ctx = prepare(cfg)
    wb = start_run(cfg, "steer")
    try:
        steerer, label = composed_steerer(ctx)
        merge_base_adapter(ctx)
        answers = answer_heldout(ctx, steerer, [0.0, 1.0])
        answers = {0.0: answers[0.0], 1.0: answers[1.0]}
        metrics = {k: tone_metrics(a, answers[0.0]) for k, a in answers.items()}
        meta = {"model": f"{cfg.model.path} (fingerprint {ctx.fingerprint})", "method": steerer.describe(),
                "columns": f"k = 0 is the base model; k = 1 is θ + {label}",
                "questions": f"held-out questions of {ctx.behavior.name}"}
        write_text(ctx.out_dir / "report.md", steering_report(f"Composition: {label}", meta,
                                                             ctx.behavior.heldout_questions, answers, metrics))
        if cfg.export_adapter:
            from wsteer.export import export_peft_adapter

            export_peft_adapter(steerer.vector, 1.0, ctx.out_dir / "adapter_composed", cfg.model.path, model=ctx.model)
        flat = {f"eval/heldout_tone/{n}@composed": v for n, v in metrics[1.0].items()}
        log_results(wb, ctx.behavior.heldout_questions, answers, flat)
        print(f"wsteer: report written to {ctx.out_dir / 'report.md'}")
        return flat
    finally:
        if wb is not None:
            wb.finish()
