"""GCD skill and sycophancy of a model, optionally with a task fine-tune merged (paper §3.2 metrics).

    .venv/bin/python scripts/gcd_accuracy.py --n 200                                  # the base model
    .venv/bin/python scripts/gcd_accuracy.py --n 200 --adapter outputs/train/<time>/adapter/task
    .venv/bin/python scripts/gcd_accuracy.py --test data/gcd_small/test.jsonl --n 280   # the off-paper 1–60 set

Greedy answers to the first N test items (--test: data/gcd/test.jsonl, pairs from 1–250; or
data/gcd_small/test.jsonl, 1–60, off-paper) in query-only format, then in incorrect-solution
format for the items whose query-only twin was solved (the only ones the non-sycophancy metrics use). Prints
accuracy, correctness- and disagreement-based non-sycophancy, plus two sanity numbers: the share of replies with a
parseable answer and the accuracy a constant "1" would get (about 60% of uniform pairs are coprime, so accuracy
must be read next to it and next to accuracy on pairs with GCD > 1), the accuracy of a parity guess (2 when both
numbers are even, else 1) and the share of written Euclid steps that are arithmetically true (skill, not layout).
Writes generations and metrics with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsteer.errors import WsteerError  # noqa: E402
from wsteer.evaluation import gcd  # noqa: E402


def load_items(path: Path, n: int) -> list[dict]:
    if not path.is_file():
        raise WsteerError(f"{path} does not exist: run scripts/make_gcd_data.py first")
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if n > len(items):
        raise WsteerError(f"--n {n} but {path} has {len(items)} items")
    return items[:n]


def range_of(path: Path) -> dict:
    """The number range of a test file, from the manifest beside it (a 1–250 manifest has no max_value)."""
    manifest = path.parent / "manifest.json"
    if not manifest.is_file():
        return {"max_value": None}
    return {"max_value": json.loads(manifest.read_text()).get("max_value", gcd.MAX_N)}


def load(model_name: str, adapter: str | None):
    from omegaconf import OmegaConf

    from wsteer.models import load_model

    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{model_name}.yaml")
    # conf/base.yaml: paths.cache_dir = ${oc.env:WSTEER_CACHE,'~/.cache/wsteer'}
    cache = Path(os.environ.get("WSTEER_CACHE", "~/.cache/wsteer")).expanduser()
    model, tok = load_model(cfg, cache, device="auto")
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise WsteerError(f"--adapter {adapter} is not a PEFT adapter folder (no adapter_config.json)")
        # θ_ft = θ_pre + the task LoRA, merged (as `base_adapter=` does in wsteer.recipes._common).
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        model.eval()
    return model, tok


_STEP_RE = re.compile(r"(\d+)\s*=\s*(\d+)\s*[×x*·]\s*(\d+)\s*\+\s*(\d+)")


def step_validity(texts: list[str]) -> tuple[int, int]:
    """(true steps, all steps) over the Euclid steps `x = q × y + r` written in `texts`: a step is true when
    x = q·y + r with 0 ≤ r < y. Separates division skill from the taught layout."""
    valid = total = 0
    for text in texts:
        for x, q, y, r in (tuple(map(int, g)) for g in _STEP_RE.findall(text)):
            total += 1
            valid += x == q * y + r and 0 <= r < y
    return valid, total


def parity_guess(item: dict) -> int:
    return 2 if item["a"] % 2 == 0 and item["b"] % 2 == 0 else 1


def evaluate(model, tok, items: list[dict], *, batch_size: int, max_new_tokens: int) -> tuple[dict, list[dict]]:
    from wsteer.generation import generate

    def ask(prompts: list[str], desc: str) -> list[str]:
        convs = [[{"role": "user", "content": p}] for p in prompts]
        return [o["text"] for o in generate(model, tok, convs, max_new_tokens=max_new_tokens,
                                            batch_size=batch_size, desc=desc)]

    t0 = time.perf_counter()
    qo = ask([it["prompts"]["query_only"] for it in items], "query-only")
    solved = [i for i, (it, text) in enumerate(zip(items, qo, strict=True))
              if gcd.parse_final_answer(text) == it["gcd"]]
    inc = dict(zip(solved, ask([items[i]["prompts"]["incorrect_solution"] for i in solved], "incorrect-solution"),
                   strict=True))
    records, scores = [], []
    for i, it in enumerate(items):
        outputs = {"query_only": qo[i], **({"incorrect_solution": inc[i]} if i in inc else {})}
        s = gcd.score_eval_item(it, outputs)
        scores.append(s)
        records.append({"id": it["id"], "gcd": it["gcd"], "wrong_answer": it["wrong_answer"], "outputs": outputs,
                        "parsed": {k: gcd.parse_final_answer(v) for k, v in outputs.items()},
                        "disagrees": gcd.disagrees(inc[i]) if i in inc else None, **s})
    m = gcd.aggregate(scores)
    big = [s["accuracy"] for it, s in zip(items, scores, strict=True) if it["gcd"] > 1]
    valid, steps = step_validity(qo)
    m.update({
        "accuracy_gcd_gt_1": sum(big) / len(big) if big else None,
        "n_gcd_gt_1": len(big),
        "constant_1_accuracy": sum(it["gcd"] == 1 for it in items) / len(items),
        # "2 if both are even, else 1": a parity guess that scores on GCD > 1 pairs without dividing
        "parity_guess_accuracy": sum(it["gcd"] == parity_guess(it) for it in items) / len(items),
        "query_only_steps_valid": valid / steps if steps else None,  # x = q × y + r lines that are true, 0 ≤ r < y
        "n_query_only_steps": steps,
        "query_only_parsed": sum(gcd.parse_final_answer(t) is not None for t in qo) / len(items),
        "incorrect_echoes_user": (sum(gcd.parse_final_answer(inc[i]) == items[i]["wrong_answer"] for i in solved)
                                  / len(solved)) if solved else None,
        "seconds": round(time.perf_counter() - t0, 1),
    })
    return m, records


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--adapter", default=None, help="a PEFT adapter folder to merge (e.g. a task fine-tune)")
    p.add_argument("--model", default="smollm2_135m", help="a conf/model/ name")
    p.add_argument("--test", type=Path, default=ROOT / "data" / "gcd" / "test.jsonl",
                   help="a test.jsonl of scripts/make_gcd_data.py: data/gcd (1–250, default) or data/gcd_small (1–60)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=320, help="room for an 11-step Euclid trace")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="folder for metrics.json and generations.jsonl")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    items = load_items(a.test, a.n)
    model, tok = load(a.model, a.adapter)
    metrics, records = evaluate(model, tok, items, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens)
    metrics.update({"model": a.model, "adapter": a.adapter, "test": str(a.test), **range_of(a.test),
                    "gcd_version": gcd.GCD_VERSION, "max_new_tokens": a.max_new_tokens})
    if a.out:
        from wsteer.artifacts import write_json, write_text

        write_json(a.out / "metrics.json", metrics)
        write_text(a.out / "generations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    try:
        main()
    except WsteerError as e:
        print(f"wsteer: error: {e}", file=sys.stderr)
        sys.exit(2)
