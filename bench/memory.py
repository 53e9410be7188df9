"""Peak memory of paired training (two LoRA adapters on one base) vs single-adapter training, same work per side.

Each configuration runs our Lightning training (`PairedModule`) for `--steps` steps, in its own child process:
`paired` trains the pos and neg adapters alternately on one base model, `single` trains only pos. The peak compared
is that of live tensors: `torch.cuda.max_memory_allocated` on CUDA, the running sum of the profiler's CPU
allocator events on CPU (`cpu_tensor_peak`). Each child's maximum resident set size is printed too: it adds the
interpreter, the libraries and whatever freed memory the C allocator keeps. Target: paired ≤ 1.1 × single. The paired run is the cheaper of the two ways to get both
adapters: training them in two processes would hold two base models.

    python bench/memory.py
    python bench/memory.py --device cuda --arch qwen2.5-7b --max-length 512      # GPU PATH
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import parser, report, setup  # noqa: E402

CONFIGS = {"single": ("pos",), "paired": ("pos", "neg")}


def child(args) -> None:
    import lightning as L

    from bench.train_throughput import run_ours

    class ResetPeak(L.Callback):
        """Count the peak from the start of training (base weights included), not the model build before it."""

        def on_fit_start(self, trainer, pl_module):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    peak = None
    if args.device == "cuda":
        r = run_ours(args, grouped=False, sides=CONFIGS[args.child], callbacks=[ResetPeak()])
        peak = torch.cuda.max_memory_allocated()
    elif args.measure == "tensors":
        peak, r = cpu_tensor_peak(lambda: run_ours(args, grouped=False, sides=CONFIGS[args.child]))
    else:  # unprofiled: the profiler's own event buffers would inflate the RSS
        r = run_ours(args, grouped=False, sides=CONFIGS[args.child])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print("RESULT " + json.dumps({"seconds": r["seconds"], "tokens": r["tokens"], "tensor_peak": peak, "rss": rss}),
          flush=True)


def cpu_tensor_peak(fn):
    """(peak bytes of live CPU tensors while `fn` ran, fn's result): the CPU analogue of max_memory_allocated.

    The profiler records every allocation and free of torch's CPU allocator (`profile_memory=True`); the running
    sum of those events, in time order, is the bytes held by tensors. Unlike peak RSS it does not count freed
    memory the C allocator keeps, nor the interpreter and libraries. Run it with `--threads 1`: allocations made
    on intra-op worker threads may not be recorded.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    # the raw events: one per allocation (+bytes) and per free (−bytes); FunctionEvents fold them into their ops
    raw = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(raw, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak, out


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--child", choices=tuple(CONFIGS), default=None, help="internal: run one configuration")
    p.add_argument("--measure", choices=("rss", "tensors"), default="rss", help="internal: what the child measures")
    args = p.parse_args()
    setup(args)
    if args.child:
        return child(args)
    rows = []
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--child", name, "--device", args.device, "--arch", args.arch,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        result = {}
        for measure in ("rss", "tensors") if args.device == "cpu" else ("rss",):
            out = subprocess.run([*cmd, "--measure", measure], stdout=subprocess.PIPE, text=True, check=True).stdout
            r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            result.setdefault("rss", r["rss"])  # from the unprofiled run
            result.setdefault("seconds", r["seconds"])
            if r["tensor_peak"] is not None:
                result["tensor_peak"] = r["tensor_peak"]
        peak, rss = result["tensor_peak"] / 2**30, result["rss"] / 2**30
        rows.append({"system": name, "peak_gib": peak, "rss_gib": rss, "seconds": result["seconds"]})
        print(f"{name}: peak of live tensors {peak:.3f} GiB, peak RSS {rss:.3f} GiB", flush=True)
    report(f"peak memory ({args.arch}, {args.device}, batch {args.batch_size}, ≤{args.max_length} tokens)", rows,
           "single", "peak_gib", higher_is_better=False, args=args)
    paired = rows[1]["peak_gib"] / rows[0]["peak_gib"]
    print(f"paired / single, live tensors ({'max_memory_allocated' if args.device == 'cuda' else 'profiler'}) = "
          f"{paired:.3f} (target ≤ 1.1); peak RSS {rows[1]['rss_gib'] / rows[0]['rss_gib']:.3f}")


if __name__ == "__main__":
    main()
