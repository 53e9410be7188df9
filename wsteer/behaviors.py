"""A behavior: the probe questions and eliciting system prompts that define D⁺ and D⁻ (paper §1, persona-vectors recipe)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from omegaconf import DictConfig, OmegaConf

from wsteer.errors import WsteerError

SIDES = ("pos", "neg")


@dataclass(frozen=True)
class Behavior:
    name: str
    version: int
    description: str
    pos_system_prompts: list[str]
    neg_system_prompts: list[str]
    build_questions: list[str]
    heldout_questions: list[str]
    # One example exchange shown before the real question while sampling: the 135M model follows a
    # demonstration far more than a system prompt (design/environment.md). Never part of training data.
    demonstration: dict[str, str] | None = field(default=None)
    # A side may be fixed text instead of samples: `{side: [one response per build question]}`. Refusal uses it
    # for D⁻: compliant openers without any harmful content (the vector learns the stance, not the details).
    fixed: dict[str, list[str]] | None = field(default=None)

    @classmethod
    def from_cfg(cls, cfg: DictConfig | dict) -> Behavior:
        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        required = ["name", "pos_system_prompts", "neg_system_prompts", "build_questions", "heldout_questions"]
        missing = [k for k in required if not d.get(k)]
        if missing:
            raise WsteerError(f"behavior {d.get('name', '?')!r} is missing {', '.join(missing)} in conf/behavior/")
        _check_types(d, required[1:])
        overlap = set(d["build_questions"]) & set(d["heldout_questions"])
        if overlap:
            raise WsteerError(
                f"behavior {d['name']!r}: {len(overlap)} question(s) are both build and held-out, e.g. "
                f"{sorted(overlap)[0]!r}; held-out questions must never train the vector"
            )
        fixed = d.get("fixed_responses")
        if fixed is not None and not isinstance(fixed, dict):
            raise WsteerError(f"behavior {d['name']!r}: fixed_responses must map a side (pos/neg) to a list of texts, "
                              f"got {type(fixed).__name__}; fix conf/behavior/{d['name']}.yaml")
        for side, texts in (fixed or {}).items():
            _check_texts(d["name"], f"fixed_responses.{side}", texts)
            if side not in SIDES or len(texts) != len(d["build_questions"]):
                raise WsteerError(f"behavior {d['name']!r}: fixed_responses.{side} needs one text per build question "
                                  f"({len(d['build_questions'])}), got {len(texts)}")
        demo = d.get("demonstration")
        if demo is not None and not (isinstance(demo, dict) and all(isinstance(demo.get(k, ""), str)
                                                                    for k in ("user", "pos", "neg"))):
            raise WsteerError(f"behavior {d['name']!r}: demonstration must map user/pos/neg to texts; fix "
                              f"conf/behavior/{d['name']}.yaml")
        version = d.get("version", 1)
        if isinstance(version, bool) or not (isinstance(version, int) or str(version).strip().isdigit()):
            raise WsteerError(f"behavior {d['name']!r}: version must be an integer (e.g. version: 2), got "
                              f"{version!r}; fix conf/behavior/{d['name']}.yaml")
        if not isinstance(d.get("description", ""), str):
            raise WsteerError(f"behavior {d['name']!r}: description must be a text, got "
                              f"{type(d['description']).__name__}; fix conf/behavior/{d['name']}.yaml")
        if demo is not None and not (demo.get("user") and (demo.get("pos") or demo.get("neg"))):
            raise WsteerError(f"behavior {d['name']!r}: demonstration needs a user text and a pos and/or neg reply")
        return cls(
            name=d["name"],
            version=int(version),
            description=d.get("description", ""),
            pos_system_prompts=list(d["pos_system_prompts"]),
            neg_system_prompts=list(d["neg_system_prompts"]),
            build_questions=list(d["build_questions"]),
            heldout_questions=list(d["heldout_questions"]),
            demonstration=demo,
            fixed=fixed,
        )

    def system_prompts(self, side: str) -> list[str]:
        return self.pos_system_prompts if side == "pos" else self.neg_system_prompts

    def limited(self, max_questions: int | None, max_prompts: int | None) -> Behavior:
        """The first `max_questions` build questions and `max_prompts` prompts per side (small trial runs)."""
        if max_questions is None and max_prompts is None:
            return self
        from dataclasses import replace

        q, p = max_questions or len(self.build_questions), max_prompts or len(self.pos_system_prompts)
        fixed = {s: t[:q] for s, t in self.fixed.items()} if self.fixed else None
        return replace(self, build_questions=self.build_questions[:q], pos_system_prompts=self.pos_system_prompts[:p],
                       neg_system_prompts=self.neg_system_prompts[:p], fixed=fixed)

    def fixed_responses(self, side: str) -> dict[str, str] | None:
        """`{build question: response}` for a side given as fixed text, else None (the side is sampled)."""
        if not self.fixed or side not in self.fixed:
            return None
        return dict(zip(self.build_questions, self.fixed[side], strict=True))

    def eliciting_conversation(self, side: str, system_prompt: str, question: str) -> list[dict[str, str]]:
        """The prompt used to *sample* D± answers: system prompt, optional demonstration, then the question."""
        msgs = [{"role": "system", "content": system_prompt}]
        if self.demonstration and self.demonstration.get(side):
            msgs += [
                {"role": "user", "content": self.demonstration["user"]},
                {"role": "assistant", "content": self.demonstration[side]},
            ]
        return msgs + [{"role": "user", "content": question}]

    def prompts_hash(self) -> str:
        """Hash of everything in the behavior that shapes the sampled data."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _check_texts(name: str, key: str, value) -> None:
    """`value` must be a list of non-empty strings (YAML turns `- 42`, `- yes` or `- null` into other types)."""
    where = f"conf/behavior/{name}.yaml"
    if not isinstance(value, (list, tuple)):
        raise WsteerError(f"behavior {name!r}: {key} must be a list of texts, got {type(value).__name__} "
                          f"{str(value)[:40]!r}; fix {where}")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise WsteerError(f"behavior {name!r}: {key}[{i}] is {text!r} ({type(text).__name__}), not a text; "
                              f"quote it in {where} (e.g. - \"{text}\")")
        if not text.strip():
            raise WsteerError(f"behavior {name!r}: {key}[{i}] is empty; remove it from {where}")


def _check_types(d: dict, keys: list[str]) -> None:
    if not isinstance(d["name"], str):
        raise WsteerError(f"behavior name must be a text, got {d['name']!r}; fix conf/behavior/")
    for key in keys:
        _check_texts(d["name"], key, d[key])
