"""System-prompt baseline (paper §1, "Fine-tuning baselines"): no weights change; a trait-opposing (k < 0) or
trait-eliciting (k > 0) system prompt of the behavior is prepended at inference. |k| is ignored."""

from __future__ import annotations

from contextlib import contextmanager

from wsteer.steering.base import Steerer


class SystemPromptSteerer(Steerer):
    name = "system_prompt"

    def __init__(self, pos_prompts: list[str], neg_prompts: list[str], prompt_index: int = 0,
                 name: str = "system_prompt", manifest: dict | None = None):
        super().__init__(manifest or {}, name)
        self.prompts = {"pos": pos_prompts[prompt_index], "neg": neg_prompts[prompt_index]}

    @classmethod
    def from_artifacts(cls, artifacts, ctx, **settings):
        # no artifact (conf/method/system_prompt.yaml has `artifact: null`): the behavior's own prompts
        return cls(ctx.behavior.pos_system_prompts, ctx.behavior.neg_system_prompts, **settings)

    @contextmanager
    def _steer(self, model, k: float):
        yield model  # the model is untouched; see conversation()

    def conversation(self, messages, k):
        if k == 0 or (messages and messages[0]["role"] == "system"):
            return messages
        return [{"role": "system", "content": self.prompts["pos" if k > 0 else "neg"]}, *messages]

    def describe(self) -> str:
        return f"{self.name}: k<0 → “{self.prompts['neg']}”, k>0 → “{self.prompts['pos']}”"
