"""Precision study: do bf16 weights change the sycophancy suite's metrics, against fp32, at k = 0 and k = −2?

Each arm is one `steer.py behavior=sycophancy method=weight k=-2` run (subprocess) with every factual QA question
(`evaluator.factual_qa.limit=null`: 297 questions × 4 prompt variants) and the MMLU sample (`--mmlu-n`, default
the suite's 100), plus the 20 held-out answers steer.py always writes. Arms (`--arms NAME:OVERRIDES;...`):

- `float32` (the reference): `model.dtype=float32`; it builds or reuses the default sycophancy vector w;
- `bfloat16`: `model.dtype=bfloat16` with the **same** w (`vector=`, read from the reference's report), so only
  the evaluation's precision differs.

An arm whose overrides set `trainer.precision` builds its own vector instead (e.g.
`bf16_trained:model.dtype=bfloat16 trainer.precision=bf16-true`: the whole job in bf16).

Every answer goes through the item store (`WSTEER_CACHE`, or `--cache`), which keys on the dtype: an interrupted
study resumes where it stopped, and a rerun only reads. From each arm's `eval_items.jsonl` it prints, per metric
and k, both values and the paired difference arm − reference over the same item ids with a 95% paired-bootstrap
interval (`wsteer.evaluation.uncertainty.paired_difference`), whether the arm's value lies inside the reference's
own 95% interval, and the answer agreement (share of items whose greedy answers are identical; for factual QA
an item's 4 answers, also counted one by one).

    python bench/precision.py                              # the study (on a quiet machine: see BENCHMARKS.md)
    python bench/precision.py --smoke                      # tiny model, 4 items: checks the plumbing (~30 s)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsteer.evaluation.uncertainty import estimate, paired_difference, scores_by  # noqa: E402

DEFAULT_ARMS = "float32:model.dtype=float32;bfloat16:model.dtype=bfloat16"
VECTOR_LINE = re.compile(r"^- \*\*vector\*\*: (.+?) \((?:built in this run|reused)\)", re.M)


def parse_arms(text: str) -> list[tuple[str, list[str]]]:
    arms = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, overrides = part.partition(":")
        arms.append((name.strip(), overrides.split()))
    if len(arms) < 2:
        raise SystemExit("--arms needs a reference and at least one arm: 'ref:OVERRIDES;arm:OVERRIDES'")
    return arms


def vector_of(run_dir: Path) -> Path:
    """The vector file a steer.py run used, from its report (a cache folder means its contrastive w)."""
    m = VECTOR_LINE.search((run_dir / "report.md").read_text())
    if m is None:
        raise SystemExit(f"{run_dir / 'report.md'} names no vector")
    path = Path(m.group(1))
    return path / "contrastive.safetensors" if path.is_dir() else path


def run_arm(name: str, overrides: list[str], common: list[str], work: Path, env: dict, timeout: float) -> dict:
    out = work / name
    cmd = [sys.executable, "steer.py", *common, *overrides, f"hydra.run.dir={out}"]
    print(f"{name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"arm {name} failed (exit {proc.returncode}); rerun to resume:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    timings = json.loads((out / "timings.json").read_text())
    records = [json.loads(line) for line in (out / "eval_items.jsonl").read_text().splitlines() if line.strip()]
    print(f"{name}: {wall:.1f} s wall; " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()
                                                     if k.startswith("eval/") or k == "total"), flush=True)
    return {"dir": out, "wall_s": wall, "timings": timings, "records": records}


def agreement(ref: list[dict], arm: list[dict]) -> dict[tuple[str, float], dict]:
    """Per (evaluator, k): items, share of items with identical outputs, share of identical single answers."""
    by_ref = {(r["evaluator"], float(r["k"]), r["id"]): r.get("outputs") for r in ref}
    out: dict[tuple[str, float], dict] = {}
    for r in arm:
        key = (r["evaluator"], float(r["k"]))
        other = by_ref.get((*key, r["id"]))
        if other is None:
            continue
        mine = r.get("outputs")
        a = out.setdefault(key, {"items": 0, "same_items": 0, "answers": 0, "same_answers": 0})
        a["items"] += 1
        a["same_items"] += mine == other
        if isinstance(mine, dict) and isinstance(other, dict):
            for v in mine:
                a["answers"] += 1
                a["same_answers"] += mine[v] == other.get(v)
        else:
            a["answers"] += 1
            a["same_answers"] += mine == other
    return out


def compare(ref: list[dict], arm: list[dict], seed: int = 0) -> list[dict]:
    """One row per (evaluator, k, metric) both runs scored: values, paired Δ, inside the reference's interval."""
    sr, sa = scores_by(ref), scores_by(arm)
    rows = []
    for key in sorted(set(sr) & set(sa), key=lambda t: (t[0], -t[1])):
        for metric in sr[key]:
            if metric not in sa[key]:
                continue
            a, b = sa[key][metric], sr[key][metric]
            e_ref = estimate([b[i] for i in sorted(b)], seed)
            e_arm = estimate([a[i] for i in sorted(a)], seed)
            d = paired_difference(a, b, seed)
            if e_ref is None or e_arm is None or d is None:
                continue
            rows.append({"evaluator": key[0], "k": key[1], "metric": metric, "ref": e_ref, "arm": e_arm, "delta": d,
                         "inside_ref_ci": e_ref.low <= e_arm.value <= e_ref.high})
    return rows


def markdown(ref_name: str, name: str, rows: list[dict], agree: dict, ref_run: dict, arm_run: dict) -> str:
    lines = [f"#### {name} vs {ref_name}", "",
             f"| metric | k | {ref_name} | {name} | Δ {name} − {ref_name} [95%] | inside {ref_name}'s 95% interval |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['evaluator']}/{r['metric']} | {r['k']:g} | {r['ref'].format()} | {r['arm'].format()} "
                     f"| {r['delta'].format_delta(3)} | {'yes' if r['inside_ref_ci'] else '**no**'} |")
    lines += ["", "| evaluator | k | items | identical items | identical answers |", "|---|---|---|---|---|"]
    for (ev, k), a in sorted(agree.items(), key=lambda t: (t[0][0], -t[0][1])):
        lines.append(f"| {ev} | {k:g} | {a['items']} | {a['same_items'] / a['items']:.3f} "
                     f"| {a['same_answers'] / a['answers']:.3f} ({a['same_answers']}/{a['answers']}) |")
    stages = sorted(k for k in {**ref_run["timings"], **arm_run["timings"]} if k.startswith("eval/"))
    lines += ["", f"| stage | {ref_name} s | {name} s | {name} / {ref_name} |", "|---|---|---|---|"]
    for s in stages:
        t0, t1 = ref_run["timings"].get(s), arm_run["timings"].get(s)
        if t0 and t1:
            lines.append(f"| {s} | {t0:.1f} | {t1:.1f} | {t1 / t0:.2f} |")
    lines += ["", "(stage times are only comparable when neither arm read its items from the item store: a fresh "
              "`--cache`)"]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=DEFAULT_ARMS, help="'name:overrides;name:overrides'; the first is the reference")
    p.add_argument("--k", type=float, default=-2.0)
    p.add_argument("--mmlu-n", type=int, default=None, help="MMLU items (default: the suite's 100)")
    p.add_argument("--vector", default=None, help="steer every arm with this w (default: the reference's)")
    p.add_argument("--work", default=str(ROOT / "outputs" / "precision_study"), help="run dirs of the arms")
    p.add_argument("--cache", default=None, help="WSTEER_CACHE for the arms (default: the environment's)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the arms (default: torch's)")
    p.add_argument("--smoke", action="store_true", help="tiny model (debug=smoke), 4 items per evaluator")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per arm")
    p.add_argument("--json", default=None)
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every arm")
    args = p.parse_args()
    arms = parse_arms(args.arms)
    work = Path(args.work)
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.cache:
        env["WSTEER_CACHE"] = str(Path(args.cache).expanduser())
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    common = ["behavior=sycophancy", "method=weight", f"k={args.k:g}", "logger=none",
              "evaluator.factual_qa.limit=null", *(["debug=smoke", "eval.max_items=4"] if args.smoke else []),
              *([f"evaluator.mmlu.n={args.mmlu_n}"] if args.mmlu_n else []), *args.extra]
    runs: dict[str, dict] = {}
    vector = Path(args.vector) if args.vector else None
    for name, overrides in arms:
        own_vector = any(o.startswith("trainer.precision=") for o in overrides)
        given = [] if own_vector or vector is None else [f"vector={vector}"]
        runs[name] = run_arm(name, [*overrides, *given], common, work, env, args.timeout)
        if vector is None and not own_vector:
            vector = vector_of(runs[name]["dir"])
            print(f"{name}: steering every arm with {vector}", flush=True)
    ref_name = arms[0][0]
    ref = runs[ref_name]
    out_md, out_json = [f"### Precision study (k = 0 and k = {args.k:g}; {ref_name} is the reference)", ""], {}
    for name, _ in arms[1:]:
        rows = compare(ref["records"], runs[name]["records"])
        agree = agreement(ref["records"], runs[name]["records"])
        out_md += [markdown(ref_name, name, rows, agree, ref, runs[name]), ""]
        out_json[name] = {"rows": [{**r, "ref": r["ref"].__dict__, "arm": r["arm"].__dict__,
                                    "delta": r["delta"].__dict__} for r in rows],
                          "agreement": [{"evaluator": ev, "k": k, **a} for (ev, k), a in agree.items()],
                          "timings": runs[name]["timings"], "wall_s": runs[name]["wall_s"]}
    print("\n" + "\n".join(out_md))
    if args.json:
        from wsteer.artifacts import write_json

        write_json(Path(args.json), {"args": vars(args), "vector": str(vector), "reference": ref_name,
                                     "reference_timings": ref["timings"], "arms": out_json})


if __name__ == "__main__":
    main()
