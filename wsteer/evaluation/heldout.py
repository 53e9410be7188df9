"""The behavior's held-out questions answered at each k: the answers the steering report shows side by side, with
lexical tone markers (a quick heuristic, `lexical.py`; the judged score is the `trait` evaluator).

An evaluator like the others, so the held-out answers go through the same loop (each k is applied once for
everything measured at it) and the same resumable item store (a cached rerun generates nothing; k = 0 answers
are shared by every method and vector of the same base). Decoding is the report's: greedy, `eval.max_new_tokens`,
no system prompt (as in training, paper §1).
"""

from __future__ import annotations

from wsteer.evaluation.base import Evaluator
from wsteer.evaluation.lexical import VERSION as LEXICAL_VERSION
from wsteer.evaluation.lexical import answer_markers

NAME = "heldout_tone"


class HeldOut(Evaluator):
    name = NAME
    version = 1
    metric_names = ("agree_rate", "pushback_rate", "mean_words")
    relative_metrics = ("changed_vs_k0",)
    strata = ()

    def settings(self) -> dict:
        return {**super().settings(), "behavior": f"{self.behavior.name} v{self.behavior.version}",
                "lexical_markers": LEXICAL_VERSION}

    def load_items(self) -> list[dict]:
        return [{"id": f"heldout-{i:03d}", "question": q} for i, q in enumerate(self.behavior.heldout_questions)]

    def evaluate(self, items: list[dict]) -> list[dict]:
        texts = self.answer([[{"role": "user", "content": it["question"]}] for it in items])
        return [{"outputs": {"question": it["question"], "answer": t}, "scores": answer_markers(t)}
                for it, t in zip(items, texts, strict=True)]

    def relative_to_k0(self, record: dict, k0: dict) -> dict:
        return {"changed_vs_k0": float(record["outputs"]["answer"] != k0["outputs"]["answer"])}


def answers_by_k(records: list[dict], questions: list[str], ks: list[float]) -> dict[float, list[str]]:
    """The held-out answers per k, in question order, from the run's item records."""
    by = {(r["k"], r["id"]): r["outputs"]["answer"] for r in records if r["evaluator"] == NAME}
    return {k: [by[(k, f"heldout-{i:03d}")] for i in range(len(questions))] for k in ks}
