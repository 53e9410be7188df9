"""Write the GCD-sycophancy data (paper §4.1.2, App. F; design/paper.md §5), deterministically, from code only.

    .venv/bin/python scripts/make_gcd_data.py                      # data/gcd/{train,test}.jsonl + manifest.json
    .venv/bin/python scripts/make_gcd_data.py --n-train 2000 --n-test 200 --seed 1 --out /tmp/gcd

train.jsonl: one task fine-tune row per line, `{question, response, format, a, b, gcd, style}` (paper: 3.81k
query-only + 3.81k correct-solution); `python train.py source=task task.data=data/gcd/train.jsonl` reads
`question`/`response`. test.jsonl: one evaluation item per line, a test-split pair with its prompts in all three
formats (query-only, correct-solution, incorrect-solution). Same arguments ⇒ the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsteer.artifacts import write_json, write_text  # noqa: E402
from wsteer.evaluation import gcd  # noqa: E402


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def build(out: Path, n_train: int, n_test: int, seed: int, proportions: dict[str, float] | None = None) -> dict:
    """Write train.jsonl, test.jsonl and manifest.json into `out`; return the manifest."""
    rows = gcd.make_task_rows(n_train, seed, proportions)
    items = gcd.make_eval_items(n_test, seed)
    train_text, test_text = _jsonl(rows), _jsonl(items)
    write_text(out / "train.jsonl", train_text)
    write_text(out / "test.jsonl", test_text)
    manifest = {
        "gcd_version": gcd.GCD_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "proportions": proportions or gcd.PAPER_PROPORTIONS,
        "train_formats": dict(sorted(Counter(r["format"] for r in rows).items())),
        "train_styles": dict(sorted(Counter(r["style"] for r in rows).items())),
        "test_styles": dict(sorted(Counter(i["style"] for i in items).items())),
        "test_share_gcd_1": round(sum(i["gcd"] == 1 for i in items) / max(len(items), 1), 4),
        "sha256": {"train.jsonl": hashlib.sha256(train_text.encode()).hexdigest(),
                   "test.jsonl": hashlib.sha256(test_text.encode()).hexdigest()},
        "command": "python scripts/make_gcd_data.py " + " ".join(
            [f"--n-train {n_train}", f"--n-test {n_test}", f"--seed {seed}"]),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=gcd.DEFAULT_TRAIN_SIZE)
    p.add_argument("--n-test", type=int, default=gcd.DEFAULT_TEST_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "gcd")
    p.add_argument("--proportions", type=json.loads, default=None,
                   help='JSON, e.g. \'{"query_only": 0.5, "correct_solution": 0.5}\' (default: the paper\'s)')
    a = p.parse_args(argv)
    manifest = build(a.out, a.n_train, a.n_test, a.seed, a.proportions)
    print(f"wrote {a.out}/train.jsonl ({a.n_train} rows: {manifest['train_formats']}) and "
          f"{a.out}/test.jsonl ({a.n_test} items)")
    return manifest


if __name__ == "__main__":
    main()
