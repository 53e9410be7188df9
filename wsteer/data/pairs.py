"""On-policy contrastive data: the target model's own answers under eliciting prompts (paper §1, "Building D⁺/D⁻").

For every (build question, system prompt) pair the model answers `n_samples` times; the system prompt and any
demonstration are dropped, so training rows are plain question → answer and the fine-tune learns the behavior
unconditionally. A judge then keeps only matched pairs where the D⁺ answer shows the trait, the D⁻ answer does
not, and both are coherent (persona-vectors rule). The result is a `datasets.DatasetDict` with `pos` and `neg`
splits plus `manifest.json`.

Sampling is resumable: every finished batch is appended to a JSONL file keyed by (side, question, prompt,
sample), and a rerun skips what is there. Judge verdicts are cached by the judge itself.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Value, load_from_disk
from omegaconf import DictConfig
from tqdm.auto import tqdm

from wsteer.artifacts import SHIPPED_DATA, atomic_path, stable_hash, write_json
from wsteer.behaviors import SIDES, Behavior
from wsteer.config import instantiate
from wsteer.errors import WsteerError
from wsteer.generation import generate
from wsteer.interrupts import stop_promptly_on_sigterm
from wsteer.judges.base import JudgeItem
from wsteer.judges.filtering import filter_pairs
from wsteer.locks import building

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
MIN_KEPT = 4  # per side: fewer cannot train and validate


def trim_unfinished(text: str, min_chars: int = 20) -> str:
    """Cut an answer that hit the token limit back to its last full sentence, so training never teaches
    the model to stop mid-sentence. Answers with no sentence end after `min_chars` are kept as they are."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() >= min_chars]
    return text[: ends[-1]] if ends else text


def build_judge(judge_cfg: DictConfig):
    return instantiate(judge_cfg)


def data_key(behavior: Behavior, sampling: DictConfig, judge_desc: dict | str, fingerprint: str) -> dict:
    """Everything that determines the data; a stored dataset is reused only if its key matches."""
    return {
        "model_fingerprint": fingerprint,
        "behavior": behavior.name,
        "prompts_hash": behavior.prompts_hash(),
        "sampling": {k: sampling[k] for k in ("n_samples", "temperature", "max_new_tokens", "seed")},
        "judge": judge_desc,
    }


def _jobs(behavior: Behavior, side: str, n_samples: int) -> list[tuple[str, int, str, int]]:
    return [(q, s_idx, sp, n) for q in behavior.build_questions
            for s_idx, sp in enumerate(behavior.system_prompts(side)) for n in range(n_samples)]


def _row(q: str, s_idx: int, sp: str, n: int, text: str, finished: bool) -> dict:
    return {
        "question": q,
        "response": text if finished else trim_unfinished(text),
        "system_prompt": sp,  # kept for activation steering, which collects with the prompt present
        "system_prompt_index": s_idx,
        "sample_index": n,
        "finished": finished,
    }


def _progress_row(line: str) -> dict | None:
    """One sampled answer from the progress file, or None if the line is not one (damaged, or foreign)."""
    try:
        r = json.loads(line)
    except ValueError:
        return None
    ok = (isinstance(r, dict) and r.get("side") in SIDES and isinstance(r.get("question"), str)
          and isinstance(r.get("response"), str) and isinstance(r.get("system_prompt"), str)
          and all(isinstance(r.get(k), int) and not isinstance(r.get(k), bool)
                  for k in ("system_prompt_index", "sample_index")))
    return r if ok else None


def _read_progress(progress_file: Path) -> dict[tuple, dict]:
    """The answers a killed run left in `progress_file`, keyed by (side, question, prompt index, sample index).

    A line cut off by a kill mid-write is dropped. A damaged line elsewhere (a disk error, two runs writing the
    same file) is skipped with a warning naming the file and line; its answer is sampled again. Either way the
    file is rewritten (atomically) without the bad lines, so the warning comes once and appends stay clean.
    """
    data = progress_file.read_bytes()
    lines = data.decode("utf-8", errors="replace").split("\n")
    cut = bool(data) and not data.endswith(b"\n")  # the last line was cut by a kill mid-write
    if cut:
        lines = lines[:-1]
    done: dict[tuple, dict] = {}
    good, bad = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        r = _progress_row(line)
        if r is None:
            bad.append(i)
            continue
        good.append(line)
        done[(r["side"], r["question"], r["system_prompt_index"], r["sample_index"])] = r
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        print(f"wsteer: warning: {progress_file} line {bad[0]}{more} is not a sampled answer (damaged); skipping "
              f"{len(bad)} line(s): those answers are sampled again")
    if cut or bad:
        with atomic_path(progress_file) as tmp:
            tmp.write_text("".join(x + "\n" for x in good))
    return done


def sample_pairs(model, tokenizer, behavior: Behavior, sampling: DictConfig,
                 progress_file: Path | None = None) -> dict[str, list[dict]]:
    """Sample D⁺ and D⁻ rows with the target model itself, resuming from `progress_file` if given.

    A side with `fixed_responses` in the behavior (e.g. refusal's compliant openers, which carry no harmful
    content) takes those texts instead of sampling.
    """
    done: dict[tuple, dict] = {}
    if progress_file is not None and progress_file.is_file():
        done = _read_progress(progress_file)
    rows: dict[str, list[dict]] = {}
    todo: list[tuple[str, tuple]] = []
    for side in SIDES:
        fixed = behavior.fixed_responses(side)
        for job in _jobs(behavior, side, sampling.n_samples):
            q, s_idx, sp, n = job
            if fixed is not None:
                done[(side, q, s_idx, n)] = {**_row(q, s_idx, sp, n, fixed[q], True), "side": side}
            elif (side, q, s_idx, n) not in done:
                todo.append((side, job))
    resumed = len(done) - sum(len(_jobs(behavior, s, sampling.n_samples)) for s in SIDES if behavior.fixed_responses(s))
    if resumed and todo:
        print(f"wsteer: resuming sampling: {resumed} answers on disk, {len(todo)} to go")
    bs = sampling.batch_size
    out = progress_file.open("a") if progress_file is not None else None
    try:
        for start in tqdm(range(0, len(todo), bs), desc="sample D+/D-", unit="batch", disable=not todo):
            chunk = todo[start : start + bs]
            convs = [behavior.eliciting_conversation(side, sp, q) for side, (q, _, sp, _) in chunk]
            # the seed depends on the chunk's first job, so a resumed run samples what a clean run would
            seed = sampling.seed + int(stable_hash([chunk[0][0], chunk[0][1][0], chunk[0][1][1], chunk[0][1][3]], 6), 16)
            outs = generate(model, tokenizer, convs, max_new_tokens=sampling.max_new_tokens,
                            temperature=sampling.temperature, batch_size=bs, seed=seed, progress=False)
            for (side, (q, s_idx, sp, n)), o in zip(chunk, outs, strict=True):
                r = {**_row(q, s_idx, sp, n, o["text"], o["finished"]), "side": side}
                done[(side, q, s_idx, n)] = r
                if out is not None:
                    out.write(json.dumps(r) + "\n")
            if out is not None:
                out.flush()
    finally:
        if out is not None:
            out.close()
    for side in SIDES:
        rows[side] = [{k: v for k, v in done[(side, q, s_idx, n)].items() if k != "side"}
                      for q, s_idx, _, n in _jobs(behavior, side, sampling.n_samples)
                      if done[(side, q, s_idx, n)]["response"].strip()]
    return rows


def judge_and_filter(rows: dict[str, list[dict]], behavior: Behavior, judge) -> tuple[dict[str, list[dict]], dict]:
    """Score every answer with the judge and keep the pairs that pass the persona-vectors rule (paper §1)."""
    verdicts = {}
    for side in SIDES:
        items = [JudgeItem(behavior.name, behavior.description, r["question"], r["response"]) for r in rows[side]]
        verdicts[side] = judge.judge(items)
    if hasattr(judge, "requests_made"):
        print(f"wsteer: judge {judge.name} made {judge.requests_made} request(s) for "
              f"{sum(len(r) for r in rows.values())} answers (the rest came from its verdict cache)")
    th = judge.thresholds
    keep_pos, keep_neg, stats = filter_pairs(rows["pos"], rows["neg"], verdicts["pos"], verdicts["neg"],
                                             th["trait"], th["coherence"],
                                             unscored_means_keep=not getattr(judge, "scores", True))
    kept = {"pos": [rows["pos"][i] for i in keep_pos], "neg": [rows["neg"][i] for i in keep_neg]}
    for side, idx in (("pos", keep_pos), ("neg", keep_neg)):
        for r, i in zip(kept[side], idx, strict=True):
            r["trait_score"], r["coherence_score"] = verdicts[side][i].trait, verdicts[side][i].coherence
    return kept, {**stats, "thresholds": th}


def content_hash(dd: DatasetDict) -> str:
    return stable_hash({s: [[r["question"], r["response"]] for r in dd[s]] for s in SIDES})


ROW_FEATURES = Features({
    "question": Value("string"), "response": Value("string"), "system_prompt": Value("string"),
    "system_prompt_index": Value("int64"), "sample_index": Value("int64"), "finished": Value("bool"),
    "trait_score": Value("float64"), "coherence_score": Value("float64"),
})


def save_pairs(rows: dict[str, list[dict]], folder: Path, manifest: dict) -> None:
    # Fixed features and one shard per split, so a side that the judge emptied still saves and loads.
    dd = DatasetDict({s: Dataset.from_dict({k: [r.get(k) for r in rows[s]] for k in ROW_FEATURES},
                                           features=ROW_FEATURES) for s in SIDES})
    manifest = {**manifest, "counts": {s: len(rows[s]) for s in SIDES}, "data_hash": content_hash(dd),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_path(folder) as tmp:
        dd.save_to_disk(str(tmp), num_shards={s: 1 for s in SIDES})
        write_json(tmp / "manifest.json", manifest)


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


def _cache_note(judge) -> str:
    """` (<what the verdict cache holds>)` for a judge that scored some answers unusably (else empty)."""
    note = getattr(judge, "cache_note", None)
    return f" ({note()})" if note is not None and getattr(judge, "unusable", 0) else ""


def ensure_pairs(cfg: DictConfig, model, tokenizer, behavior: Behavior, fingerprint: str) -> tuple[DatasetDict, dict]:
    """Reuse a stored D±/manifest whose key matches, else sample (resumably), judge, filter and cache it."""
    judge = build_judge(cfg.judge)
    key = data_key(behavior, cfg.sampling, judge.describe(), fingerprint)
    shipped, cached = candidate_folders(cfg, key)
    # one job samples a data set at a time: a second identical job waits, then reuses it (and never appends the
    # same answers to the shared progress file twice)
    with building(cfg.paths.cache_dir, cached, f"D+/D- for {behavior.name}"):
        return _ensure_pairs(cfg, model, tokenizer, behavior, judge, key, shipped, cached)


def _ensure_pairs(cfg, model, tokenizer, behavior: Behavior, judge, key: dict, shipped: Path, cached: Path):
    for folder in (shipped, cached):
        if (folder / "manifest.json").is_file():
            dd, manifest = load_pairs(folder)
            if manifest.get("key") == key:
                print(f"wsteer: reusing D+/D- from {folder} ({manifest['counts']})")
                return dd, {**manifest, "path": str(folder)}
    judge.check_behavior(behavior.name)  # fail before spending time sampling
    sample_key = {k: v for k, v in key.items() if k != "judge"}
    progress = (Path(cfg.paths.cache_dir).expanduser() / "samples" / behavior.name
                / f"{cfg.model.name}-{stable_hash(sample_key, 12)}.jsonl")
    progress.parent.mkdir(parents=True, exist_ok=True)
    n = len(behavior.build_questions) * len(behavior.pos_system_prompts) * cfg.sampling.n_samples
    sampled = [side for side in SIDES if behavior.fixed_responses(side) is None]
    print(f"wsteer: building D+/D-: sampling {'/'.join(sampled) or 'nothing (both sides are fixed text)'} with the "
          f"target model (up to {n} answers per side; progress in {progress})")
    with stop_promptly_on_sigterm({"what": f"sampling D+/D- for {behavior.name}", "kept": progress}):
        raw = sample_pairs(model, tokenizer, behavior, cfg.sampling, progress)
    kept, stats = judge_and_filter(raw, behavior, judge)
    counts = {s: len(kept[s]) for s in SIDES}
    min_kept = cfg.sampling.get("min_kept", MIN_KEPT)
    if min(counts.values()) < min_kept:
        reasons = stats["dropped_reasons"]
        pairs_judged = min(stats["raw"].values())
        if pairs_judged and max(reasons["pos_unscored"], reasons["neg_unscored"]) * 2 > pairs_judged:
            # Most answers got no score at all: the judge is not answering with numbers, whatever the thresholds.
            reply = getattr(judge, "last_unparsed", None)
            raise WsteerError(
                f"judge {judge.name!r} ({judge.model}) gave no usable 0–100 score for most answers (unscored: pos "
                f"{reasons['pos_unscored']}, neg {reasons['neg_unscored']} of {pairs_judged} pairs"
                + (f"; a reply: {reply!r}" if reply else "") + "), so it kept too few pairs (kept "
                f"{counts}). Use a judge model that follows the prompt, fix judge.prompts, or lower "
                "judge.min_numeric_mass if it hedges between numbers" + _cache_note(judge))
        raise WsteerError(
            f"judge {judge.name!r} kept too few pairs: raw {stats['raw']}, kept {counts} (need ≥ {min_kept} per "
            f"side; dropped: {stats['dropped_reasons']}). Raise sampling.n_samples, relax judge.thresholds, or "
            "check the judge endpoint" + _cache_note(judge))
    manifest = {"key": key, "model": cfg.model.path, "behavior_version": behavior.version, "judge": judge.describe(),
                "filter": stats, "command": " ".join(["python", Path(sys.argv[0]).name, *sys.argv[1:]])}
    save_pairs(kept, cached, manifest)
    dd, manifest = load_pairs(cached)
    return dd, {**manifest, "path": str(cached)}
