"""Math capability after the GSM8K task fine-tune (paper §3.4): exact match on the final number.

The reference answer is the number after "####" in the GSM8K solution; the model's answer is its "#### N" line
if present, else "the answer is N", else its last number (`gsm8k_answer`). The shipped splits are dataset nodes
in conf/evaluator/gsm8k.yaml (`source: test | train`).
"""

from __future__ import annotations

import re

from wsteer.errors import WsteerError
from wsteer.evaluation.base import Evaluator

INSTRUCTION = "Solve the problem step by step, then give the final answer on its own line as \"#### <number>\"."
_CALC = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. "<<16-3-4=9>>"
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


class GSM8K(Evaluator):
    name = "gsm8k"
    version = 1
    metric_names = ("accuracy", "answered_rate")
    dataset_fields = {"question": True, "answer": True, "solution": False}

    def __init__(self, source: str = "test", **kw):
        # `source` is not among the settings (kept as they were, so stored items stay valid): the data hash
        # already tells the splits apart
        super().__init__(source=source, **kw)

    def from_dataset(self, items: list[dict]) -> list[dict]:
        """`answer` may be the final number or a worked solution ending in "#### N", as in GSM8K itself; a
        `solution` column keeps the worked text without its calculator annotations."""
        out = []
        for i, it in enumerate(items):
            answer = gsm8k_answer(str(it["answer"]))
            if answer is None:
                raise WsteerError(f"evaluator {self.name}: row {i + 1} ({it['id']}) has no number in its answer "
                                  f"{str(it['answer'])[-80:]!r}")
            extra = {"solution": _CALC.sub("", str(it["solution"])).strip()} if "solution" in it else {}
            out.append({**it, "answer": answer, **extra})
        return out

    def evaluate(self, items: list[dict]) -> list[dict]:
        texts = self.answer([[{"role": "user", "content": f"{it['question'].strip()}\n{INSTRUCTION}"}] for it in items])
        recs = []
        for it, t in zip(items, texts, strict=True):
            got = gsm8k_answer(t)
            recs.append({"outputs": {"answer": t}, "parsed": got, "scores": {
                "accuracy": float(got is not None and got == it["answer"]), "answered_rate": float(got is not None)}})
        return recs
