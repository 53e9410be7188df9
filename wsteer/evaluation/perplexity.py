"""Capability retention without a judge: perplexity on held-out prose (paper §3: capability next to behavior).

Each passage is scored as an assistant reply to a neutral request, so the chat model is measured in the format
it is used in; the loss covers the reply tokens only. The metric aggregated over items is the mean per-token
negative log-likelihood (`nll`); `perplexity` is exp of each passage's mean NLL, averaged over passages.
"""

from __future__ import annotations

import math

import torch

from wsteer.evaluation.base import Evaluator
from wsteer.generation import render_prompt

REQUEST = "Please write a short, informative paragraph."


class Perplexity(Evaluator):
    name = "perplexity"
    version = 1
    metric_names = ("nll", "perplexity")

    def __init__(self, max_tokens: int = 256, **kw):
        super().__init__(**kw)
        self.max_tokens = int(max_tokens)

    def settings(self) -> dict:
        return {**super().settings(), "max_tokens": self.max_tokens, "decoding": "teacher forcing"}

    def load_items(self) -> list[dict]:
        from wsteer.evaluation.datasets import heldout_text

        return [{"id": f"text-{i}", "text": t} for i, t in enumerate(heldout_text())]

    @torch.no_grad()
    def evaluate(self, items: list[dict]) -> list[dict]:
        tok = self.tokenizer
        recs = []
        device = next(self.lm.parameters()).device
        for it in items:  # one passage at a time: no padding to get wrong, and passages are short
            conv = [{"role": "user", "content": REQUEST}]
            if self.steerer is not None:
                conv = self.steerer.conversation(conv, self.k)
            prompt = render_prompt(tok, conv)
            reply = tok(it["text"], add_special_tokens=False).input_ids[: self.max_tokens]
            ids = torch.tensor([prompt + reply], device=device)
            logits = self.lm(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            nll = float(torch.nn.functional.cross_entropy(logits, ids[0, len(prompt):]))
            recs.append({"outputs": {}, "scores": {"nll": nll, "perplexity": math.exp(min(nll, 50.0))}})
        return recs
