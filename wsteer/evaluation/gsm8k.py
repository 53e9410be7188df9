"""Math capability after the GSM8K task fine-tune (paper §3.4): exact match on the final number.

The reference answer is the number after "####" in the GSM8K solution; the model's answer is its "#### N" line
if present, else "the answer is N", else its last number (`datasets.gsm8k_answer`).
"""

from __future__ import annotations

from wsteer.evaluation.base import Evaluator

INSTRUCTION = "Solve the problem step by step, then give the final answer on its own line as \"#### <number>\"."


class GSM8K(Evaluator):
    name = "gsm8k"
    version = 1
    metric_names = ("accuracy", "answered_rate")
    dataset_fields = {"question": True, "answer": True}

    def load_items(self) -> list[dict]:
        from wsteer.evaluation.datasets import gsm8k

        return gsm8k("test", seed=self.seed)

    def from_dataset(self, items: list[dict]) -> list[dict]:
        """`answer` may be the final number or a worked solution ending in "#### N", as in GSM8K itself."""
        from wsteer.evaluation.datasets import gsm8k_answer

        return [{**it, "answer": gsm8k_answer(str(it["answer"]))} for it in items]

    def evaluate(self, items: list[dict]) -> list[dict]:
        from wsteer.evaluation.datasets import gsm8k_answer

        texts = self.answer([[{"role": "user", "content": f"{it['question'].strip()}\n{INSTRUCTION}"}] for it in items])
        recs = []
        for it, t in zip(items, texts, strict=True):
            got = gsm8k_answer(t)
            recs.append({"outputs": {"answer": t}, "parsed": got, "scores": {
                "accuracy": float(got is not None and got == it["answer"]), "answered_rate": float(got is not None)}})
        return recs
