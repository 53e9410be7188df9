"""Peak memory of paired training (two LoRA adapters on one base) vs single-adapter training, same work per side.

Each configuration runs our Lightning training (`PairedModule`) for `--steps` steps: `paired` trains the pos and
neg adapters alternately on one base model, `single` trains only pos. On CUDA the peak is
`torch.cuda.max_memory_allocated`; on CPU each configuration runs in its own child process and the peak is that
process's maximum resident set size (which includes the interpreter and the fp32 base model: the figure a user's
machine must hold). Target: paired ≤ 1.1 × single. The paired run is the cheaper of the two ways to get both
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
    from bench.train_throughput import run_ours

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r = run_ours(args, grouped=False, sides=CONFIGS[args.child])
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print("RESULT " + json.dumps({"seconds": r["seconds"], "tokens": r["tokens"], "cuda_peak": peak, "rss": rss}),
          flush=True)


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--child", choices=tuple(CONFIGS), default=None, help="internal: run one configuration")
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
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        peak = (result["cuda_peak"] if args.device == "cuda" else result["rss"]) / 2**30
        rows.append({"system": name, "peak_gib": peak, "seconds": result["seconds"]})
        print(f"{name}: peak {peak:.3f} GiB", flush=True)
    report(f"peak memory ({args.arch}, {args.device}, batch {args.batch_size}, ≤{args.max_length} tokens)", rows,
           "single", "peak_gib", higher_is_better=False, args=args)
    paired = rows[1]["peak_gib"] / rows[0]["peak_gib"]
    print(f"paired / single = {paired:.3f} (target ≤ 1.1)")


if __name__ == "__main__":
    main()
