"""`"method": "activation"` as the server applies it: the layer and positions `steer.py method=activation` uses,
several behaviors at once, and the same shift as a llama.cpp control vector.

- **Layer.** Each behavior's own `activation_layer` (`conf/behavior_model/<behavior>_<model>.yaml`, the file
  `steer.py`'s config composes for that behavior and model), else the middle layer, as `ActivationSteerer` picks;
  the server's `activation.layer` fixes one layer for every behavior instead.
- **Positions.** `hf` adds k·aˡ at the last position of each forward pass, `steer.py method=activation`'s default
  (`positions: last`). llama.cpp adds a control vector at every position, prompt included, so `llamacpp` serves
  `positions: all`: its answers are what `steer.py method=activation method.positions=all` computes (up to the
  GGUF's quantization), not the default recipe. `activation.positions=all` makes `hf` match it.
- **Composition.** Each behavior's steerer is applied at its own k, nested: forward hooks add, so the model runs
  with Σ kᵢ·aᵢ at the parts' layers. `steer.py` has no activation composition to compare with; the server's is
  checked against the nested `apply` it is.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from wsteer.errors import WsteerError
from wsteer.steering.activation import ActivationSteerer
from wsteer.steering.base import Steerer

POSITIONS = ActivationSteerer.POSITIONS
NATURAL_POSITIONS = {"hf": "last", "llamacpp": "all", "vllm": "last"}  # what each backend serves when not told


def served_positions(backend: str, positions: str | None) -> str:
    """`activation.positions` for a backend (null: the backend's own); a backend that cannot add at the requested
    positions is refused at start-up, naming the setting that works."""
    if positions is None:
        return NATURAL_POSITIONS.get(backend, "last")
    if positions not in POSITIONS:
        raise WsteerError(f"activation.positions must be one of {', '.join(POSITIONS)} or null, got {positions!r}")
    if backend == "llamacpp" and positions != "all":
        raise WsteerError("backend=llamacpp adds activation vectors as llama.cpp control vectors, which act at every "
                          "position; activation.positions=last cannot be served by it: use activation.positions=all "
                          "(or null), or backend=hf")
    return positions


def behavior_layer(behavior: str, model_name: str, conf_dir: Path | None) -> int | None:
    """`activation_layer` from `<conf_dir>/<behavior>_<model>.yaml` (what steer.py composes), or None (middle)."""
    if conf_dir is None:
        return None
    path = Path(conf_dir) / f"{behavior}_{model_name}.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    layer = OmegaConf.load(path).get("activation_layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise WsteerError(f"{path}: activation_layer must be an integer or null, got {layer!r}")
    return layer


class ActivationComposition(Steerer):
    """Several behaviors' activation steerers, each at its own k; applied at k = 1 (another k scales them all),
    like a composed weight vector."""

    name = "activation"

    def __init__(self, parts: list[tuple[ActivationSteerer, float]], name: str = "activation composition"):
        super().__init__({"method": "activation", "parts": [dict(s.manifest, k=k) for s, k in parts]}, name)
        self.parts = parts

    @contextmanager
    def _steer(self, model, k: float):
        with ExitStack() as stack:  # hooks are removed in reverse order on exit, also when generation raises
            for steerer, part_k in self.parts:
                stack.enter_context(steerer.apply(model, k * part_k))
            yield model

    def describe(self) -> str:
        return " + ".join(f"{k:g}·a[{s.manifest.get('behavior')}] at layer {s.layer}" for s, k in self.parts)


def control_vector(steerer: ActivationSteerer | ActivationComposition, k: float) -> tuple[int, np.ndarray]:
    """(n_embd, data) for `llama_set_adapter_cvec`: k·aˡ (each part at its own k) laid out as
    `wsteer.control_vector.control_vector_data` reads an exported control vector at strength k, so llama.cpp is given
    what `steer.py export_gguf=true` writes and `--control-vector-scaled FILE:k` applies.

    Raises:
        WsteerError: a single-layer steerer at layer 1 (llama.cpp never adds a control vector after block 0), or an
            all-layers steerer.
    """
    parts = steerer.parts if isinstance(steerer, ActivationComposition) else [(steerer, 1.0)]
    n_layers, n_embd = parts[0][0].n_layers, parts[0][0].a.shape[1]
    data = np.zeros((n_layers - 1, n_embd), dtype=np.float32)  # row il - 1 is direction.il, il = 1..L-1
    for part, part_k in parts:
        if part.all_layers:
            raise WsteerError("activation_all_layers has no single control vector; serve it with backend=hf")
        if part.layer == 1:
            raise WsteerError(f"{part.manifest.get('behavior')!r} steers layer 1 (after the first block), where "
                              "llama.cpp never adds a control vector; set activation.layer ≥ 2 or serve with backend=hf")
        # float32 times the strength, as control_vector_data scales the exported float32 direction
        data[part.layer - 2] += part.a[part.layer].numpy().astype(np.float32) * (k * part_k)
    return n_embd, data.reshape(-1)
