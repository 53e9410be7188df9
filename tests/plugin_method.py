"""A steering method from outside the package (tests/test_new_method.py): its artifact builder and its Steerer.

`embedding_shift` adds k·v to the token embeddings at every position, where v is the mean input embedding of D⁺'s
system prompts and answers minus that of D⁻'s. Its YAML is tests/plugin_conf/method/embedding_shift.yaml.
"""

from __future__ import annotations

from contextlib import contextmanager

from wsteer.behaviors import SIDES
from wsteer.steering.base import Steerer
from wsteer.training.builder import ArtifactBuilder
from wsteer.vectors import DenseVector


class EmbeddingShiftBuilder(ArtifactBuilder):
    kind = "embedding_shift"
    run_names = {"shift": "vector"}

    def __init__(self, max_tokens: int = 64):
        self.max_tokens = max_tokens

    def settings(self, cfg):
        return {"max_tokens": self.max_tokens}

    def build(self, ctx, pairs, data_manifest, run=None, resume_ckpt=None):
        table = ctx.model.get_input_embeddings().weight.detach().float().cpu()

        def mean(side):
            ids = [i for row in pairs[side] for text in (row["system_prompt"], row["response"])
                   for i in ctx.tokenizer(text, add_special_tokens=False).input_ids[: self.max_tokens]]
            return table[ids].mean(0)

        shift = mean(SIDES[0]) - mean(SIDES[1])
        return {"shift": DenseVector({"shift": shift}, self.manifest(ctx, data_manifest))}


class EmbeddingShiftSteerer(Steerer):
    name = "embedding_shift"

    def __init__(self, vector: DenseVector, name: str = "embedding_shift"):
        super().__init__(vector.manifest, name)
        self.vector = vector

    @contextmanager
    def _steer(self, model, k: float):
        shift = k * self.vector.tensors["shift"]
        hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: out + shift.to(out))
        try:
            yield model
        finally:
            hook.remove()

    def describe(self) -> str:
        return f"{self.name}: token embeddings + k·v, ‖v‖ = {self.vector.norm():.4g}"
