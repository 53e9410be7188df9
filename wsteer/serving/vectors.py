"""The vector library as one served base model sees it: which behaviors it can steer, and with which vector.

A request's steering is resolved here, in the request's own thread and before it is queued, so every refusal
(unknown behavior, no vector built yet, a vector built for another base model) is a 400 that costs the model
nothing. The server never trains: a missing vector is answered with the `train.py` command that builds it.
The rules are those of `steer.py` (`composed_steerer`): the newest complete vector in the cache whose base
fingerprint is the served model's; one behavior is applied as `WeightSteerer(w).apply(model, k)`, several as one
exact composed vector at k = 1, so a served answer is the answer `steer.py` gives at the same k. `"method":
"activation"` takes the behavior's activation vector (`train.py source=activation`) and applies it as
`steer.py method=activation` does (layer, positions and composition: `wsteer.serving.activation`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from pathlib import Path

from wsteer.errors import WsteerError
from wsteer.library import compose, list_vectors
from wsteer.serving.activation import ActivationComposition, behavior_layer
from wsteer.serving.schema import APIError, Steering
from wsteer.steering.activation import ActivationSteerer
from wsteer.steering.weight import WeightSteerer
from wsteer.vectors import DenseVector, WeightVector

# the artifact file (stem) each method steers with; activation's lives in its own cache folder (source=activation)
ARTIFACT = {"weight": "contrastive", "task_vector_pos": "pos", "task_vector_neg": "neg", "activation": "activation"}
METHOD_OF = {v: k for k, v in ARTIFACT.items()}


def _manifest(path: str) -> dict:
    """The manifest in a vector file's safetensors header (the tensors are not read)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return json.loads((f.metadata() or {}).get("manifest", "{}"))
    except Exception:  # noqa: BLE001 - listing facts only; list_vectors already reported the file as unreadable
        return {}


class ServedLibrary:
    """Resolves `Steering` to a steerer for the served model, with the library listing and loaded vectors cached.

    Args:
        cache_dir: the wsteer cache (`paths.cache_dir`) whose `vectors/` is the library.
        model: the loaded model (only read: parameter names and shapes, for the compatibility check).
        fingerprint: the served model's fingerprint.
        model_name: the `model=` config name, for the `train.py` command in refusals.
        known_behaviors: behaviors that have a `conf/behavior/*.yaml` (buildable, even if not built yet).
        refresh_s: how old the cached listing may get before it is read again (a miss always rereads it, so a
            vector trained while the server runs is found by the next request).
        max_steerers: compositions kept built (each is a concatenation of factors, as large as its parts).
        activation_layer: the layer `"method": "activation"` steers for every behavior; None: each behavior's own
            (`behavior_model_dir`), else the middle layer, as steer.py picks it.
        activation_positions: "last" (steer.py's default) or "all" (what llama.cpp control vectors do).
        behavior_model_dir: `conf/behavior_model/`, where steer.py's per-(behavior, model) activation layers are.
    """

    def __init__(self, cache_dir, model, fingerprint: str, model_name: str, known_behaviors=(),
                 refresh_s: float = 30.0, max_steerers: int = 16, activation_layer: int | None = None,
                 activation_positions: str = "last", behavior_model_dir=None):
        self.cache_dir, self.model, self.fingerprint, self.model_name = cache_dir, model, fingerprint, model_name
        self.known_behaviors = set(known_behaviors)
        self.refresh_s, self.max_steerers = refresh_s, max_steerers
        self.activation_layer, self.activation_positions = activation_layer, activation_positions
        self.behavior_model_dir = behavior_model_dir
        self._lock = threading.Lock()  # resolution runs in many request threads; loading is serialised
        self._rows: list[dict] = []
        self._read_at = -float("inf")
        self._vectors: dict[tuple[str, str], WeightVector | ActivationSteerer] = {}
        self._steerers: OrderedDict = OrderedDict()

    def rows(self, refresh: bool = False) -> list[dict]:
        if refresh or time.monotonic() - self._read_at > self.refresh_s:
            self._rows = list_vectors(self.cache_dir)
            self._read_at = time.monotonic()
        return self._rows

    def train_command(self, behavior: str, method: str = "weight") -> str:
        source = " source=activation" if method == "activation" else ""
        return f"python train.py behavior={behavior} model={self.model_name}{source}"

    def layer_of(self, behavior: str) -> int | None:
        """The layer `"method": "activation"` steers for a behavior (None: the vector's middle layer)."""
        if self.activation_layer is not None:
            return self.activation_layer
        try:
            return behavior_layer(behavior, self.model_name, self.behavior_model_dir)
        except WsteerError as e:
            raise APIError(str(e), param="steer", code="vector_unusable") from e

    def _find(self, behavior: str, artifact: str) -> dict:
        for refresh in (False, True):
            mine = [r for r in self.rows(refresh) if r["behavior"] == behavior and r["artifact"] == artifact
                    and not r["error"] and r["fingerprint"] == self.fingerprint]
            if mine:
                return max(mine, key=lambda r: r["created"] or "")
        rows = [r for r in self._rows if r["behavior"] == behavior]
        command = self.train_command(behavior, METHOD_OF[artifact])
        build = f"build it with `{command}`"
        foreign = [r for r in rows if r["artifact"] == artifact and not r["error"]]
        if foreign:
            made_for = sorted({f"{r['model']} (fingerprint {str(r['fingerprint'])[:12]})" for r in foreign})
            raise APIError(f"the library's {behavior!r} vector was built for another base model ({', '.join(made_for)}), "
                           f"not the served model {self.model_name} (fingerprint {self.fingerprint[:12]}); the server "
                           f"does not transfer vectors between models: {build}", param="steer",
                           code="vector_for_other_model")
        broken = [r for r in rows if r["artifact"] == artifact and r["error"] and r["fingerprint"] == self.fingerprint]
        if broken:
            raise APIError(f"the library's {behavior!r} vector {broken[0]['path']} is unreadable ({broken[0]['error']}); "
                           f"rebuild it with `{command}`", param="steer", code="vector_unreadable")
        if rows or behavior in self.known_behaviors:
            what = {"contrastive": "vector", "activation": "activation vector"}.get(
                artifact, f"{artifact} task vector ({METHOD_OF.get(artifact)})")
            raise APIError(f"no {behavior!r} {what} in the library for the served model {self.model_name} "
                           f"(fingerprint {self.fingerprint[:12]}); the server never trains: {build}",
                           param="steer", code="vector_not_built")
        known = sorted(self.known_behaviors | {r["behavior"] for r in self._rows})
        raise APIError(f"unknown behavior {behavior!r}; known behaviors: {', '.join(known) or 'none'} "
                       f"(a new one is a conf/behavior/<name>.yaml, then `{self.train_command(behavior)}`)",
                       param="steer", code="unknown_behavior")

    def _vector(self, row: dict, behavior: str, method: str) -> WeightVector | ActivationSteerer:
        """The vector as applied (a weight vector), or for activation the behavior's steerer (its k comes at apply
        time), loaded once and checked against the served model."""
        key = (row["path"], method)
        if key not in self._vectors:
            try:
                if method == "activation":
                    steerer = ActivationSteerer(DenseVector.load(row["path"]), layer=self.layer_of(behavior),
                                                positions=self.activation_positions)
                    steerer.check_compatible(self.model, self.fingerprint)
                    self._vectors[key] = steerer
                    return steerer
                vector = WeightVector.load(row["path"])
                if method == "task_vector_neg" and vector.manifest.get("variant") == "tau_neg":
                    vector = vector.scaled(-1.0, variant="minus_tau_neg")  # θ − k·τ⁻, as steer.py applies it
                WeightSteerer(vector).check_compatible(self.model, self.fingerprint)
            except WsteerError as e:
                raise APIError(f"{behavior!r}: {e}", param="steer", code="vector_unusable") from e
            self._vectors[key] = vector
        return self._vectors[key]

    def resolve(self, steering: Steering) -> tuple[WeightSteerer | ActivationSteerer | ActivationComposition | None,
                                                   float]:
        """(steerer, the k to apply it at); (None, 0) for the base model.

        Raises:
            APIError: 400 naming the behavior and the fix (unknown, not built, built for another base model).
        """
        if steering.is_base:
            return None, 0.0
        single = len(steering.parts) == 1
        with self._lock:
            # which file serves each behavior is looked up every time (from the cached listing), so a vector
            # rebuilt while the server runs is used from the next listing refresh on
            rows = {name: self._find(name, ARTIFACT[steering.method]) for name, _ in steering.parts}
            files = tuple(rows[name]["path"] for name, _ in steering.parts)
            # one behavior: one steerer serves every k (k is given at apply time); several: the ks are in the vector
            key = (steering.method, files) if single else (steering, files)
            if key in self._steerers:
                self._steerers.move_to_end(key)
            else:
                vectors = {name: self._vector(rows[name], name, steering.method) for name, _ in steering.parts}
                if steering.method == "activation":  # one steerer per behavior, nested for a composition
                    steerer = next(iter(vectors.values())) if single else ActivationComposition(
                        [(vectors[n], k) for n, k in steering.parts], name=f"composition {steering.label()}")
                elif single:
                    steerer = WeightSteerer(next(iter(vectors.values())), name=steering.method)
                else:
                    try:
                        composed = compose({n: (vectors[n], k) for n, k in steering.parts})
                    except WsteerError as e:
                        raise APIError(str(e), param="steer", code="invalid_value") from e
                    steerer = WeightSteerer(composed, name=f"composition {steering.label()}")
                self._steerers[key] = steerer
                while len(self._steerers) > self.max_steerers:
                    self._steerers.popitem(last=False)
            steerer = self._steerers[key]
        return steerer, (steering.parts[0][1] if single else 1.0)

    def parts(self, steering: Steering) -> list[tuple[str, WeightVector, float]]:
        """(vector file, the vector as applied, k) for each behavior of a steering; [] for the base model.

        For backends that apply each behavior as its own adapter at its own scale (llama.cpp: several LoRAs on
        one context), so one exported file per vector serves every k and every composition it appears in. The
        refusals are `resolve`'s.
        """
        if steering.is_base:
            return []
        with self._lock:
            rows = {name: self._find(name, ARTIFACT[steering.method]) for name, _ in steering.parts}
            return [(rows[name]["path"], self._vector(rows[name], name, steering.method), k)
                    for name, k in steering.parts]

    def listing(self) -> tuple[list[dict], list[dict]]:
        """(vectors this model can be steered with, newest per behavior; vectors built for other base models).

        Each entry holds the manifest's key facts (of the weight vector; of the activation vector for a behavior
        that has only that), the methods the library supports for it and how to request it.
        """
        rows = [r for r in self.rows(refresh=True) if not r["error"] and r["artifact"] in METHOD_OF]
        folders: dict[str, set[str]] = {}
        for r in rows:
            folders.setdefault(str(Path(r["path"]).parent), set()).add(r["artifact"])
        newest: dict[tuple[bool, str], dict] = {}  # per behavior: its newest weight vector, else its activation one
        activation: dict[tuple[bool, str], dict] = {}  # per behavior: its newest activation vector (own folder)
        for r in rows:
            if r["artifact"] not in ("contrastive", "activation"):
                continue
            key = (r["fingerprint"] == self.fingerprint, r["behavior"] if r["fingerprint"] == self.fingerprint
                   else f"{r['behavior']}:{r['fingerprint']}")
            if r["artifact"] == "activation" and (key not in activation or (r["created"] or "") > (activation[key]["created"] or "")):
                activation[key] = r
            old = newest.get(key)
            if (old is None or (r["artifact"], old["artifact"]) == ("contrastive", "activation")
                    or (r["artifact"] == old["artifact"] and (r["created"] or "") > (old["created"] or ""))):
                newest[key] = r
        usable, other = [], []
        for key, r in sorted(newest.items(), key=lambda kv: kv[0][1]):
            mine = key[0]
            man = _manifest(r["path"])
            sched, lora = man.get("schedule") or {}, man.get("lora") or {}
            weights = [a for a in ("contrastive", "pos", "neg") if a in folders[str(Path(r["path"]).parent)]]
            facts = {
                "kind": "vector", "behavior": r["behavior"], "base_model": man.get("base_model", r["model"]),
                "base_fingerprint": r["fingerprint"], "norm": r["norm"], "created": r["created"],
                "data_hash": r["data_hash"], "settings_hash": r["settings_hash"],
                "data_counts": man.get("data_counts"), "seed": man.get("seed"),
                "schedule": {k: sched.get(k) for k in ("name", "steps", "batch_size", "lr")} if sched else None,
                "lora": {k: lora.get(k) for k in ("r", "alpha")} if lora else None,
                "git_commit": man.get("git_commit"),
                "methods": [METHOD_OF[a] for a in weights] + (["activation"] if key in activation else []),
            }
            if key in activation:
                facts["activation"] = self._activation_facts(activation[key])
            if mine:
                facts["usage"] = ({"model": f"{r['behavior']}@-2", "extra_body": {"steer": {r["behavior"]: -2}}}
                                  if weights else {"model": self.model_name, "extra_body": {
                                      "steer": {r["behavior"]: -2}, "method": "activation"}})
                usable.append(facts)
            else:
                facts["why_not"] = (f"built for another base model; `{self.train_command(r['behavior'])}` builds one "
                                    "for the served model")
                other.append(facts)
        return usable, other

    def _activation_facts(self, row: dict) -> dict:
        """What `"method": "activation"` applies for a behavior: the layer, positions and the file's facts."""
        try:
            layer = self.layer_of(row["behavior"])
        except APIError:
            layer = None  # a malformed conf/behavior_model file: the request itself says so
        if layer is None:
            n_layers = _manifest(row["path"]).get("n_layers")
            layer = n_layers // 2 if isinstance(n_layers, int) else None  # ActivationSteerer's middle layer
        return {"layer": layer, "positions": self.activation_positions, "norm": row["norm"],
                "created": row["created"], "data_hash": row["data_hash"], "settings_hash": row["settings_hash"]}
