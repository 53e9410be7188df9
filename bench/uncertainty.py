"""What uncertainty costs: standard errors, intervals and paired Δ against one evaluation pass (target: < 2%).

One pass of the behavior's default suite (sycophancy: factual QA × 4 prompt variants + MMLU) runs on the loaded
model at k = 0 and at k, as `steer.py` runs it, through `wsteer.evaluation.runner.run_evaluators` with an empty
item store; that call already includes the uncertainty it adds to the metrics. Then the uncertainty steer.py
computes on those records (every metric's estimate at both k, the paired Δ of k against k = 0, with the
configured 1000 resamples) is timed alone, best of `--repeats`, and reported as a share of the pass.

    python bench/uncertainty.py                      # the embedded default model on the CPU
    python bench/uncertainty.py --suite-max-items 8  # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import load, parser, report, setup, suite_context, timed  # noqa: E402
from bench.generation import steering_vector  # noqa: E402
from wsteer.evaluation.uncertainty import differences_vs_k0, flat_uncertainty, summarize  # noqa: E402
from wsteer.steering.weight import WeightSteerer  # noqa: E402


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--k", type=float, default=-2.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--suite-behavior", default="sycophancy")
    p.add_argument("--suite-max-items", type=int, default=None, help="cap every evaluator's items")
    args = p.parse_args()
    setup(args)
    from wsteer.evaluation.runner import bootstrap_settings, build_evaluators, run_evaluators

    model, tok = load(args.arch, args.device)
    weight = WeightSteerer(steering_vector(model, args.arch))
    cfg, ctx = suite_context(model, tok, args.suite_behavior, args.suite_max_items, "wsteer-unc-")
    (_, records), pass_s = timed(lambda: run_evaluators(ctx, build_evaluators(cfg), weight, [0.0, args.k]),
                                 args.device)
    boot = bootstrap_settings(cfg)

    def uncertainty():
        flat_uncertainty(summarize(records, **boot))
        differences_vs_k0(records, **boot)

    best = min(timed(uncertainty, "cpu")[1] for _ in range(args.repeats))
    n_metrics = sum(len(v) for v in summarize(records, **boot).values())
    rows = [{"system": "evaluation pass (k = 0 and k)", "seconds": pass_s},
            {"system": "uncertainty on its records", "seconds": best, "pct_of_pass": 100 * best / pass_s,
             "records": len(records), "metric_estimates": n_metrics, "resamples": boot["n_boot"]}]
    report(f"uncertainty vs one evaluation pass ({args.arch}, {args.device})", rows, "evaluation pass (k = 0 and k)",
           "seconds", higher_is_better=False, args=None)
    print(f"uncertainty: {best * 1e3:.1f} ms = {100 * best / pass_s:.3f}% of the {pass_s:.1f} s pass "
          f"({len(records)} item records, {n_metrics} metric estimates, {boot['n_boot']} resamples); target < 2%")
    if args.json:
        from wsteer.artifacts import write_json

        write_json(Path(args.json), {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
