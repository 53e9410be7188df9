"""This machine's matmul peak: a plain `torch.mm` loop on the model's own weight shapes, per dtype and thread count.

The denominator of the "share of peak" that `bench/train_throughput.py` and `bench/generation.py` print (they
measure it again in their own run, at their dtype and threads). Rows are batch × sequence: 1280 is a training
batch (8 × 160), 20–80 a decode step of the evaluation's batch. Shapes are SmolLM2-135M's (hidden 576,
intermediate 1536); the peak is the best shape's best repeat.

    python bench/peak.py                                   # fp32 and bf16, 1 and 2 threads, training and decode rows
    python bench/peak.py --dtypes float32 --threads-list 1 --rows 1280 --min-seconds 0.1   # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import DTYPE_NAMES, matmul_peak, parser, report, setup  # noqa: E402


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--threads-list", default="1,2", help="torch CPU threads to measure at")
    p.add_argument("--rows", default="1280,20", help="rows of the activations (batch × sequence)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=0.3)
    args = p.parse_args()
    setup(args)
    rows = []
    for n_rows in (int(r) for r in args.rows.split(",")):
        for threads in (int(t) for t in args.threads_list.split(",")):
            for name in args.dtypes.split(","):
                r = matmul_peak(DTYPE_NAMES[name], threads, n_rows, repeats=args.repeats,
                                min_seconds=args.min_seconds, device=args.device)
                rows.append({"system": f"{name} {threads}t {n_rows} rows", "gflops": r["flops"] / 1e9,
                             "best_shape": r["shape"], "threads": r["threads"]})
                print(f"{rows[-1]['system']}: {rows[-1]['gflops']:.1f} GFLOP/s ({r['shape']})", flush=True)
    report(f"matmul peak ({args.device}, torch {torch.__version__})", rows, rows[0]["system"], "gflops", args=args)


if __name__ == "__main__":
    main()
