"""End-to-end wall time of the main job on the default model: first run (empty cache) and cached rerun.

Runs `python steer.py behavior=sycophancy k=-2` as a user would, in subprocesses, each side with a fresh cache
folder (`WSTEER_CACHE`) so the first run pays everything (GGUF → safetensors conversion, the two LoRA fine-tunes,
generation) and the cached rerun reuses what the first stored. Prints wall times, the stage timings each run wrote
(`timings.json`) and the ratios to the targets (first < 600 s, cached < 60 s on the 2-core CPU).

One side (extra Hydra overrides after `--`):

    python bench/main_job.py
    python bench/main_job.py -- trainer.group_by_length=true

Old defaults against new ones (issue 19), interleaved (old first run, new first run, old cached, new cached) so
load from other jobs hits both alike, each side on its own fresh cache; the metrics of both runs side by side
(`metrics.json`) and the ratios new/old (targets: first ≤ 0.6×, cached ≤ 0.3×). `--old-rev REV` runs the old side
from a `git worktree` of that revision (its own code, configs and data), removed at the end:

    python bench/main_job.py --old "" --new "model.dtype=bfloat16 trainer.precision=bf16-true"
    python bench/main_job.py --old-rev 91b4ca2 --new ""
    python bench/main_job.py --smoke --old "" --new "model.dtype=bfloat16"      # tiny model: plumbing only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"first": 600.0, "cached": 60.0}
RATIO_TARGETS = {"first": 0.6, "cached": 0.3}  # new / old (issue 19)
SUFFIXES = ("_stderr", "_ci_low", "_ci_high", "_n")


def run_once(side: dict, run: str, work: Path, timeout: float) -> dict:
    out = work / side["name"] / run
    cmd = [sys.executable, "steer.py", "behavior=sycophancy", "k=-2", f"hydra.run.dir={out}", *side["overrides"]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=side["root"], env=side["env"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{side['name']} {run} failed (exit {proc.returncode}): {' '.join(cmd[1:])}\n"
                         f"{proc.stderr[-3000:]}")
    read = lambda name: json.loads((out / name).read_text()) if (out / name).is_file() else {}  # noqa: E731
    result = {"wall_s": wall, "stages": read("timings.json"), "metrics": read("metrics.json")}
    print(f"{side['name']} {run}: {wall:.1f} s wall (target < {TARGETS[run]:.0f} s, {wall / TARGETS[run]:.2f} of it); "
          + ", ".join(f"{k} {v:.1f} s" for k, v in result["stages"].items() if isinstance(v, (int, float))),
          flush=True)
    return result


def make_side(name: str, overrides: list[str], work: Path, root: Path = ROOT) -> dict:
    env = dict(os.environ, WSTEER_CACHE=str(work / name / "cache"), WANDB_MODE="offline",
               WANDB_DIR=str(work / name), WANDB_SILENT="true", HF_HUB_OFFLINE="1")
    if root != ROOT:
        env["PYTHONPATH"] = str(root)  # the worktree's wsteer, not the editable install of this checkout
    (work / name).mkdir(parents=True, exist_ok=True)
    return {"name": name, "overrides": overrides, "root": root, "env": env}


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "—"


def comparison(results: dict) -> str:
    """Markdown: wall times and stages of both sides with new/old, then the metrics of both first runs."""
    old, new = results["old"], results["new"]
    lines = ["| run | old s | new s | new / old | target |", "|---|---|---|---|---|"]
    for run in ("first", "cached"):
        o, n = old[run]["wall_s"], new[run]["wall_s"]
        lines.append(f"| {run} | {o:.1f} | {n:.1f} | **{n / o:.2f}** | ≤ {RATIO_TARGETS[run]} |")
    for run in ("first", "cached"):
        stages = list(dict.fromkeys([*old[run]["stages"], *new[run]["stages"]]))
        lines += ["", f"| {run} run stage | old s | new s | new / old |", "|---|---|---|---|"]
        for s in stages:
            o, n = old[run]["stages"].get(s), new[run]["stages"].get(s)
            ratio = f"{n / o:.2f}" if isinstance(o, (int, float)) and isinstance(n, (int, float)) and o > 0 else "—"
            lines.append(f"| {s} | {fmt(o)} | {fmt(n)} | {ratio} |")
    mo, mn = old["first"]["metrics"], new["first"]["metrics"]
    names = [k for k in dict.fromkeys([*mo, *mn]) if not any(k.split("@")[0].endswith(x) for x in SUFFIXES)]
    lines += ["", "| metric (first run) | old [95%] | new | new − old | new inside old's 95% interval |",
              "|---|---|---|---|---|"]
    for k in names:
        o, n = mo.get(k), mn.get(k)
        base, _, at = k.partition("@")
        lo, hi = mo.get(f"{base}_ci_low@{at}"), mo.get(f"{base}_ci_high@{at}")
        ci = f" [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else ""
        inside = ("yes" if lo <= n <= hi else "**no**") if None not in (lo, hi, n) else "—"
        diff = f"{n - o:+.3g}" if o is not None and n is not None else "—"
        lines.append(f"| {k} | {fmt(o)}{ci} | {fmt(n)} | {diff} | {inside} |")
    same = {s: results[s]["first"]["metrics"] == results[s]["cached"]["metrics"] for s in ("old", "new")}
    lines += ["", "cached rerun reports the same metrics as the first run: "
              + ", ".join(f"{s} {'yes' if v else '**no**'}" for s, v in same.items())]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=None, help="Hydra overrides of the old defaults (a quoted list; '' = none)")
    p.add_argument("--new", default=None, help="Hydra overrides of the new defaults")
    p.add_argument("--old-rev", default=None, help="run the old side from a git worktree of this revision")
    p.add_argument("--smoke", action="store_true", help="debug=smoke on every side: the tiny model, seconds per run")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--json", default=None)
    p.add_argument("--work", default=None, help="run dirs and caches (default: a new temporary folder)")
    p.add_argument("extra", nargs="*", help="overrides for every side (after --)")
    args = p.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="wsteer-mainjob-"))
    common = [*(["debug=smoke", "logger=none"] if args.smoke else []), *args.extra]
    if args.old is None and args.new is None and args.old_rev is None:  # one side: first run, cached rerun
        side = make_side("run", common, work)
        results = {run: run_once(side, run, work, args.timeout) for run in ("first", "cached")}
        print(json.dumps({"command": "steer.py behavior=sycophancy k=-2 " + " ".join(common),
                          **{r: {k: v for k, v in res.items() if k != "metrics"} for r, res in results.items()}},
                         indent=2))
        return
    worktree = None
    try:
        old_root = ROOT
        if args.old_rev:
            worktree = work / "old-rev"
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.old_rev], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
            old_root = worktree
        sides = {"old": make_side("old", [*shlex.split(args.old or ""), *common], work, old_root),
                 "new": make_side("new", [*shlex.split(args.new or ""), *common], work)}
        results: dict[str, dict] = {"old": {}, "new": {}}
        for run in ("first", "cached"):  # interleaved: old first, new first, old cached, new cached
            for name in ("old", "new"):
                results[name][run] = run_once(sides[name], run, work, args.timeout)
    finally:
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
    described = {n: (f"rev {args.old_rev} " if n == "old" and args.old_rev else "") + " ".join(s["overrides"])
                 for n, s in sides.items()}
    print(f"\n## Main job, old vs new (steer.py behavior=sycophancy k=-2; each side on a fresh cache)\n\n"
          f"- old: {described['old'] or '(defaults)'}\n- new: {described['new'] or '(defaults)'}\n")
    print(comparison(results))
    if args.json:
        sys.path.insert(0, str(ROOT))
        from wsteer.artifacts import write_json

        write_json(Path(args.json), {"sides": described, "results": results,
                                     "ratios": {r: results["new"][r]["wall_s"] / results["old"][r]["wall_s"]
                                                for r in ("first", "cached")}})


if __name__ == "__main__":
    main()
