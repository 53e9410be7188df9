"""Capability retention: MMLU multiple choice (paper §3.3 uses TinyMMLU, 100 questions).

Scored judge-free from the next-token distribution after the assistant turn opens: the predicted option is the
letter A–D with the highest logit (with or without a leading space). This costs one forward pass per question,
so it can run at every k of a sweep; the paper's CoT variant generates instead, which a 135M model cannot do
usefully. The default data is a fixed-seed 100-item sample of the MMLU test split (tinyMMLU is not available
offline); `source=tinymmlu_hub` loads tinyMMLU by hub id.
"""

from __future__ import annotations

import torch

from wsteer.errors import WsteerError
from wsteer.evaluation.base import Evaluator
from wsteer.generation import left_pad, render_prompt

LETTERS = "ABCD"


def format_question(item: dict) -> str:
    opts = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
    return f"{item['question'].strip()}\n{opts}\nAnswer with the letter of the correct option only."


@torch.no_grad()
def last_token_logits(model, tokenizer, prompts: list[list[int]]) -> torch.Tensor:
    """Logits at the last prompt position for a left-padded batch."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(prompts, list(range(len(prompts))), pad, max(len(p) for p in prompts))
    device = next(model.parameters()).device
    # logits_to_keep=1: the LM head runs on the last position only. All positions would cost a vocab-sized
    # product per prompt token and a (rows × length × vocab) tensor: 2 GiB for 16 long prompts on the 135M model.
    ids, mask = ids.to(device), mask.to(device)
    try:
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    except TypeError:  # a custom (remote-code) model whose forward does not take logits_to_keep
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits[:, -1].float()


class MMLU(Evaluator):
    name = "mmlu"
    version = 1
    metric_names = ("accuracy", "letter_mass")
    strata = ("subject",)
    dataset_fields = {"question": True, "choices": True, "answer": True, "subject": False}

    def __init__(self, n: int = 100, source: str = "local", **kw):
        super().__init__(source=source, **kw)
        # checked here, when the evaluators are built before the model loads, not when the items are drawn
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise WsteerError(f"evaluator mmlu: n={n!r} must be a positive integer, the number of questions drawn "
                              "(e.g. evaluator.mmlu.n=100), or null for all 14,042")
        self.n = n

    def settings(self) -> dict:
        return {**super().settings(), "n": self.n, "source": self.source, "decoding": "next-token logits"}

    def load_items(self) -> list[dict]:
        """`n` items of the shipped set, a seeded uniform draw (the whole set for n=null or n ≥ its size)."""
        from wsteer.evaluation.datasets import take

        return take(super().load_items(), self.n, self.seed)

    def from_dataset(self, items: list[dict]) -> list[dict]:
        """`choices`: a list column or "A;B;C;D"; `answer`: 0-3 or a letter A-D."""
        from wsteer.evaluation.sources import as_list

        out = []
        for i, it in enumerate(items):
            choices, answer = as_list(it["choices"]), str(it["answer"]).strip().upper()
            index = LETTERS.index(answer) if answer in LETTERS else int(answer) if answer.isdigit() else -1
            if len(choices) != len(LETTERS) or not 0 <= index < len(LETTERS):
                raise WsteerError(f"evaluator mmlu: dataset row {i + 1} needs {len(LETTERS)} choices and an answer "
                                  f"0-{len(LETTERS) - 1} or {LETTERS[0]}-{LETTERS[-1]}; got {len(choices)} choices, "
                                  f"answer {it['answer']!r}")
            out.append({**it, "choices": choices, "answer": index, "subject": str(it.get("subject") or "")})
        return out

    def _letter_ids(self) -> list[list[int]]:
        out = []
        for letter in LETTERS:
            ids = {self.tokenizer(v, add_special_tokens=False).input_ids[0] for v in (letter, " " + letter)
                   if len(self.tokenizer(v, add_special_tokens=False).input_ids) == 1}
            out.append(sorted(ids))
        return out

    def evaluate(self, items: list[dict]) -> list[dict]:
        convs = [[{"role": "user", "content": format_question(it)}] for it in items]
        if self.steerer is not None:
            convs = [self.steerer.conversation(c, self.k) for c in convs]
        prompts = [render_prompt(self.tokenizer, c) for c in convs]
        logits = last_token_logits(self.lm, self.tokenizer, prompts)
        probs = logits.softmax(-1)
        letter_ids = self._letter_ids()
        recs = []
        for r, it in enumerate(items):
            per = torch.stack([logits[r, ids].max() for ids in letter_ids])
            mass = float(sum(probs[r, ids].sum() for ids in letter_ids))
            pred = int(per.argmax())
            recs.append({"outputs": {"prediction": LETTERS[pred]}, "answer": LETTERS[it["answer"]],
                         "scores": {"accuracy": float(pred == it["answer"]), "letter_mass": mass}})
        return recs
