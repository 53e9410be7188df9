"""An activation vector as a llama.cpp control vector (`--control-vector-scaled FILE:k`), as repeng exports its vectors.

llama.cpp adds `direction.<il>` to the residual stream after
block il (0-based) at every position (`build_cvec` after each block in src/models/*.cpp;
`llama_adapter_cvec::apply_to`); `common_control_vector_load` reads F32 1-D tensors `direction.N`, N ≥ 1 (there
is never a vector after block 0). wsteer's aˡ is the residual after block l − 1 (l = 0 is the embeddings), so aˡ
is written as `direction.{l − 1}`: the same convention as repeng's export (its layer i is `hidden_states[i + 1]`).
Note the positions: wsteer's `activation` method adds k·aˡ at the last position of each forward pass (the
persona-vectors recipe); llama.cpp adds it at every position, prompt included. `ActivationSteerer(positions="all")`
is the like-for-like HF counterpart.
"""

from __future__ import annotations

import ctypes
import json
import time
from pathlib import Path

import numpy as np
import torch

from wsteer.artifacts import atomic_path, git_commit
from wsteer.errors import WsteerError
from wsteer.steering.k import check_k
from wsteer.vectors import DenseVector, WeightVector

CONTROL_FORMAT = "wsteer.gguf_control_vector/1"


def export_control_vector(
    vector: DenseVector,
    path: str | Path,
    *,
    layer: int | None = None,
    k: float = 1.0,
    model_hint: str = "llama",
) -> Path:
    """Write k·aˡ as a llama.cpp control vector (`--control-vector-scaled path:s` scales it again by s).

    Args:
        vector: an activation vector (train.py source=activation; tensors "0".."L", aˡ after block l − 1).
        path: the .gguf file to write (atomically).
        layer: wsteer's layer l (1..L, as `activation_layer`/`ActivationSteerer.layer`); default: the middle layer,
            as `ActivationSteerer` picks. Layer 1 (after the first block) cannot be exported: llama.cpp never adds
            a control vector there.
        k: strength baked into the direction (default 1: choose it with `--control-vector-scaled`).
        model_hint: `controlvector.model_hint` (repeng writes the HF model_type; llama.cpp does not read it).

    Returns:
        `path`, holding one F32 tensor `direction.{layer − 1}`.
    """
    import gguf

    if isinstance(vector, WeightVector):
        raise WsteerError("a weight vector has no control-vector form (it edits weights, not activations); "
                          "export it with export_gguf_lora")
    if not isinstance(vector, DenseVector) or vector.manifest.get("method") not in ("activation", None):
        made = vector.manifest.get("method") if isinstance(vector, DenseVector) else type(vector).__name__
        raise WsteerError(f"a {made!r} artifact is not an activation vector; build one with "
                          "`python train.py source=activation`")
    k = check_k(k)
    try:
        a = torch.stack([vector.tensors[str(i)] for i in range(len(vector.tensors))]).float()
    except KeyError as e:
        raise WsteerError(f"the activation vector lacks layer {e}; rebuild it with train.py source=activation") from e
    n_layers = a.shape[0] - 1
    layer = n_layers // 2 if layer is None else int(layer)
    if layer == 1:
        raise WsteerError("layer 1 (the residual after the first block) cannot be exported: llama.cpp never adds a "
                          "control vector after block 0 (direction.0 is rejected); choose layer ≥ 2")
    if not 2 <= layer <= n_layers:
        raise WsteerError(f"layer={layer} is out of range: this vector has layers 1..{n_layers}")
    direction = (k * a[layer]).numpy().astype(np.float32)
    manifest = {"format": CONTROL_FORMAT, "k": k, "layer": layer, "direction": f"direction.{layer - 1}",
                "positions": "all (llama.cpp adds a control vector at every position)",
                "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(),
                "vector": vector.manifest}
    with atomic_path(path, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_uint32("controlvector.layer_count", 1)
        writer.add_string("wsteer.format", CONTROL_FORMAT)
        writer.add_string("wsteer.manifest", json.dumps(manifest, sort_keys=True, default=str))
        writer.add_tensor(f"direction.{layer - 1}", direction)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def control_vector_data(path: str | Path, strength: float = 1.0) -> tuple[int, np.ndarray]:
    """`(n_embd, data)` for `llama_set_adapter_cvec`, read as llama.cpp's `common_control_vector_load` reads it.

    The same rules: tensors `direction.N` with N ≥ 1, F32, 1-D, one size; `data` is laid out per block from block
    1 (block 0 never gets a vector), missing blocks zero, every value times `strength`.
    """
    from gguf import GGMLQuantizationType, GGUFReader

    path = Path(path)
    if not path.is_file():
        raise WsteerError(f"control vector {path} does not exist; write it with export_control_vector")
    reader = GGUFReader(path)
    n_embd, rows = None, {}
    for t in reader.tensors:
        head, _, idx = t.name.partition(".")
        if head != "direction" or not idx.isdigit() or int(idx) == 0:
            raise WsteerError(f"{path}: tensor {t.name!r} is not a valid direction.N (N ≥ 1) tensor")
        if t.tensor_type != GGMLQuantizationType.F32 or len(t.shape) != 1:
            raise WsteerError(f"{path}: {t.name} must be a 1-D F32 tensor for llama.cpp")
        if n_embd is not None and int(t.shape[0]) != n_embd:
            raise WsteerError(f"{path}: direction tensors differ in size")
        n_embd = int(t.shape[0])
        rows[int(idx)] = np.array(t.data, dtype=np.float32)
    if n_embd is None:
        raise WsteerError(f"{path} holds no direction tensors")
    data = np.zeros((max(rows), n_embd), dtype=np.float32)
    for il, row in rows.items():
        data[il - 1] += row * strength
    return n_embd, data.reshape(-1)


def apply_control_vector(llm, path: str | Path | None, strength: float = 1.0,
                         layer_start: int = 1, layer_end: int | None = None) -> None:
    """Set (or with `path=None`, clear) a GGUF control vector on a llama-cpp-python `Llama`.

    llama-cpp-python exposes only the low-level `llama_set_adapter_cvec`, not llama.cpp's file loader; this reads the
    file with `control_vector_data` and applies it to blocks layer_start..layer_end (inclusive; llama.cpp's CLI
    defaults 1..n_layer), as `--control-vector-scaled path:strength` does. The KV cache is dropped (`llm.reset()`):
    cached keys and values were computed without the vector.
    """
    import llama_cpp

    if path is None:
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, 0, -1, -1)
    else:
        n_embd, data = control_vector_data(path, check_k(strength))
        n_layer = llama_cpp.llama_model_n_layer(llm.model)
        layer_end = n_layer if layer_end is None else layer_end
        # llama.cpp copies only the blocks `data` covers and keeps its old direction in the others
        # (llama_adapter_cvec::apply): pad with zeros to every block, else a vector set earlier on this context at a
        # deeper layer would still be added under this one.
        data = np.concatenate([data, np.zeros(max(0, (n_layer - 1) * n_embd - data.size), dtype=np.float32)])
        buf = (ctypes.c_float * data.size).from_buffer_copy(np.ascontiguousarray(data).tobytes())
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, buf, data.size, n_embd, layer_start, layer_end)
    if rc != 0:
        raise WsteerError(f"llama.cpp refused the control vector {path} (its size does not match the model's "
                          "n_embd?): wrong base model")
    llm.reset()
