"""The contract every steering method meets (paper §1–2 compares them all through it).

`with steerer.apply(model, k):` steers the loaded model in place at strength k and undoes it exactly on exit;
k = 0 changes nothing. `conversation()` lets prompt-level baselines (system prompt) edit the chat instead.
`from_artifacts` builds a steerer from what its method's builder made (`conf/method/<name>.yaml`: `artifact`).
"""

from __future__ import annotations

from contextlib import contextmanager

from wsteer.errors import WsteerError
from wsteer.steering.k import check_k

GIVEN = "vector"  # the name under which a `vector=FILE` reaches `from_artifacts`, in place of the built artifacts


class Steerer:
    name = "base"

    def __init__(self, manifest: dict | None = None, name: str | None = None):
        self.manifest = manifest or {}
        if name:
            self.name = name

    @classmethod
    def from_artifacts(cls, artifacts: dict, ctx, **settings) -> Steerer:
        """The steerer for `artifacts` (name → artifact, from its method's builder, or `{GIVEN: the file's}`),
        with the method's settings from its YAML. `ctx` (wsteer.context.Context) gives the behavior and model.

        By default the one artifact is the constructor's first argument; a method whose builder makes several,
        or none, says which it uses by overriding this.
        """
        if len(artifacts) != 1:
            raise WsteerError(f"{cls.__name__} steers with one artifact, got {sorted(artifacts) or 'none'}; "
                              "override from_artifacts to choose")
        return cls(next(iter(artifacts.values())), **settings)

    def check_compatible(self, model, fingerprint: str, allow_transfer: bool = False) -> None:
        """Refuse an artifact built on other base weights, unless the user deliberately transfers it."""
        made_for = self.manifest.get("base_fingerprint")
        if made_for is not None and made_for != fingerprint and not allow_transfer:
            raise WsteerError(
                f"this vector was built for base model {self.manifest.get('base_model')!r} "
                f"(fingerprint {made_for}), but the loaded model has fingerprint {fingerprint}; load the matching "
                "model=..., or pass allow_transfer=true to apply it anyway"
            )

    @contextmanager
    def apply(self, model, k: float):
        k = check_k(k)
        if k == 0:
            yield model
            return
        with self._steer(model, k):
            yield model

    def _steer(self, model, k: float):
        raise NotImplementedError

    def conversation(self, messages: list[dict[str, str]], k: float) -> list[dict[str, str]]:
        return messages

    def describe(self) -> str:
        return self.name
