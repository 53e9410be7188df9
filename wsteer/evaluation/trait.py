"""In-distribution trait score: the behavior's 20 held-out questions scored 0–100 for the trait and for
coherence by the judge (the persona-vectors judge prompts; paper Figs 15, 27).

Needs a scoring judge (`judge=openai`); with `judge=none` the answers are still generated and stored, and
the lexical tone markers (`agree_rate`, `pushback_rate`; a heuristic) are the only metrics.
"""

from __future__ import annotations

from wsteer.evaluation.base import Evaluator
from wsteer.evaluation.lexical import tone_metrics
from wsteer.judges.base import JudgeItem


class Trait(Evaluator):
    name = "trait"
    version = 1
    metric_names = ("trait", "coherence", "agree_rate", "pushback_rate")

    def settings(self) -> dict:
        return {**super().settings(), "behavior": f"{self.behavior.name} v{self.behavior.version}",
                "judge": self.judge.describe() if self.judged() else None}

    def load_items(self) -> list[dict]:
        return [{"id": f"{self.behavior.name}-{i}", "question": q}
                for i, q in enumerate(self.behavior.heldout_questions)]

    def evaluate(self, items: list[dict]) -> list[dict]:
        texts = self.answer([[{"role": "user", "content": it["question"]}] for it in items])
        verdicts = [None] * len(items)
        if self.judged():
            self.judge.check_behavior(self.behavior.name)
            verdicts = self.judge.judge([JudgeItem(self.behavior.name, self.behavior.description, it["question"], t)
                                         for it, t in zip(items, texts, strict=True)])
        recs = []
        for t, v in zip(texts, verdicts, strict=True):
            tone = tone_metrics([t])
            unusable = int(v is not None and (v.trait is None or v.coherence is None))
            recs.append({"outputs": {"answer": t}, "unusable_verdicts": unusable, "scores": {
                "trait": None if v is None else v.trait, "coherence": None if v is None else v.coherence,
                "agree_rate": tone["agree_rate"], "pushback_rate": tone["pushback_rate"]}})
        return recs
