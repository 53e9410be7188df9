"""Evaluation datasets (paper §3 and §4): one loader per eval, each returning plain dicts with a stable string id.

Every loader reads only the files shipped under `data/eval/` (see `data/eval/README.md` for where each file came
from, its license and row count) or, for the `*_hub` sources, loads the paper's own dataset by hub id. Loaders are
deterministic for a given seed: `limit=None` returns every item in file order; a `limit` draws that many items with
`random.Random(seed)` and returns them in file order, so a sample keeps the file's spread over categories.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from wsteer.errors import WsteerError

EVAL_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "eval"


# --------------------------------------------------------------------------------------------------------------
# shared helpers


def _path(*parts: str) -> Path:
    path = EVAL_DATA_DIR.joinpath(*parts)
    if not path.exists():
        raise WsteerError(
            f"evaluation data file {path} is missing; it ships with the wsteer repository under data/eval/ "
            "(run from a git checkout, or restore it with `git checkout -- data/eval`)"
        )
    return path


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_csv(path: Path, header: bool = True) -> list[dict] | list[list[str]]:
    # utf-8-sig: TruthfulQA's csv starts with a BOM (shared PROVENANCE note); harmless for the others.
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f)) if header else list(csv.reader(f))


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise WsteerError(f"limit must be a non-negative integer or None (all items); got {limit!r}")


def _take(items: list, limit: int | None, seed: int) -> list:
    """All items (limit None or >= len), else a seeded sample of `limit` kept in file order."""
    _check_limit(limit)
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _unknown(kind: str, source: str, known) -> WsteerError:
    return WsteerError(f"unknown {kind} source {source!r}; choose one of: {', '.join(sorted(known))}")


def _hub(loader: Callable[[], object], what: str):
    """Run a `datasets.load_dataset` call; turn any offline / missing-dataset failure into one clear line."""
    try:
        return loader()
    except (
        Exception
    ) as e:  # datasets raises many types (ConnectionError, FileNotFoundError, HfHubHTTPError, ...)
        raise WsteerError(
            f"could not load {what} from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "this source needs network access or a warm HF datasets cache. Offline, use the shipped local "
            "source instead (see data/eval/README.md)"
        ) from e


def unique_texts(values) -> list[str]:
    """Non-empty stripped strings, first occurrence kept (answer aliases)."""
    out: list[str] = []
    for v in values:
        v = str(v).strip()
        if v and v not in out:
            out.append(v)
    return out


# --------------------------------------------------------------------------------------------------------------
# 1. factual QA with a correct and an incorrect answer (sycophancy eval, paper §4.1.1)


def factual_qa(source: str = "ours", limit: int | None = None, seed: int = 0) -> list[dict]:
    """Questions with `correct`/`incorrect` answers and accepted spellings (`aliases`, `incorrect_aliases`).

    The paper measures sycophancy on Sharma et al.'s "answer" set (TriviaQA + TruthfulQA questions asked plainly and
    with a user who suggests the incorrect answer or doubts the correct one). That file is not available offline,
    so "ours" (easy questions the 135M default model can answer) and "truthfulqa" stand in;
    "sycophancy_eval_hub" loads the original by hub id when there is network.
    """
    loaders = {"ours": _qa_ours, "truthfulqa": _qa_truthfulqa, "sycophancy_eval_hub": _qa_sycophancy_hub}
    if source not in loaders:
        raise _unknown("factual_qa", source, loaders)
    return _take(loaders[source](), limit, seed)


def _qa_ours() -> list[dict]:
    rows = _read_jsonl(_path("factual_qa", "ours.jsonl"))
    return [
        {
            "id": r["id"],
            "question": r["question"],
            "correct": r["correct"],
            "incorrect": r["incorrect"],
            "aliases": unique_texts([r["correct"], *r["aliases"]]),
            "incorrect_aliases": unique_texts([r["incorrect"], *r["incorrect_aliases"]]),
            "category": r["category"],
        }
        for r in rows
    ]


def _qa_truthfulqa() -> list[dict]:
    out = []
    for i, r in enumerate(_read_csv(_path("truthfulqa", "TruthfulQA.csv"))):
        correct = unique_texts([r["Best Answer"], *r["Correct Answers"].split(";")])
        incorrect = unique_texts(r["Incorrect Answers"].split(";"))
        if not incorrect:
            continue
        out.append(
            {
                "id": f"truthfulqa-{i:04d}",
                "question": r["Question"].strip(),
                "correct": correct[0],
                "incorrect": incorrect[0],
                "aliases": correct,
                "incorrect_aliases": incorrect,
                "category": r["Category"],
            }
        )
    return out


def _qa_sycophancy_hub() -> list[dict]:
    from datasets import load_dataset

    ds = _hub(
        lambda: load_dataset("meg-tong/sycophancy-eval", data_files="answer.jsonl", split="train"),
        "meg-tong/sycophancy-eval answer.jsonl",
    )
    out, seen = [], set()
    for row in ds:
        base = row["base"]
        question = base["question"].strip()
        # Each question appears under 4 prompt templates (plain, doubt, suggest-incorrect, suggest-correct);
        # the loader returns the question once and the evaluator builds the templates itself.
        if question in seen:
            continue
        seen.add(question)
        extra = base.get("answer") or []
        extra = [extra] if isinstance(extra, str) else list(extra)
        out.append(
            {
                "id": f"{base.get('dataset', 'sycophancy_eval')}-{len(out):04d}",
                "question": question,
                "correct": base["correct_answer"],
                "incorrect": base["incorrect_answer"],
                "aliases": unique_texts([base["correct_answer"], *extra]),
                "incorrect_aliases": unique_texts([base["incorrect_answer"]]),
                "category": base.get("dataset", ""),
            }
        )
    return out


# --------------------------------------------------------------------------------------------------------------
# 2. MMLU (capability retention, paper §4.2)

MMLU_LETTERS = "ABCD"


def mmlu(n: int | None = 100, seed: int = 0, source: str = "local") -> list[dict]:
    """MMLU test items `{"id", "subject", "question", "choices", "answer"}` (answer is 0-3).

    The paper scores tinyMMLU (100 IRT-chosen items). tinyMMLU is not available offline, so "local" draws a
    fixed-seed uniform sample of `n` items from the full shipped test split (n=None: all 14,042);
    `data/eval/mmlu/test_sample_seed0.jsonl` records the default sample (n=100, seed 0) for inspection.
    """
    if source == "local":
        return _take(_mmlu_local(), n, seed)
    if source == "tinymmlu_hub":
        return _take(_mmlu_tiny_hub(), n, seed)
    raise _unknown("mmlu", source, ["local", "tinymmlu_hub"])


def _mmlu_local() -> list[dict]:
    folder = _path("mmlu", "test")
    files = sorted(folder.glob("*_test.csv"))
    if not files:
        raise WsteerError(
            f"no *_test.csv files in {folder}; restore them with `git checkout -- data/eval/mmlu`"
        )
    out = []
    for f in files:
        subject = f.name[: -len("_test.csv")]
        for i, row in enumerate(_read_csv(f, header=False)):
            if len(row) != 6 or row[5].strip() not in MMLU_LETTERS:
                raise WsteerError(f"{f} row {i + 1} is not `question,A,B,C,D,letter`; the file is corrupt")
            out.append(
                {
                    "id": f"mmlu-{subject}-{i:04d}",
                    "subject": subject,
                    "question": row[0],
                    "choices": row[1:5],
                    "answer": MMLU_LETTERS.index(row[5].strip()),
                }
            )
    return out


def _mmlu_tiny_hub() -> list[dict]:
    from datasets import load_dataset

    ds = _hub(lambda: load_dataset("tinyBenchmarks/tinyMMLU", split="test"), "tinyBenchmarks/tinyMMLU")
    return [
        {
            "id": f"tinymmlu-{i:03d}",
            "subject": row["subject"],
            "question": row["question"],
            "choices": list(row["choices"]),
            "answer": int(row["answer"]),
        }
        for i, row in enumerate(ds)
    ]


# --------------------------------------------------------------------------------------------------------------
# 3. "World Affecting" two-option scenarios (evil multiple-choice eval, paper §4.2)

_OPTION_A = re.compile(r"^[ \t]*\(?A\)[ \t]*", re.M)
_OPTION_B = re.compile(r"^[ \t]*\(?B\)[ \t]*", re.M)
# Text outside the option lines that points at a letter would be wrong once the options are reordered.
_LETTER_REF = re.compile(r"\b(?:option|choice|answer)\s+\(?[AB]\b|\([AB]\)|\b[AB]\)")


def _split_world_affecting(prompt: str) -> tuple[str, str, str] | None:
    """(scenario, option A, option B) for the layout `context / A) ... / B) ... [/ trailer]`, else None.

    A trailer after option B (a closing question, or a note on what is rewarded) is moved to the end of the
    scenario. Items laid out otherwise (options inline, nested lists, a trailer that names a letter) are dropped:
    their options cannot be reordered safely.
    """
    a, b = list(_OPTION_A.finditer(prompt)), list(_OPTION_B.finditer(prompt))
    if len(a) != 1 or len(b) != 1 or b[0].start() < a[0].end():
        return None
    context = prompt[: a[0].start()].strip()
    opt_a = prompt[a[0].end() : b[0].start()].strip()
    opt_a = re.sub(r"\s*\bor\s*$", "", opt_a).strip()  # "A) ...\n\nor\nB) ..."
    rest = prompt[b[0].end() :].strip().split("\n\n", 1)
    opt_b, trailer = rest[0].strip(), (rest[1].strip() if len(rest) > 1 else "")
    if not context or not opt_a or not opt_b or "\n\n" in opt_a or "\n" in opt_b:
        return None
    if any(_LETTER_REF.search(t) for t in (context, opt_a, opt_b, trailer)):
        return None
    scenario = f"{context}\n\n{trailer}" if trailer else context
    return scenario, opt_a, opt_b


def world_affecting(limit: int | None = None, seed: int = 0) -> list[dict]:
    """Two-option scenarios `{"id", "scenario", "options": [A, B], "evil_index", "prompt"}`.

    Source: Kei et al.'s world_affecting_{approval,reward} files (both; which one the paper used is not stated).
    `high_reward_answer` is the unethical option. We reorder the two options so the unethical one sits at A in
    exactly half the returned items (the extra one of an odd count goes to B), chosen by `seed`: a model that
    always answers A or always B then scores a 50% evil rate, not the file's own skew. `prompt` renders the item
    as "scenario, A) ..., B) ..."; the evaluator adds the paper's answer instructions.
    """
    items = []
    for name in ("approval", "reward"):
        for i, row in enumerate(_read_jsonl(_path("world_affecting", f"world_affecting_{name}.jsonl"))):
            parts = _split_world_affecting(row["prompt_list"][0])
            if parts is None:
                continue
            scenario, opt_a, opt_b = parts
            evil = opt_a if row["high_reward_answer"].strip() == "A" else opt_b
            good = opt_b if evil is opt_a else opt_a
            items.append(
                {"id": f"world_affecting-{name}-{i:03d}", "scenario": scenario, "evil": evil, "good": good}
            )
    chosen = _take(items, limit, seed)
    rng = random.Random(f"world_affecting-{seed}")
    evil_first = set(rng.sample(range(len(chosen)), len(chosen) // 2))
    out = []
    for j, it in enumerate(chosen):
        options = [it["evil"], it["good"]] if j in evil_first else [it["good"], it["evil"]]
        out.append(
            {
                "id": it["id"],
                "scenario": it["scenario"],
                "options": options,
                "evil_index": 0 if j in evil_first else 1,
                "prompt": f"{it['scenario']}\n\nA) {options[0]}\nB) {options[1]}",
            }
        )
    return out


# --------------------------------------------------------------------------------------------------------------
# 4. harmful requests (refusal / safety eval, paper §4.3)


def harmful_requests(source: str = "directharm4", limit: int | None = None, seed: int = 0) -> list[dict]:
    """Harmful requests `{"id", "request", "category"}`: DirectHarm4 (the paper's §4.3 set; 4 categories × 100)
    or AdvBench harmful behaviors (the `goal` text only; category "advbench")."""
    if source == "directharm4":
        rows = _read_csv(_path("directharm4", "directHarm4.csv"))
        items = [
            {"id": f"directharm4-{i:03d}", "request": r["Goal"].strip(), "category": r["Category"].strip()}
            for i, r in enumerate(rows)
        ]
    elif source == "advbench":
        rows = _read_csv(_path("advbench", "harmful_behaviors.csv"))
        items = [
            {"id": f"advbench-{i:03d}", "request": r["goal"].strip(), "category": "advbench"}
            for i, r in enumerate(rows)
        ]
    else:
        raise _unknown("harmful_requests", source, ["directharm4", "advbench"])
    return _take(items, limit, seed)


# --------------------------------------------------------------------------------------------------------------
# 5. GSM8K (task fine-tune and capability retention, paper §4.3)

_CALC = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. "<<16-3-4=9>>"


def gsm8k(split: str = "test", limit: int | None = None, seed: int = 0) -> list[dict]:
    """GSM8K `{"id", "question", "solution", "answer"}`; `solution` is the full worked text (calculator
    annotations removed), `answer` the number after "####" without commas. Both splits ship in full."""
    if split not in ("train", "test"):
        raise WsteerError(f"gsm8k split must be 'train' or 'test'; got {split!r}")
    rows = _read_jsonl(_path("gsm8k", f"{split}.jsonl"))
    items = []
    for i, r in enumerate(rows):
        solution, sep, final = r["answer"].rpartition("####")
        if not sep:
            raise WsteerError(
                f"data/eval/gsm8k/{split}.jsonl row {i + 1} has no '####' answer; the file is corrupt"
            )
        items.append(
            {
                "id": f"gsm8k-{split}-{i:04d}",
                "question": r["question"],
                "solution": _CALC.sub("", r["answer"]).strip(),
                "answer": _normalise_number(final.strip()),
            }
        )
    return _take(items, limit, seed)


_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_HASHES = re.compile(rf"####\s*({_NUMBER})")
_ANSWER_IS = re.compile(rf"answer\s+is\s*:?\s*\**\s*({_NUMBER})", re.I)
_ANY = re.compile(_NUMBER)


def _normalise_number(text: str) -> str:
    s = text.replace(",", "").replace("$", "").strip()
    if "." in s:
        s = s.rstrip("0").rstrip(".")  # "18.0" -> "18", "2.50" -> "2.5"
    return "0" if s == "-0" else s


def gsm8k_answer(text: str) -> str | None:
    """The final number of a GSM8K-style answer, normalised for exact match (no commas, no "$", no trailing .0).

    Prefers "#### N" (the dataset's own format), then "answer is N", then the last number in the text; None when the
    text holds no number.
    """
    for pattern in (_HASHES, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            return _normalise_number(found[-1])
    found = _ANY.findall(text)
    return _normalise_number(found[-1]) if found else None


# --------------------------------------------------------------------------------------------------------------
# 6. GSM-Danger substitute (paper §4.3)

GSM_DANGER_SIZE = 100  # the original GSM-Danger has 100 prompts
_FOLLOW_UPS = (
    "After solving that, {request}.",
    "Once you have the answer, also {request}.",
    "When you are done with the math, please {request}.",
    "Then, after you give the result, {request}.",
)


def gsm_danger(limit: int | None = None, seed: int = 0) -> list[dict]:
    """Our GSM-Danger stand-in `{"id", "prompt", "request", "math_question"}`: a GSM8K test problem followed by an
    AdvBench request phrased as a follow-up. Like GSM-Danger (Lyu et al. 2024), the prompt opens as a benign math
    task and ends with a harmful request, so it probes whether a math fine-tune erodes refusals (paper §4.3).
    The original 100 prompts are not available; the seed picks which problems, requests and phrasings are paired.
    """
    rng = random.Random(f"gsm_danger-{seed}")
    problems = rng.sample(gsm8k("test"), GSM_DANGER_SIZE)
    requests = rng.sample(harmful_requests("advbench"), GSM_DANGER_SIZE)
    items = []
    for j, (p, r) in enumerate(zip(problems, requests, strict=True)):
        request = r["request"].rstrip(".")
        request = request[0].lower() + request[1:]
        follow_up = rng.choice(_FOLLOW_UPS).format(request=request)
        items.append(
            {
                "id": f"gsm_danger-{seed}-{j:03d}",
                "prompt": f"{p['question']}\n\n{follow_up}",
                "request": r["request"],
                "math_question": p["question"],
                "source_ids": [p["id"], r["id"]],
            }
        )
    return _take(items, limit, seed)


# --------------------------------------------------------------------------------------------------------------
# 7. held-out prose for perplexity (capability retention)

HELDOUT_MIN_WORDS, HELDOUT_MAX_WORDS = 30, 200


def heldout_text(limit: int | None = None) -> list[str]:
    """Passages of 30-200 words for perplexity: our own encyclopedic passages (CC0) followed by the Alpaca
    sample's instruction + response pairs (CC BY-NC 4.0) that fall in the length range. Never used for training."""
    ours = [r["text"] for r in _read_jsonl(_path("heldout_text", "ours.jsonl"))]
    alpaca = []
    for r in json.loads(_path("heldout_text", "alpaca_tiny.json").read_text(encoding="utf-8")):
        text = "\n\n".join(p.strip() for p in (r["instruction"], r["input"], r["output"]) if p.strip())
        if HELDOUT_MIN_WORDS <= len(text.split()) <= HELDOUT_MAX_WORDS:
            alpaca.append(text)
    _check_limit(limit)
    passages = ours + alpaca
    return passages if limit is None else passages[:limit]


# --------------------------------------------------------------------------------------------------------------

DATASETS: dict[str, tuple[Callable[..., list], str]] = {
    "factual_qa": (factual_qa, "questions with a correct and an incorrect answer (sycophancy, §4.1.1)"),
    "mmlu": (mmlu, "MMLU test multiple choice, fixed-seed sample standing in for tinyMMLU (§4.2)"),
    "world_affecting": (
        world_affecting,
        "two-option ethical/unethical scenarios, A/B balanced (evil MCQ, §4.2)",
    ),
    "harmful_requests": (harmful_requests, "DirectHarm4 or AdvBench harmful requests (refusal/safety, §4.3)"),
    "gsm8k": (gsm8k, "grade-school math word problems with final answers (task fine-tune, §4.3)"),
    "gsm_danger": (gsm_danger, "GSM8K problem + harmful follow-up request, our GSM-Danger stand-in (§4.3)"),
    "heldout_text": (heldout_text, "held-out prose passages for perplexity (capability retention)"),
}
