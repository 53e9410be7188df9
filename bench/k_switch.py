"""Cost of switching k vs one evaluation pass, and activation-hook overhead vs no hook.

- k switch: entering and leaving `WeightSteerer.apply(model, k)` (θ + k·w written into every covered weight, then
  the saved originals copied back), timed per switch. Target: < 1% of one evaluation pass. Two passes are timed
  at the same k, because "one pass" can be read two ways:
  - the **suite pass** (the target's reading): what `steer.py` runs once per k, i.e. the behavior's default
    evaluators (`conf/suite/<behavior>.yaml`; sycophancy: factual QA × 4 prompt variants + MMLU) through
    `wsteer.evaluation.runner.run_evaluators`, with an empty item store so nothing is reused
    (`--suite-behavior none` skips it);
  - the **mini pass**: `wsteer.generation.generate` over the 20 held-out sycophancy questions: a lower bound on
    any pass, kept so the number is not flattered by a long suite.
- activation hooks: the same evaluation pass under `ActivationSteerer.apply` (one layer, and all layers) vs no
  steering at all. Target: ≤ 10% overhead. Passes are interleaved and the best of `--repeats` is kept.
- merged check: generation under `WeightSteerer.apply` costs what an unsteered pass costs (the vector is merged,
  no extra modules in the forward).

    python bench/k_switch.py
    python bench/k_switch.py --suite-behavior none --device cuda --arch qwen2.5-7b --max-new-tokens 128    # GPU PATH
"""

from __future__ import annotations

import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import load, parser, questions, report, setup, suite_context, timed  # noqa: E402
from bench.generation import steering_vector  # noqa: E402
from wsteer.generation import generate  # noqa: E402
from wsteer.models import decoder_layers  # noqa: E402
from wsteer.steering.activation import ActivationSteerer  # noqa: E402
from wsteer.steering.weight import WeightSteerer  # noqa: E402
from wsteer.vectors import DenseVector  # noqa: E402


def activation_vector(model) -> DenseVector:
    n, d = len(decoder_layers(model)), model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    return DenseVector({str(i): torch.randn(d, generator=g) * 0.01 for i in range(n + 1)}, {"method": "activation"})


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--k", type=float, default=-2.0)
    p.add_argument("--switches", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--suite-behavior", default="sycophancy",
                   help="time one pass of this behavior's default evaluation suite on the loaded model; none: skip")
    p.add_argument("--suite-max-items", type=int, default=None, help="cap every evaluator's items (smoke tests)")
    args = p.parse_args()
    setup(args)
    model, tok = load(args.arch, args.device)
    weight = WeightSteerer(steering_vector(model, args.arch))
    act_vec = activation_vector(model)
    one, every = ActivationSteerer(act_vec), ActivationSteerer(act_vec, all_layers=True)
    convs = [[{"role": "user", "content": q}] for q in questions(("sycophancy",))]

    def eval_pass(ctx) -> float:
        """Seconds of one generation pass under `ctx`; entering and leaving `ctx` (the k switch) is not timed."""
        with ctx:
            _, dt = timed(lambda: generate(model, tok, convs, max_new_tokens=args.max_new_tokens,
                                           batch_size=args.batch_size, progress=False), args.device)
        return dt

    switches = []
    ks = [args.k, -args.k, 0.5 * args.k]
    weight_ctx = lambda: weight.apply(model, args.k)  # noqa: E731
    for i in range(args.switches + 1):
        ctx = weight.apply(model, ks[i % 3])
        _, t_in = timed(ctx.__enter__, args.device)
        _, t_out = timed(lambda c=ctx: c.__exit__(None, None, None), args.device)
        if i:  # the first switch also pays one-time allocation
            switches.append(t_in + t_out)
    eval_pass(nullcontext())  # warm-up
    variants = {"no_steering": nullcontext, "weight_merged": weight_ctx,
                "activation_one_layer": lambda: one.apply(model, args.k),
                "activation_all_layers": lambda: every.apply(model, args.k)}
    best = {}
    for _ in range(args.repeats):
        for name, make in variants.items():
            dt = eval_pass(make())
            best[name] = min(best.get(name, float("inf")), dt)
            print(f"{name}: {dt:.2f} s", flush=True)
    switch = statistics.median(switches)
    suite = suite_pass(model, tok, weight, args) if args.suite_behavior != "none" else None
    print(f"\nk switch (apply + restore, median of {len(switches)}): {switch * 1e3:.1f} ms")
    print(f"  vs the mini pass ({len(convs)} prompts, ≤{args.max_new_tokens} new tokens, {best['weight_merged']:.2f} s): "
          f"{100 * switch / best['weight_merged']:.2f}%")
    if suite is not None:
        print(f"  vs one {args.suite_behavior} suite pass ({suite['what']}, {suite['seconds']:.1f} s): "
              f"{100 * switch / suite['seconds']:.2f}% (target < 1%)")
    rows = [{"system": n, "seconds": s, "overhead_pct": 100 * (s / best["no_steering"] - 1)} for n, s in best.items()]
    rows.append({"system": "k_switch", "seconds": switch,
                 "pct_of_mini_pass": 100 * switch / best["weight_merged"],
                 "pct_of_suite_pass": 100 * switch / suite["seconds"] if suite else None,
                 "suite_pass_s": suite["seconds"] if suite else None})
    report(f"k switch and hook overhead ({args.arch}, {args.device})", rows[:-1], "no_steering", "seconds",
           higher_is_better=False, args=None)
    if args.json:
        from wsteer.artifacts import write_json

        write_json(Path(args.json), {"args": vars(args), "rows": rows, "switch_ms": switch * 1e3, "suite": suite,
                                     "switch_pct_of_mini_pass": 100 * switch / best["weight_merged"]})


def suite_pass(model, tok, weight, args) -> dict:
    """Seconds of one evaluation pass of the behavior's default suite at k, as `steer.py` runs it once per k."""
    from wsteer.evaluation.runner import build_evaluators, run_evaluators

    def one_pass():
        cfg, ctx = suite_context(model, tok, args.suite_behavior, args.suite_max_items, "wsteer-kswitch-")
        evaluators = build_evaluators(cfg)
        (_, records), dt = timed(lambda: run_evaluators(ctx, evaluators, weight, [args.k]), args.device)
        return dt, records, ctx

    if args.device == "cuda":
        one_pass()  # untimed: compiles the suite's static-cache shapes, which would otherwise flatter the ratio
    dt, records, ctx = one_pass()
    # what ran: items per evaluator, from the pass's records
    counts: dict[str, int] = {}
    for r in records:
        counts[r["evaluator"]] = counts.get(r["evaluator"], 0) + 1
    what = ", ".join(f"{n} {c} items" for n, c in counts.items())
    return {"seconds": dt, "what": what, "timings": dict(ctx.timings)}


if __name__ == "__main__":
    main()
