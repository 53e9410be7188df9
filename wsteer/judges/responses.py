"""Reading a score out of a judge endpoint's reply: from the first token's top logprobs (the persona-vectors rule,
a probability-weighted mean of the integer tokens 0–100), else from the reply's text; a reply that is not a chat
completion is refused, so nothing is cached from a misconfigured endpoint."""

from __future__ import annotations

import math
import re

from wsteer.errors import WsteerError

MIN_NUMERIC_MASS = 0.25  # below this the judge was not really answering with a number (persona-vectors rule)
_INT = re.compile(r"(?<![\d.])(\d{1,3})(?![\d.])")


def score_from_top_logprobs(top: dict[str, float], min_mass: float = MIN_NUMERIC_MASS) -> float | None:
    """Probability-weighted mean of the integer tokens 0–100 among ``{token: logprob}``.

    Returns ``None`` when those tokens hold less than 25% of the probability: then the judge was mostly not
    answering with a number, and its score would be noise.
    """
    mass = total = 0.0
    for token, logprob in top.items():
        text = token.strip()
        if not (text.isascii() and text.isdigit()) or int(text) > 100:
            continue
        p = math.exp(logprob)
        mass += p
        total += p * int(text)
    return total / mass if mass > 0 and mass >= min_mass else None


def score_from_text(text: str | None) -> float | None:
    """The first integer 0–100 in a short reply, or ``None``."""
    for match in _INT.finditer(text or ""):
        value = int(match.group(1))
        if value <= 100:
            return float(value)
    return None


def top_logprobs(response) -> dict[str, float] | None:
    """``{token: logprob}`` for the first generated token, or ``None`` if the response carries no (well-formed)
    logprobs."""
    choices = getattr(response, "choices", None)
    if not choices:
        return None
    logprobs = getattr(choices[0], "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return None
    first = content[0]
    top: dict[str, float] = {}
    try:
        for entry in getattr(first, "top_logprobs", None) or [first]:  # no alternatives listed: the sampled token
            # The same text can come back twice (different token ids); its probabilities add up.
            top[entry.token] = math.log(math.exp(top.get(entry.token, -math.inf)) + math.exp(entry.logprob))
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None  # logprobs in a shape we cannot read: parse the text reply instead
    return top or None


def reply_text(response, base_url: str) -> str:
    """The text of a chat completion's first choice; a reply without ``choices[0].message`` is refused.

    Such a reply (no ``choices``, an empty list, or the legacy completions schema with ``text``) is not a
    chat completion at all: the endpoint is misconfigured, and no verdict is made from it (so none is cached).
    """
    choices = getattr(response, "choices", None)
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    content = getattr(message, "content", "") if message is not None else None
    if message is None or not (content is None or isinstance(content, str)):
        shape = ("no choices" if not choices else "choices[0] has no message")
        raise WsteerError(
            f"judge endpoint {base_url} answered with something that is not a chat completion ({shape}); point "
            "judge.base_url at an OpenAI-compatible chat-completions API root (…/v1); nothing was cached from it")
    return content or ""
