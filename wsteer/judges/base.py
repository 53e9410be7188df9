"""The judge interface and an append-only on-disk verdict cache shared by the concrete judges."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

from wsteer.errors import WsteerError

DEFAULT_THRESHOLDS = {"trait": 50.0, "coherence": 50.0}


@dataclass(frozen=True)
class JudgeItem:
    """One answer to score.

    Attributes:
        behavior: Behavior name (e.g. ``"sycophancy"``); rule-based judges dispatch on it.
        trait_description: Plain-language description of the trait the judge looks for.
        question: The question the model answered (without the eliciting system prompt).
        answer: The model's answer.
    """

    behavior: str
    trait_description: str
    question: str
    answer: str


@dataclass
class Verdict:
    """Scores on a 0–100 scale; ``None`` means the judge could not produce a score."""

    trait: float | None
    coherence: float | None


class Judge(ABC):
    """Scores answers for how strongly they show a trait and how coherent they are.

    Subclasses set ``name`` (the config name, recorded in data keys), ``version`` (the prompt or rule-set
    version, part of every cache key) and ``model`` (the scoring model id, ``None`` when there is none).
    """

    name: str = "judge"
    version: str = "0"
    model: str | None = None
    thresholds: dict[str, float] = DEFAULT_THRESHOLDS
    scores: bool = True  # False only for a judge that scores nothing on purpose (`NoneJudge`: keep everything)

    @abstractmethod
    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """Return one verdict per item, in the order of ``items``."""

    def check_behavior(self, behavior: str) -> None:  # noqa: B027 - optional hook, most judges accept all
        """Raise `WsteerError` if this judge cannot score ``behavior``; call it before spending time sampling."""

    def describe(self) -> dict:
        """What a manifest records about this judge (never secrets)."""
        return {"name": self.name, "model": self.model, "version": self.version}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, version={self.version!r})"


def resolve_thresholds(thresholds: dict | None) -> dict[str, float]:
    """Config thresholds (``{trait: 50, coherence: 50}``) with defaults for missing keys."""
    out = dict(DEFAULT_THRESHOLDS)
    for key, value in dict(thresholds or {}).items():
        if key not in out:
            raise WsteerError(f"unknown judge threshold judge.thresholds.{key}; expected one of {sorted(out)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise WsteerError(f"judge.thresholds.{key} must be a number from 0 to 100, got {value!r}")
        out[key] = float(value)
    return out


class VerdictCache:
    """Verdicts on disk, so a rerun or a resumed run never pays a judge twice for the same answer.

    One append-only JSONL file per (judge model, prompt version) under ``cache_dir``; each line is
    ``{"key": sha256, "trait": ..., "coherence": ...}``. Every write is flushed at once, so a killed run keeps
    everything it had scored; at worst its last line is cut off, and such a line is ignored on load (and
    terminated before the next append so it cannot corrupt the next record). Safe to share between threads.

    Args:
        cache_dir: Folder holding the JSONL files (created on first write).
        model: Judge model id (part of the key and the file name).
        version: Prompt or rule version (part of the key and the file name).
    """

    def __init__(self, cache_dir: str | os.PathLike, model: str, version: str):
        self.model = model
        self.version = str(version)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}-v{self.version}")
        tag = hashlib.sha256(f"{model}\0{self.version}".encode()).hexdigest()[:8]
        self.path = Path(cache_dir).expanduser() / f"{safe[:80]}-{tag}.jsonl"
        self._lock = threading.Lock()
        self._entries: dict[str, Verdict] = {}
        self._needs_newline = False
        self._load()

    def key(self, item: JudgeItem) -> str:
        payload = {"model": self.model, "version": self.version, **asdict(item)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self._entries[rec["key"]] = Verdict(trait=rec["trait"], coherence=rec["coherence"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut off by a killed run (or otherwise damaged): rescore that item

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, item: JudgeItem) -> Verdict | None:
        """The stored verdict for ``item``, or ``None`` on a miss."""
        hit = self._entries.get(self.key(item))
        return None if hit is None else Verdict(hit.trait, hit.coherence)

    def put(self, item: JudgeItem, verdict: Verdict) -> None:
        """Store ``verdict`` in memory and append it to the file, flushed before returning."""
        key = self.key(item)
        line = json.dumps({"key": key, "trait": verdict.trait, "coherence": verdict.coherence}) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                if self._needs_newline:  # end a partial last line left by a killed run
                    f.write("\n")
                    self._needs_newline = False
                f.write(line)
                f.flush()
            self._entries[key] = Verdict(verdict.trait, verdict.coherence)
