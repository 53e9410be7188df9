"""Thread settings per stage: a training step loop and a generation loop at several torch thread settings.

`steer.py` sets no thread count: it runs with torch's default, one intra-op thread per core and as many inter-op
threads (2 and 2 on the 2-core machine; `OMP_NUM_THREADS` overrides it). This bench times, for each setting:

- `default`: nothing set (what `steer.py` runs with; the child's `OMP_NUM_THREADS` is unset);
- `1`, `2`, …: `torch.set_num_threads(n)` (and `OMP_NUM_THREADS=n`);
- `1+interop1`, `2+interop1`: the same plus `torch.set_num_interop_threads(1)`.

Inter-op threads can only be set before torch starts any parallel work, so every setting runs in its own child
process (one model load each, not timed); settings are interleaved over `--repeats` and the best pass of each is
kept. Each child times a plain PyTorch + PEFT paired-LoRA loop (`bench/train_throughput.py`'s `plain` system, the
shipped D±) and `wsteer.generation.generate` over held-out questions. Ratios are against `1` in the same run.

    python bench/threads.py
    python bench/threads.py --settings default,1,2,2+interop1 --steps 4 --max-new-tokens 48 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_setting(s: str) -> tuple[int | None, int | None]:
    """`default` → (None, None); `2` → (2, None); `2+interop1` → (2, 1)."""
    if s == "default":
        return None, None
    intra, _, inter = s.partition("+interop")
    return int(intra), (int(inter) if inter else None)


def child(args) -> dict:
    """One setting, in this process: set the threads first, then load and time both loops."""
    import torch

    intra, inter = parse_setting(args.setting)
    if inter is not None:
        torch.set_num_interop_threads(inter)  # before any parallel work, or torch refuses
    if intra is not None:
        torch.set_num_threads(intra)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(0)
    from bench.common import DTYPE_NAMES, load, questions
    from bench.train_throughput import run_plain
    from wsteer.generation import generate

    out = {"setting": args.setting, "threads": torch.get_num_threads(),
           "interop_threads": torch.get_num_interop_threads()}
    targs = argparse.Namespace(arch=args.arch, device="cpu", batch_size=args.batch_size, max_length=args.max_length,
                               steps=args.steps, precision=args.precision)
    run_plain(targs)  # warm-up pass, not timed: allocator, oneDNN primitives
    r = run_plain(targs)
    out["train_tok_per_s"] = r["tokens"] / r["seconds"]
    model, tok = load(args.arch, "cpu", DTYPE_NAMES[args.dtype])
    convs = [[{"role": "user", "content": q}] for q in questions()[: args.prompts]]
    generate(model, tok, convs[:4], max_new_tokens=4, batch_size=args.gen_batch_size, progress=False)  # warm-up
    t0 = time.perf_counter()
    outs = generate(model, tok, convs, max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size,
                    progress=False)
    dt = time.perf_counter() - t0
    out["gen_new_tok_per_s"] = sum(o["new_tokens"] for o in outs) / dt
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="smollm2_135m", choices=("smollm2_135m", "tiny"))
    p.add_argument("--settings", default="default,1,2,1+interop1,2+interop1")
    p.add_argument("--repeats", type=int, default=2, help="interleaved passes over the settings; best kept")
    p.add_argument("--steps", type=int, default=3, help="training: optimizer steps per side")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed", "bf16-true"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="generation's weights")
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--gen-batch-size", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    p.add_argument("--json", default=None)
    p.add_argument("--setting", default=None, help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()
    if args.setting is not None:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    best: dict[str, dict] = {}
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k in ("arch", "steps", "batch_size", "max_length", "precision", "dtype", "prompts",
                            "gen_batch_size", "max_new_tokens")]
    for rep in range(args.repeats):
        for setting in args.settings.split(","):
            intra, _ = parse_setting(setting)
            env = dict(os.environ, WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
            env.pop("OMP_NUM_THREADS", None)
            if intra is not None:
                env["OMP_NUM_THREADS"] = str(intra)
            proc = subprocess.run([sys.executable, __file__, f"--setting={setting}", *passthrough], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=args.timeout)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                raise SystemExit(f"setting {setting} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line.removeprefix("RESULT "))
            print(f"pass {rep}, {setting}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in r.items()), flush=True)
            for stage in ("train_tok_per_s", "gen_new_tok_per_s"):
                b = best.setdefault(setting, dict(r))
                b[stage] = max(b[stage], r[stage])
    base = best.get("1") or next(iter(best.values()))
    print(f"\n## threads ({args.arch}, training {args.precision}, generation {args.dtype}; ratios vs "
          f"{base['setting']} in this run, best of {args.repeats})\n")
    print("| setting | torch threads / inter-op | training tok/s | × | generation new tok/s | × |")
    print("|---|---|---|---|---|---|")
    rows = []
    for s, r in best.items():
        r["train_ratio"] = r["train_tok_per_s"] / base["train_tok_per_s"]
        r["gen_ratio"] = r["gen_new_tok_per_s"] / base["gen_new_tok_per_s"]
        rows.append(r)
        print(f"| {s} | {r['threads']} / {r['interop_threads']} | {r['train_tok_per_s']:.1f} | {r['train_ratio']:.2f} "
              f"| {r['gen_new_tok_per_s']:.1f} | {r['gen_ratio']:.2f} |")
    for stage, key in (("training", "train_tok_per_s"), ("generation", "gen_new_tok_per_s")):
        print(f"fastest for {stage}: {max(rows, key=lambda r: r[key])['setting']}")
    if args.json:
        from wsteer.artifacts import write_json

        write_json(Path(args.json), {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
