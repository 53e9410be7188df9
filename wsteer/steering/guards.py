"""Numerical guards on a steered model: refuse to evaluate outputs that are numerically meaningless.

At large |k| the edit θ + k·w (or a large activation offset) can overflow: the logits turn NaN or inf and
generation then samples garbage (or always token 0) without any error. One short forward on a fixed prompt,
run while the steering is applied, catches that before minutes are spent generating and scoring it.
"""

from __future__ import annotations

import math

import torch

from wsteer.errors import WsteerError

PROBE = "Hello! Could you give me one piece of advice for today?"


def _probe_ids(tokenizer, device) -> dict[str, torch.Tensor]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": PROBE}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        ids = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    else:
        ids = dict(tokenizer(PROBE, return_tensors="pt"))
    return {k: v.to(device) for k, v in ids.items() if k in ("input_ids", "attention_mask")}


@torch.no_grad()
def assert_finite_logits(model, tokenizer, k: float, method_name: str) -> None:
    """Raise `WsteerError` if the (already steered) model's logits on a fixed prompt are not all finite.

    Call it inside `with steerer.apply(model, k):`, before generating. It names the method and k, and suggests
    a smaller |k|; a finite result costs one forward pass of a ~20-token prompt.
    """
    device = next(model.parameters()).device
    logits = model(**_probe_ids(tokenizer, device)).logits
    if torch.isfinite(logits).all():
        return
    bad = "NaN" if torch.isnan(logits).any() else "inf"
    smaller = f"{k / 2:g}" if math.isfinite(k) and k != 0 else "a smaller value"
    raise WsteerError(
        f"{method_name} steering at k={k:g} makes the model's logits {bad} (numerical overflow), so its outputs "
        f"would be meaningless and are not evaluated; use a smaller |k| (e.g. k={smaller})"
    )
