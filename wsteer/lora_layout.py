"""The PEFT LoRA layout, in one place: configs, scaling, key names, and which stored tensors make which delta.

A LoRA adapter on a weight W (out × in) holds A (r × in) and B (out × r) and adds ΔW = s·B A with scaling
s = α/r (α/√r under rsLoRA). wsteer's vectors are these updates (paper §1–2: w = τ⁺ − τ⁻, each τ a LoRA
update), kept factored as `{base param name: (s·B, A)}`. Three places meet the layout: training reads the
factors off a live PEFT model (`lora_factors`), `wsteer.export` writes k·w as an adapter folder, and
`wsteer.monitoring.loading` reads any adapter folder as a delta (paper §5). They share what is here.

PEFT reads the config (`LoraConfig.from_pretrained`, which fills PEFT's own defaults and warns about fields
from newer versions) and matches `alpha_pattern` (`get_pattern_key`, the matcher `LoraModel` uses). The
tensors are not read through `peft.load_peft_weights`: it loads the whole file, and a `modules_to_save`
embedding of a 7B model is gigabytes, while the monitoring reads one module at a time. Nor are they written
through PEFT: `save_pretrained` needs a PEFT model built on the base weights, and export works from factors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from wsteer.errors import WsteerError

if TYPE_CHECKING:
    from peft import LoraConfig

PREFIX = "base_model.model."  # PEFT's saved key prefix for a PeftModelForCausalLM around the base model
# `<module>.lora_A.weight`, `<module>.lora_B.<adapter>.weight`, `<module>.lora_embedding_A[.<adapter>]`,
# `<module>.lora_B.bias` (lora_bias=True)
_FACTOR_KEY = re.compile(r"(?P<mod>.+)\.lora_(?P<emb>embedding_)?(?P<ab>[AB])(?:\.[^.]+){0,2}$")


def lora_config(adapter_cfg) -> LoraConfig:
    """The `LoraConfig` of one trained side, from the `adapter` config group (r, alpha, dropout, targets)."""
    from peft import LoraConfig

    if int(adapter_cfg.r) < 1:
        raise WsteerError(f"adapter.r must be a positive integer (the paper uses 32); got {adapter_cfg.r}")
    targets = adapter_cfg.target_modules
    return LoraConfig(
        r=int(adapter_cfg.r),
        lora_alpha=float(adapter_cfg.alpha),
        lora_dropout=float(adapter_cfg.dropout),
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def base_name(peft_module_name: str) -> str:
    """The base model's name of a module inside a PEFT model: `base_model.model.model.layers.0…` → `model.layers.0…`."""
    return peft_module_name.removeprefix(PREFIX)


def lora_factors(peft_model, side: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{param name in the base model: (B·scaling, A)}` for one adapter, so that ΔW = B @ A exactly as PEFT merges it."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and side in module.lora_A:
            a = module.lora_A[side].weight.detach().float().cpu().clone()
            b = module.lora_B[side].weight.detach().float().cpu().clone() * module.scaling[side]
            out[base_name(name) + ".weight"] = (b, a)
    if not out:
        raise WsteerError(f"adapter {side!r} has no LoRA layers; check adapter.target_modules")
    return out


def live_factors(layer, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B·scaling, A) of one adapter of a live PEFT `LoraLayer`, oriented so that its weight's update is B @ A.

    Detached, on the layer's device and in its dtype (the monitor reads them every few steps). Linear layers
    give (B, A); fan_in_fan_out (Conv1D) layers store Wᵀ and embedding LoRAs keep A (r × vocab) and
    B (dim × r), so both updates are (B A)ᵀ and come back transposed in factored form.
    """
    s = layer.scaling[adapter]
    if adapter in layer.lora_A:
        b, a = layer.lora_B[adapter].weight.detach(), layer.lora_A[adapter].weight.detach()
        if getattr(layer, "fan_in_fan_out", False):
            b, a = a.T, b.T  # (B A)ᵀ = Aᵀ Bᵀ
    else:
        b, a = layer.lora_embedding_A[adapter].detach().T, layer.lora_embedding_B[adapter].detach().T
    return b * s, a


def scaling(alpha: float, r: int, rslora: bool = False) -> float:
    """s in ΔW = s·B A, as PEFT's `LoraLayer.update_layer` sets it."""
    return alpha / (math.sqrt(r) if rslora else r)


# ----------------------------------------------------------------------------------------------------
# Writing: k·w as an adapter PEFT and vLLM load unchanged (`wsteer.export`)


def module_path(param_name: str) -> str:
    """`<module>.weight` → `<module>`: the LoRA layer that carries this weight's update."""
    if not param_name.endswith(".weight"):
        raise WsteerError(f"cannot export {param_name!r} as a LoRA adapter: only `<module>.weight` "
                          "matrices map onto LoRA layers")
    return param_name.removesuffix(".weight")


def factor_key(module: str, factor: str) -> str:
    """The saved key of factor "A" or "B" of `module` (adapter name omitted, as `save_pretrained` writes it)."""
    return f"{PREFIX}{module}.lora_{factor}.weight"


def unit_scale_config(rank: int, base_model_id: str, target_modules: list[str] | str) -> dict:
    """`adapter_config.json` for factors whose scaling is already in B: r = lora_alpha, so α/r = 1."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model_id),
        "r": rank,
        "lora_alpha": rank,  # α/r = 1: k is already in lora_B
        "lora_dropout": 0.0,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,  # rsLoRA would scale by α/√r ≠ 1
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }


def target_modules_for(paths: list[str], target_modules: Iterable[str] | str | None, model) -> list[str] | str:
    """The `target_modules` that makes PEFT wrap exactly the modules in `paths`.

    Leaf names (`q_proj`, …) are the conventional form but match every module with that name, so they are
    used only when `model` shows they select exactly `paths` (a vector restricted to some layers would
    otherwise get extra, empty LoRA layers and PEFT "missing keys" warnings). Without a model, the explicit
    full module names are written: always exact, and vLLM ignores `target_modules` anyway (its loader takes
    the module list from the tensor names in `adapter_model.safetensors`).
    """
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    if target_modules is not None:
        targets = target_modules if isinstance(target_modules, str) else sorted(set(target_modules))
        config = LoraConfig(r=1, lora_alpha=1, target_modules=targets)
        missed = [p for p in paths if not check_target_module_exists(config, p)]
        if missed:
            raise WsteerError(f"target_modules={targets!r} does not select {missed[:3]}"
                              f"{' …' if len(missed) > 3 else ''}; PEFT would silently drop those weights — "
                              "leave target_modules unset to derive it from the vector")
        return targets
    leaves = sorted({p.rsplit(".", 1)[-1] for p in paths})
    if model is not None:
        linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        not_linear = [p for p in paths if p not in linear]
        if not_linear:
            raise WsteerError(f"{not_linear[0]} is not a torch.nn.Linear in the given model; only linear "
                              "layers can be exported as LoRA adapters (wrong model?)")
        selected = {n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in leaves}
        if selected == set(paths):
            return leaves
    return sorted(paths)


# ----------------------------------------------------------------------------------------------------
# Reading: any saved LoRA adapter as named deltas (`wsteer.monitoring.loading`)


@dataclass(frozen=True)
class StoredDelta:
    """How one base-model parameter's delta is stored in a safetensors file (an adapter's, or a wsteer vector's).

    Low-rank (`key_a` set): delta = scale·B A, or its transpose. Dense: delta = scale·t, or t − base where the
    file holds a trained full weight (`full`).
    """

    key: str  # the dense tensor, or B
    key_a: str | None = None  # A (low-rank only)
    scale: float = 1.0
    transpose: bool = False  # delta = (B A)ᵀ: PEFT embedding LoRAs and fan_in_fan_out (Conv1D) layers
    full: bool = False  # a trained full weight (PEFT modules_to_save, trained biases): delta = t − base

    @property
    def kind(self) -> str:
        return "lowrank" if self.key_a is not None else "dense"


def read_adapter_config(folder: Path) -> LoraConfig:
    """The folder's `adapter_config.json` as PEFT reads it, refused unless it describes a plain LoRA."""
    from peft import LoraConfig

    try:
        cfg = LoraConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, OSError) as e:
        raise WsteerError(f"{folder}: PEFT cannot read adapter_config.json ({e})") from e
    peft_type = getattr(cfg.peft_type, "value", cfg.peft_type)
    if peft_type != "LORA":
        raise WsteerError(f"{folder}: only LoRA adapters are supported (peft_type {peft_type!r})")
    if cfg.use_dora:
        raise WsteerError(
            f"{folder}: DoRA adapters are not low-rank deltas; merge the adapter and compare "
            "the dense difference (merged − base) instead"
        )
    return cfg


def adapter_deltas(cfg: LoraConfig, shapes: Mapping[str, tuple[int, ...]], folder: Path) -> dict[str, StoredDelta]:
    """`{base param name: StoredDelta}` of an adapter file with these keys (→ shapes) under config `cfg`.

    LoRA factors give low-rank entries `(B·α/r, A)`; `lora_B.bias` (lora_bias=True), trained biases
    (bias="all"/"lora_only") and `modules_to_save` copies give dense entries. Copies of base weights
    (save_embedding_layers) are skipped.
    """
    from peft.utils.other import get_pattern_key

    factors: dict[str, dict[str, str]] = {}
    out: dict[str, StoredDelta] = {}
    trains_bias = cfg.bias != "none"
    for key in shapes:
        k = base_name(key)
        if "lora_magnitude_vector" in k:
            raise WsteerError(f"{folder}: DoRA weights found ({key}); DoRA deltas are not low-rank")
        if "trainable_tokens" in k:
            raise WsteerError(f"{folder}: trainable-token adapters are not supported ({key})")
        m = _FACTOR_KEY.fullmatch(k)
        if m and k.endswith(".bias") and m["ab"] == "B":
            # lora_bias=True: the merged bias gains lora_B.bias · scaling; a dense delta on `<module>.bias`
            factors.setdefault(m["mod"], {})["bias"] = key  # its entry is made below, with the module's scale
            continue
        if m:
            role = ("emb_" if m["emb"] else "") + m["ab"]
            factors.setdefault(m["mod"], {})[role] = key
            continue
        if trains_bias and k.endswith(".bias"):
            out[k.replace(".base_layer.", ".")] = StoredDelta(key, full=True)
            continue
        if ".base_layer." in k:
            continue  # a copy of a base weight (save_embedding_layers), not part of the delta
        # modules_to_save: the trained full weight, with or without the `.modules_to_save[.adapter]` infix
        # (design §8: an older regex in the authors' fork silently dropped these; never drop them here)
        out[re.sub(r"\.modules_to_save(\.[^.]+)?(?=\.[^.]+$)", "", k)] = StoredDelta(key, full=True)
    alphas = cfg.alpha_pattern or {}
    for mod, roles in factors.items():
        emb = "emb_A" in roles or "emb_B" in roles
        ka, kb = (roles.get("emb_A"), roles.get("emb_B")) if emb else (roles.get("A"), roles.get("B"))
        if ka is None or kb is None:
            raise WsteerError(
                f"{folder}: module {mod} has only one of its LoRA factors; the adapter is incomplete"
            )
        # r from A's shape, not the config: it already reflects rank_pattern
        alpha = float(alphas.get(get_pattern_key(alphas.keys(), mod), cfg.lora_alpha))
        scale = scaling(alpha, shapes[ka][0], bool(cfg.use_rslora))
        # Embedding LoRA stores A (r × vocab) and B (dim × r) with delta = (B A)ᵀ·s (PEFT `Embedding`).
        out[f"{mod}.weight"] = StoredDelta(kb, ka, scale, transpose=emb or bool(cfg.fan_in_fan_out))
        if "bias" in roles:
            out[f"{mod}.bias"] = StoredDelta(roles["bias"], scale=scale)
    if not any(s.kind == "lowrank" for s in out.values()):
        raise WsteerError(f"{folder}: no LoRA factors found in adapter_model.safetensors")
    return out
