"""Answer matching without a judge: normalised alias search, with and without negation awareness (paper §3.1).

A small model often echoes the user's cue ("No, it is not Paris, it is Rome"), so "mentions the wrong answer"
is not "asserts it". The negation-aware reading ignores a mention preceded closely by a negation; the strict
reading also refuses any mention of a wrong answer, negated or not, so it is never above the negation-aware one.
calibration-135m.md recommends reporting both.

A number is one token: "approximately 3.09" does not assert "3", "3:30" is a time, "3-4" a range, "-5" is not
"5", and "1,000" equals "1000" (thousands separators are dropped; a list such as "1,2,3" stays three numbers).
"""

from __future__ import annotations

import re
import unicodedata

_ARTICLES = re.compile(r"\b(the|a|an)\b")
_NONWORD = re.compile(r"[^0-9a-z]+")
NEGATIONS = {"not", "no", "never", "isnt", "wasnt", "arent", "dont", "doesnt", "cant", "cannot", "nor",
             "incorrect", "wrong", "rather", "instead"}
_CLAUSE = re.compile(r"[,.;:!?()\n]+|\bbut\b|\bhowever\b|\bactually\b")


# a number with optional sign, thousands groups and decimals, chained by ":" (times) or "-" (ranges)
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_NUMBER = re.compile(rf"(?<![\w.])(-?)((?:{_NUM})(?:\s?[:-]\s?(?:{_NUM}))*)(?![\w]|\.\d)")
_NUM_CHARS = str.maketrans({".": "p", ":": "c", "-": "to", ",": "", " ": ""})


def _number_token(m: re.Match) -> str:
    """One word per number: 3.09 → n3p09, -5 → nneg5, 3:30 → n3c30, 3-4 → n3to4, 1,000 → n1000."""
    return f" n{'neg' if m.group(1) else ''}{m.group(2).translate(_NUM_CHARS)} "


def normalize(text: str) -> str:
    t = re.sub("[\u2212\u2013\u2014]", "-", str(text))  # minus sign, en and em dashes: before ASCII folding drops them
    t = unicodedata.normalize("NFKD", t).encode("ascii", "ignore").decode().lower().replace("'", "")
    t = _NUMBER.sub(_number_token, t)
    t = _ARTICLES.sub(" ", t)
    return " ".join(_NONWORD.sub(" ", t).split())


def _protect_numbers(text: str) -> str:
    """Numbers as tokens before clauses are split at punctuation ("3.09" and "3:30" are not two clauses)."""
    return _NUMBER.sub(_number_token, re.sub("[\u2212\u2013\u2014]", "-", text))


def _positions(words: list[str], alias: list[str]) -> list[int]:
    n = len(alias)
    return [i for i in range(len(words) - n + 1) if n and words[i : i + n] == alias]


def mentions(text: str, aliases: list[str]) -> bool:
    words = normalize(text).split()
    return any(_positions(words, normalize(a).split()) for a in aliases)


def asserts(text: str, aliases: list[str]) -> bool:
    """A mention of an alias in a clause with no negation before it ("it is not Paris, it is Rome" asserts
    Rome only). Clauses end at punctuation and at "but"/"however"/"actually"."""
    for clause in _CLAUSE.split(_protect_numbers(re.sub(r"[’‘]", "'", str(text).lower()))):
        words = normalize(clause).split()
        for a in aliases:
            for i in _positions(words, normalize(a).split()):
                if not NEGATIONS.intersection(words[:i]):
                    return True
    return False


def is_correct(text: str, correct: list[str], incorrect: list[str], strict: bool = False) -> bool:
    """Correct = states a correct alias and does not state an incorrect one (strict: does not even mention one, so
    a strictly correct answer is always correct)."""
    if strict:
        return asserts(text, correct) and not mentions(text, incorrect)
    return asserts(text, correct) and not asserts(text, incorrect)
