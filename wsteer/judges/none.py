"""The no-op judge: every answer is kept (``judge=none``)."""

from __future__ import annotations

from wsteer.judges.base import Judge, JudgeItem, Verdict, resolve_thresholds


class NoneJudge(Judge):
    """Scores nothing: every verdict is ``Verdict(None, None)``, which `filter_pairs` reads as "keep".

    Args:
        name: Config name (recorded in data keys).
        thresholds: Accepted so every judge config has the same shape; unused.
    """

    version = "none"
    scores = False

    def __init__(self, name: str = "none", thresholds: dict | None = None):
        self.name = name
        self.thresholds = resolve_thresholds(thresholds)

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        return [Verdict(trait=None, coherence=None) for _ in items]
