"""Exports of a steered model: k·w as a standard PEFT LoRA adapter, or θ + k·w as a merged HF folder.

A contrastive vector w = [s·B⁺, −s·B⁻] @ [A⁺; A⁻] is exactly a rank-2r LoRA update, so k·w can be handed
to any PEFT- or vLLM-based stack as an ordinary adapter: lora_B = k·B, lora_A = A, with r = lora_alpha = 2r
so that the LoRA scaling α/r is 1 and the merged weights are θ + k·w up to fp32 rounding.

We write the adapter ourselves instead of going through PEFT's `add_weighted_adapter`: its `"linear"`
combination scales A and B separately, so weights [k, −k] give (B⁺ + B⁻)(A⁺ − A⁻)-style cross-terms
rather than k(B⁺A⁺ − B⁻A⁻) (peft#3004; measured relative error 1.00 in ../shared/design/peers.md §5.2).
And serving engines have no steering-vector API of their own (vllm#3451, never merged): a LoRA adapter is
what they already serve. Key names and the config come from `wsteer.lora_layout`, which also reads them back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from wsteer.artifacts import atomic_path, git_commit
from wsteer.errors import WsteerError
from wsteer.lora_layout import factor_key, module_path, target_modules_for, unit_scale_config
from wsteer.models import DTYPES, fingerprint
from wsteer.steering.k import check_k
from wsteer.vectors import WeightVector

ADAPTER_FORMAT = "wsteer.peft_adapter/1"
MERGED_FORMAT = "wsteer.merged_model/1"
# Manifest fields worth a line in a model card; the full manifest follows in a collapsed JSON block.
CARD_FIELDS = ("base_model", "base_fingerprint", "behavior", "behavior_version", "method", "variant",
               "data_hash", "data_counts", "norm", "created", "git_commit")


def export_peft_adapter(
    vector: WeightVector,
    k: float,
    out_dir: str | Path,
    base_model_id: str | None = None,
    target_modules: Iterable[str] | str | None = None,
    *,
    model=None,
    dtype: torch.dtype | str = torch.float32,
) -> Path:
    """Write k·w as a standard PEFT LoRA adapter folder that PEFT and vLLM load unchanged.

    For every module with factors (B, A) of rank R_m, the adapter holds `lora_B = k·B` (out × R) and
    `lora_A = A` (R × in) under `base_model.model.<module path>.lora_{A,B}.weight`, with `r = lora_alpha = R`
    (no rsLoRA, no DoRA), so both PEFT (α/r) and vLLM (`PEFTHelper.vllm_lora_scaling_factor` = α/r) scale by
    exactly 1 and merging gives θ + k·w. A contrastive vector from LoRA rank r exports at R = 2r; τ⁺/τ⁻ at r;
    a composed vector (`wsteer.library.compose`) at the sum of its parts' ranks.

    Modules of different rank (a composed vector whose parts cover different modules) are zero-padded to
    the largest rank R rather than described with `rank_pattern`: vLLM's `PEFTHelper` keeps only one global
    `r` and `lora_alpha` and drops `rank_pattern`/`alpha_pattern`; other consumers (llama.cpp's LoRA
    converter, older PEFT versions whose pattern-key matching differs) read one rank too. Zero rows of A and
    zero columns of B add exact zeros, so the padded adapter merges to the same weights everywhere; it costs
    only the stored zeros.

    Serve with vLLM as `vllm serve <base> --enable-lora --max-lora-rank <≥ R> --lora-modules steer=<out_dir>`
    (vLLM's default `--max-lora-rank` is 16; the default SmolLM2 vector has R = 64).

    Args:
        vector: the weight vector (contrastive w, τ±, or a composition).
        k: steering strength, baked into lora_B; the adapter then always applies θ + k·w.
        out_dir: folder to create (replaced atomically if it exists).
        base_model_id: hub id or path written as `base_model_name_or_path`; default: the manifest's
            base model.
        target_modules: override for `adapter_config.json`'s `target_modules`; must select every module.
        model: the base model, optional: lets the config use short leaf names (`q_proj`, …) when they select
            exactly the vector's modules, and checks that every module is a linear layer.
        dtype: dtype of the stored factors (fp32 default keeps the merge exact to ~1e-7).

    Returns:
        `out_dir`, holding `adapter_config.json`, `adapter_model.safetensors`, `README.md` (model card) and
        `wsteer_manifest.json` (k, rank and the vector's manifest).
    """
    k = check_k(k)
    if not vector.factors:
        raise WsteerError("the vector has no modules to export (all parts at k = 0?)")
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    base_model_id = base_model_id or vector.manifest.get("base_model")
    if not base_model_id:
        raise WsteerError("pass base_model_id: the vector's manifest names no base model")
    paths = {module_path(n): n for n in vector.factors}
    rank = max(b.shape[1] for b, _ in vector.factors.values())
    tensors: dict[str, torch.Tensor] = {}
    for path, name in sorted(paths.items()):
        b, a = vector.factors[name]
        if b.shape[1] != a.shape[0]:
            raise WsteerError(f"{name}: B is {tuple(b.shape)} but A is {tuple(a.shape)}; "
                              "the vector is corrupt")
        pad = rank - b.shape[1]
        b = torch.nn.functional.pad(b.float() * k, (0, pad))  # zero columns: see the docstring
        a = torch.nn.functional.pad(a.float(), (0, 0, 0, pad))  # zero rows
        tensors[factor_key(path, "A")] = a.to(dtype).contiguous()
        tensors[factor_key(path, "B")] = b.to(dtype).contiguous()
    config = unit_scale_config(rank, base_model_id, target_modules_for(sorted(paths), target_modules, model))
    padded = sorted(p for p, n in paths.items() if vector.factors[n][0].shape[1] < rank)
    info = {
        "format": ADAPTER_FORMAT,
        "k": k,
        "rank": rank,
        "modules": len(paths),
        "zero_padded_modules": len(padded),
        "dtype": str(dtype).removeprefix("torch."),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "vector": vector.manifest,
    }
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        _write_json(tmp / "wsteer_manifest.json", info)
        (tmp / "README.md").write_text(_adapter_card(info, config))
    return out_dir


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _summary_rows(manifest: dict) -> list[str]:
    labels = {"norm": "‖w‖ (before k)"}
    rows = [f"| {labels.get(key, key)} | {manifest[key]} |"
            for key in CARD_FIELDS if manifest.get(key) is not None]
    lora = manifest.get("lora")
    if isinstance(lora, dict):
        rows.append(f"| LoRA (per side) | r {lora.get('r')}, α {lora.get('alpha')}, "
                    f"targets {lora.get('target_modules')} |")
    for part in manifest.get("parts", []):
        rows.append(f"| part `{part.get('name')}` | k = {part.get('k')}, behavior {part.get('behavior')}, "
                    f"method {part.get('method')}, ‖w‖ = {part.get('norm')} |")
    return rows


def _front_matter(base_model: str, library: str, tags: list[str]) -> str:
    return "\n".join(["---", f"base_model: {base_model}", f"library_name: {library}", "tags:",
                      *[f"- {t}" for t in tags], "---", ""])


def _manifest_block(obj: dict) -> list[str]:
    return ["<details><summary>Full manifest</summary>", "", "```json",
            json.dumps(obj, indent=2, sort_keys=True, default=str), "```", "", "</details>", ""]


def _adapter_card(info: dict, config: dict) -> str:
    man = info["vector"]
    base = config["base_model_name_or_path"]
    lines = [
        _front_matter(base, "peft", ["wsteer", "steering", "lora"]),
        f"# Steering adapter: {man.get('behavior', '?')} at k = {info['k']:g}",
        "",
        f"A standard PEFT LoRA adapter holding k·w for the `{man.get('behavior', '?')}` weight vector "
        f"(method `{man.get('method', '?')}`), exported by wsteer. Merged, it gives exactly θ + k·w: "
        f"rank {info['rank']}, `lora_alpha` = r (scaling 1), k = {info['k']:g} baked into `lora_B`. "
        "k < 0 removes the behavior, k > 0 adds it.",
        "",
        "| field | value |",
        "|---|---|",
        f"| k | {info['k']:g} |",
        f"| rank | {info['rank']} ({info['modules']} modules, {info['zero_padded_modules']} zero-padded) |",
        f"| dtype | {info['dtype']} |",
        *_summary_rows(man),
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{base}")',
        f'model = AutoModelForCausalLM.from_pretrained("{base}")',
        'model = PeftModel.from_pretrained(model, "<this folder>").merge_and_unload()  # θ + k·w',
        "```",
        "",
        f"vLLM: `vllm serve {base} --enable-lora --max-lora-rank {_vllm_rank(info['rank'])} "
        "--lora-modules steer=<this folder>`.",
        "",
        *_manifest_block(info),
    ]
    return "\n".join(lines)


def _vllm_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` value vLLM accepts that fits `rank`."""
    allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    return next((r for r in allowed if r >= rank), rank)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def export_merged_model(
    model, tokenizer, steerer, k: float, out_dir: str | Path, card: dict | None = None
) -> Path:
    """Save θ + k·w as a self-contained HF folder (safetensors) with a generated model card.

    The steering is applied with `steerer.apply(model, k)` for the save only, so the in-memory model is
    bitwise the same afterwards. Only steerers that act through the weights can be saved this way: one that
    adds forward hooks (activation, bias-only) or edits prompts would silently save the unsteered base, and is
    refused.

    Args:
        model: the loaded base model (not a PEFT wrapper).
        tokenizer: saved next to the weights (skipped when None).
        steerer: a weight-space `Steerer` (`WeightSteerer`, `FinetuneSteerer`).
        k: steering strength.
        out_dir: folder to create (replaced atomically if it exists).
        card: optional extras for the model card: `base_model` (id to name instead of the manifest's),
            `title`, `evaluation` (a dict of metrics or markdown text), `notes` (markdown), `vector_path`.

    Returns:
        `out_dir`, holding the HF model files, the tokenizer, `README.md` and `wsteer_manifest.json`.
    """
    k = check_k(k)
    card = dict(card or {})
    manifest = getattr(steerer, "manifest", {}) or {}
    hooks_before, fp_before = _hook_count(model), fingerprint(model)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        with steerer.apply(model, k):
            if _hook_count(model) != hooks_before:
                raise WsteerError(f"method {steerer.name!r} steers through forward hooks, which a saved "
                                  "model cannot hold; export a weight-space method (weight, task_vector_*, "
                                  "finetune)")
            steered_fp = fingerprint(model)
            if k != 0 and steered_fp == fp_before:
                raise WsteerError(f"method {steerer.name!r} leaves the weights unchanged at k = {k:g}, so "
                                  "the saved model would be the base model; export a weight-space method")
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        vector = getattr(steerer, "vector", None)
        info = {
            "format": MERGED_FORMAT,
            "k": k,
            "method": steerer.name,
            "steerer": steerer.describe(),
            "base_fingerprint": fp_before,
            "steered_fingerprint": steered_fp,
            "rank": max((b.shape[1] for b, _ in vector.factors.values()), default=0)
            if isinstance(vector, WeightVector) else None,
            "modules": len(vector.factors) if isinstance(vector, WeightVector) else None,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git_commit": git_commit(),
            "card": card,
            "vector": manifest,
        }
        _write_json(tmp / "wsteer_manifest.json", info)
        (tmp / "README.md").write_text(_merged_card(info, card, manifest))
    return out_dir


def _merged_card(info: dict, card: dict, manifest: dict) -> str:
    base = card.get("base_model") or manifest.get("base_model") or "unknown"
    behavior = manifest.get("behavior", "?")
    title = card.get("title") or f"{base} steered on {behavior} with k = {info['k']:g}"
    lines = [
        _front_matter(base, "transformers", ["wsteer", "steering", "weight-arithmetic"]),
        f"# {title}",
        "",
        f"The weights are θ + k·w: the base model `{base}` plus k = {info['k']:g} times the `{behavior}` "
        f"weight vector w (method `{manifest.get('method', info['method'])}`; the contrastive w = τ⁺ − τ⁻ is "
        "the difference of two LoRA fine-tunes on the model's own answers under behavior-eliciting and "
        "behavior-opposing prompts, Fierro & Roger, ICLR 2026). k < 0 removes the behavior, k > 0 adds it. "
        "Exported by wsteer.",
        "",
        "| field | value |",
        "|---|---|",
        f"| k | {info['k']:g} |",
        f"| steering | {info['steerer']} |",
        f"| fingerprint of these weights | {info['steered_fingerprint']} |",
    ]
    if info["rank"] is not None:
        lines.append(f"| vector rank | {info['rank']} over {info['modules']} weight matrices |")
    lines += [*_summary_rows(manifest), ""]
    evaluation = card.get("evaluation")
    if evaluation:
        lines += ["## Evaluation", ""]
        if isinstance(evaluation, dict):
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {m} | {v:.4g} |" if isinstance(v, float) else f"| {m} | {v} |"
                      for m, v in evaluation.items()]
        else:
            lines.append(str(evaluation))
        lines.append("")
    if card.get("notes"):
        lines += ["## Notes", "", str(card["notes"]), ""]
    if card.get("vector_path"):
        lines += [f"Vector file: `{card['vector_path']}`", ""]
    lines += _manifest_block({k: v for k, v in info.items() if k != "card"})
    return "\n".join(lines)
