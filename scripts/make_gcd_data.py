"""Write the GCD-sycophancy data (paper §4.1.2, App. F; design/paper.md §5), deterministically, from code only.

    .venv/bin/python scripts/make_gcd_data.py                      # data/gcd/{train,test}.jsonl + manifest.json
    .venv/bin/python scripts/make_gcd_data.py --n-train 2000 --n-test 200 --seed 1 --out /tmp/gcd
    .venv/bin/python scripts/make_gcd_data.py --max-value 60 --n-train 4800 --n-test 280 --out data/gcd_small

train.jsonl: one task fine-tune row per line, `{question, response, format, a, b, gcd, style}` (paper: 3.81k
query-only + 3.81k correct-solution); `python train.py source=task task.data=data/gcd/train.jsonl` reads
`question`/`response`. test.jsonl: one evaluation item per line, a test-split pair with its prompts in all three
formats (query-only, correct-solution, incorrect-solution). Same arguments ⇒ the same bytes.

`--max-value N` draws the pairs from 1–N instead of the paper's 1–250 (off-paper; data/gcd_small is 1–60, see its
README); `--n-test` is then at most the range's distinct test pairs. A 1–250 manifest has exactly the keys it had
before the option existed, so data/gcd stays byte for byte what it was; another range adds `max_value` and its
pair counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsteer.artifacts import write_json, write_text  # noqa: E402
from wsteer.errors import WsteerError  # noqa: E402
from wsteer.evaluation import gcd  # noqa: E402


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def build(out: Path, n_train: int, n_test: int, seed: int, proportions: dict[str, float] | None = None,
          max_value: int = gcd.MAX_N) -> dict:
    """Write train.jsonl, test.jsonl and manifest.json into `out`; return the manifest."""
    rows = gcd.make_task_rows(n_train, seed, proportions, max_value=max_value)
    items = gcd.make_eval_items(n_test, seed, max_value=max_value)
    train_text, test_text = _jsonl(rows), _jsonl(items)
    write_text(out / "train.jsonl", train_text)
    write_text(out / "test.jsonl", test_text)
    args = [f"--n-train {n_train}", f"--n-test {n_test}", f"--seed {seed}"]
    off_paper = {}
    if max_value != gcd.MAX_N:
        args.append(f"--max-value {max_value}")
        if out.resolve().is_relative_to(ROOT):  # the repo's own folder is part of the command; a scratch one is not
            args.append(f"--out {out.resolve().relative_to(ROOT)}")
        off_paper = {"max_value": max_value, "range": f"1-{max_value} (off-paper; the paper's is 1-{gcd.MAX_N})",
                     "test_pairs": gcd.test_pool_size(max_value), "train_pairs": gcd.pool_size(max_value, test=False)}
    manifest = {
        "gcd_version": gcd.GCD_VERSION,
        **off_paper,
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
        "command": "python scripts/make_gcd_data.py " + " ".join(args),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=gcd.DEFAULT_TRAIN_SIZE)
    p.add_argument("--n-test", type=int, default=gcd.DEFAULT_TEST_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "data" / "gcd")
    p.add_argument("--max-value", type=int, default=gcd.MAX_N,
                   help=f"pairs from 1–N (default {gcd.MAX_N}, the paper's; data/gcd_small uses 60)")
    p.add_argument("--proportions", type=json.loads, default=None,
                   help='JSON, e.g. \'{"query_only": 0.5, "correct_solution": 0.5}\' (default: the paper\'s)')
    a = p.parse_args(argv)
    manifest = build(a.out, a.n_train, a.n_test, a.seed, a.proportions, a.max_value)
    print(f"wrote {a.out}/train.jsonl ({a.n_train} rows: {manifest['train_formats']}) and "
          f"{a.out}/test.jsonl ({a.n_test} items), pairs from 1–{a.max_value}")
    return manifest


if __name__ == "__main__":
    try:
        main()
    except WsteerError as e:  # e.g. --n-test beyond the range's distinct test pairs
        print(f"wsteer: error: {e}", file=sys.stderr)
        sys.exit(2)
