"""On-policy contrastive data: the target model's own answers under eliciting prompts (paper §1, "Building D⁺/D⁻").

For every (build question, system prompt) pair the model answers `n_samples` times; the system prompt and any
demonstration are dropped, so training rows are plain question → answer and the fine-tune learns the behavior
unconditionally. The result is a `datasets.DatasetDict` with `pos` and `neg` splits plus `manifest.json`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk
from omegaconf import DictConfig

from wsteer.artifacts import SHIPPED_DATA, atomic_path, stable_hash, write_json
from wsteer.behaviors import SIDES, Behavior
from wsteer.errors import WsteerError
from wsteer.generation import generate

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def trim_unfinished(text: str, min_chars: int = 20) -> str:
    """Cut an answer that hit the token limit back to its last full sentence, so training never teaches
    the model to stop mid-sentence. Answers with no sentence end after `min_chars` are kept as they are."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() >= min_chars]
    return text[: ends[-1]] if ends else text


def data_key(behavior: Behavior, sampling: DictConfig, judge: DictConfig, fingerprint: str) -> dict:
    """Everything that determines the sampled data; a stored dataset is reused only if its key matches."""
    return {
        "model_fingerprint": fingerprint,
        "behavior": behavior.name,
        "prompts_hash": behavior.prompts_hash(),
        "sampling": {k: sampling[k] for k in ("n_samples", "temperature", "max_new_tokens", "seed")},
        "judge": judge.name,
    }


def sample_pairs(model, tokenizer, behavior: Behavior, sampling: DictConfig) -> dict[str, list[dict]]:
    """Sample D⁺ and D⁻ rows with the target model itself (no judge filtering)."""
    rows: dict[str, list[dict]] = {}
    for side in SIDES:
        jobs = [
            (q, s_idx, sp, n)
            for q in behavior.build_questions
            for s_idx, sp in enumerate(behavior.system_prompts(side))
            for n in range(sampling.n_samples)
        ]
        convs = [behavior.eliciting_conversation(side, sp, q) for q, _, sp, _ in jobs]
        outs = generate(
            model,
            tokenizer,
            convs,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            batch_size=sampling.batch_size,
            seed=sampling.seed + (0 if side == "pos" else 1),
            desc=f"sample D{'+' if side == 'pos' else '-'}",
        )
        rows[side] = [
            {
                "question": q,
                "response": o["text"] if o["finished"] else trim_unfinished(o["text"]),
                "system_prompt": sp,  # kept for activation steering, which collects with the prompt present
                "system_prompt_index": s_idx,
                "sample_index": n,
                "finished": o["finished"],
            }
            for (q, s_idx, sp, n), o in zip(jobs, outs, strict=True)
            if o["text"].strip()
        ]
    return rows


def content_hash(dd: DatasetDict) -> str:
    return stable_hash({s: [[r["question"], r["response"]] for r in dd[s]] for s in SIDES})


def save_pairs(rows: dict[str, list[dict]], folder: Path, manifest: dict) -> DatasetDict:
    dd = DatasetDict({s: Dataset.from_list(rows[s]) for s in SIDES})
    manifest = {
        **manifest,
        "counts": {s: len(rows[s]) for s in SIDES},
        "data_hash": content_hash(dd),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_path(folder) as tmp:
        dd.save_to_disk(str(tmp))
        write_json(tmp / "manifest.json", manifest)
    return dd


def load_pairs(folder: str | Path) -> tuple[DatasetDict, dict]:
    folder = Path(folder)
    man = folder / "manifest.json"
    if not man.is_file():
        raise WsteerError(f"{folder} is not a wsteer pairs dataset (no manifest.json); re-create it with train.py")
    try:
        manifest = json.loads(man.read_text())
        dd = load_from_disk(str(folder))
    except Exception as e:  # corrupt arrow files or manifest
        raise WsteerError(f"dataset at {folder} is unreadable ({e.__class__.__name__}: {e}); delete it and rerun") from e
    return dd, manifest


def candidate_folders(cfg: DictConfig, key: dict) -> list[Path]:
    """Where a matching dataset may already be: committed with the project, then the user cache."""
    shipped = SHIPPED_DATA / "pairs" / key["behavior"] / cfg.model.name
    cached = Path(cfg.paths.cache_dir).expanduser() / "pairs" / key["behavior"] / f"{cfg.model.name}-{stable_hash(key, 12)}"
    return [shipped, cached]


def ensure_pairs(cfg: DictConfig, model, tokenizer, behavior: Behavior, fingerprint: str) -> tuple[DatasetDict, dict]:
    """Reuse a stored D±/manifest whose key matches, else sample it into the cache."""
    key = data_key(behavior, cfg.sampling, cfg.judge, fingerprint)
    shipped, cached = candidate_folders(cfg, key)
    for folder in (shipped, cached):
        if (folder / "manifest.json").is_file():
            dd, manifest = load_pairs(folder)
            if manifest.get("key") == key:
                print(f"wsteer: reusing D+/D- from {folder} ({manifest['counts']})")
                return dd, manifest
    if cfg.judge.name != "none":
        raise WsteerError(f"judge {cfg.judge.name!r} is not available yet; use judge=none")
    n = len(behavior.build_questions) * cfg.sampling.n_samples
    print(f"wsteer: sampling D+/D- with the target model ({n * len(behavior.pos_system_prompts)} answers per side)")
    rows = sample_pairs(model, tokenizer, behavior, cfg.sampling)
    manifest = {"key": key, "model": cfg.model.path, "behavior_version": behavior.version,
                "command": " ".join(["python", Path(sys.argv[0]).name, *sys.argv[1:]])}
    save_pairs(rows, cached, manifest)
    return load_pairs(cached)
