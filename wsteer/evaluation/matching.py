"""Answer matching without a judge: normalised alias search, with and without negation awareness (paper §3.1).

A small model often echoes the user's cue ("No, it is not Paris, it is Rome"), so "mentions the wrong answer"
is not "asserts it". The negation-aware reading ignores a mention preceded closely by a negation; the strict
reading counts any mention. calibration-135m.md recommends reporting both.
"""

from __future__ import annotations

import re
import unicodedata

_ARTICLES = re.compile(r"\b(the|a|an)\b")
_NONWORD = re.compile(r"[^0-9a-z]+")
NEGATIONS = {"not", "no", "never", "isnt", "wasnt", "arent", "dont", "doesnt", "cant", "cannot", "nor",
             "incorrect", "wrong", "rather", "instead"}
_CLAUSE = re.compile(r"[,.;:!?()\n]+|\bbut\b|\bhowever\b|\bactually\b")


def normalize(text: str) -> str:
    t = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower().replace("'", "")
    t = _ARTICLES.sub(" ", t)
    return " ".join(_NONWORD.sub(" ", t).split())


def _positions(words: list[str], alias: list[str]) -> list[int]:
    n = len(alias)
    return [i for i in range(len(words) - n + 1) if n and words[i : i + n] == alias]


def mentions(text: str, aliases: list[str]) -> bool:
    words = normalize(text).split()
    return any(_positions(words, normalize(a).split()) for a in aliases)


def asserts(text: str, aliases: list[str]) -> bool:
    """A mention of an alias in a clause with no negation before it ("it is not Paris, it is Rome" asserts
    Rome only). Clauses end at punctuation and at "but"/"however"/"actually"."""
    for clause in _CLAUSE.split(re.sub(r"[’‘]", "'", str(text).lower())):
        words = normalize(clause).split()
        for a in aliases:
            for i in _positions(words, normalize(a).split()):
                if not NEGATIONS.intersection(words[:i]):
                    return True
    return False


def is_correct(text: str, correct: list[str], incorrect: list[str], strict: bool = False) -> bool:
    """Correct = states a correct alias and does not state an incorrect one (strict: does not even mention it)."""
    if strict:
        return mentions(text, correct) and not mentions(text, incorrect)
    return asserts(text, correct) and not asserts(text, incorrect)
