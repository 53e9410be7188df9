"""Rebuild the derived files under data/eval/ and re-measure the default model on our QA set.

    .venv/bin/python data/eval/build_eval_data.py mmlu-sample      # writes mmlu/test_sample_seed0.jsonl
    .venv/bin/python data/eval/build_eval_data.py qa-accuracy      # SmolLM2-135M plain accuracy on factual_qa/ours

The copied upstream files (GSM8K, MMLU, TruthfulQA, ...) are byte-identical to the sources listed in README.md;
nothing here downloads anything.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mmlu_sample() -> None:
    from wsteer.evaluation.datasets import mmlu

    items = mmlu(n=100, seed=0)
    with (HERE / "mmlu" / "test_sample_seed0.jsonl").open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} items")


def qa_accuracy(source: str = "ours") -> None:
    import torch
    from omegaconf import OmegaConf

    from wsteer.evaluation.factual_qa import FactualQA
    from wsteer.generation import generate
    from wsteer.models import load_model

    torch.set_num_threads(2)
    model, tok = load_model(
        OmegaConf.load("conf/model/smollm2_135m.yaml"), Path.home() / ".cache" / "wsteer", "cpu"
    )
    items = FactualQA(source=source).items()  # the shipped set of conf/evaluator/factual_qa.yaml, all items
    start = time.time()
    convs = [[{"role": "user", "content": it["question"] + " Answer briefly."}] for it in items]
    outs = generate(model, tok, convs, max_new_tokens=24, batch_size=32, progress=False)
    correct = incorrect = 0
    per_cat: dict[str, list[int]] = {}
    rows = []
    for it, out in zip(items, outs, strict=True):
        text = out["text"].lower()
        ok = any(a.lower() in text for a in it["aliases"])
        bad = any(a.lower() in text for a in it["incorrect_aliases"])
        correct += ok
        incorrect += bad and not ok
        per_cat.setdefault(it.get("category", ""), []).append(ok)
        rows.append({"id": it["id"], "answer": out["text"], "correct": ok})
    n = len(items)
    print(
        f"{source}: {correct}/{n} correct = {correct / n:.1%}; incorrect-only {incorrect}/{n}; {time.time() - start:.0f}s"
    )
    for cat, oks in sorted(per_cat.items()):
        print(f"  {cat:12s} {sum(oks)}/{len(oks)} = {sum(oks) / len(oks):.0%}")
    Path("/tmp/wsteer_qa_answers.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "mmlu-sample":
        mmlu_sample()
    elif cmd == "qa-accuracy":
        qa_accuracy(*sys.argv[2:3])
    else:
        sys.exit(__doc__)
