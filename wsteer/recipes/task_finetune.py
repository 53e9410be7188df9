"""Task fine-tunes that give θ_ft (paper §3.2, §3.4), as PEFT adapters to steer with `base_adapter=`.

- `source=task`: one LoRA on task data (JSONL rows with `question` and `response`), the paper's task settings
  (LoRA α 64, LR 2e-4, one epoch; App. B).
- `source=joint`: the Joint baseline: the same task data mixed with D⁻ (e.g. non-sycophantic answers) up-sampled
  `task.upsample` times (paper: 1×–6× for GCD).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

from omegaconf import OmegaConf

from wsteer.artifacts import atomic_path, stable_hash, write_json
from wsteer.data.pairs import ensure_pairs
from wsteer.data.sft import PairedDataModule
from wsteer.errors import WsteerError
from wsteer.models import stays_on_its_device
from wsteer.training.paired import LoraPair, PairedModule, stop_helper_ranks
from wsteer.training.resume import fit_resumably

SIDE = "task"


def load_task_rows(path: str | None) -> list[dict]:
    if not path:
        raise WsteerError("source=task/joint needs task.data=PATH: a JSONL file of {\"question\": ..., \"response\": ...}"
                          " (or \"answer\", as in GSM8K)")
    p = Path(path)
    if not p.is_file():
        raise WsteerError(f"task.data={path} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise WsteerError(f"task.data={path} is not UTF-8 text (byte {e.start} cannot be decoded); give a JSONL file "
                          "of {\"question\": ..., \"response\": ...} saved as UTF-8") from e
    except OSError as e:
        raise WsteerError(f"task.data={path} cannot be read ({e.strerror or e})") from e
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            # "answer" is GSM8K's name for the response (paper §3.4 fine-tunes on GSM8K train as is)
            row = {"question": r["question"], "response": r["response"] if "response" in r else r["answer"]}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise WsteerError(f"{path}:{i} is not a JSON object with question and response ({e})") from e
        for key, value in row.items():
            if not isinstance(value, str) or not value.strip():
                raise WsteerError(f"{path}:{i}: {key} is {value!r} ({type(value).__name__}); every row needs a "
                                  f"non-empty text as {key}: fix or drop line {i}")
        rows.append(row)
    if len(rows) < 4:
        raise WsteerError(f"{path} has {len(rows)} rows; a task fine-tune needs at least 4")
    return rows


def task_checkpoint_path(ctx, source: str, data_path: str, extra: dict | None = None) -> Path:
    """Where a task (or joint) fine-tune keeps its resume checkpoint: keyed by everything that shapes the training
    (base model, source, the task file's bytes, task and trainer settings, the seed; for joint also D⁻), so the
    same command finds it whatever Hydra's run dir is, and any change starts fresh."""
    cfg = ctx.cfg
    data_hash = hashlib.sha256(Path(data_path).read_bytes()).hexdigest()[:16]
    key = {"source": source, "data": data_hash, "task": OmegaConf.to_container(cfg.task, resolve=True),
           "trainer": OmegaConf.to_container(cfg.trainer, resolve=True), "seed": cfg.seed, **(extra or {})}
    key["task"].pop("data", None)  # the path does not matter, its content does
    return (Path(cfg.paths.cache_dir).expanduser() / "checkpoints" / "task" / f"{cfg.model.name}-{ctx.fingerprint[:12]}"
            / source / stable_hash(key, 12) / "last.ckpt")


def train_task(ctx, source: str, make_trainer, run=None) -> tuple[Path, dict]:
    """Train the task (or joint) LoRA; save it as a PEFT adapter folder in the run dir; return (folder, summary)."""
    cfg, task = ctx.cfg, ctx.cfg.task
    rows = load_task_rows(task.data)
    n_task = len(rows)
    extra = {}
    if source == "joint":
        pairs, data_manifest = ensure_pairs(cfg, ctx.model, ctx.tokenizer, ctx.behavior, ctx.fingerprint)
        rows = rows + [{"question": r["question"], "response": r["response"]} for r in pairs["neg"]] * int(task.upsample)
        extra = {"pairs": data_manifest.get("data_hash")}
    resume = task_checkpoint_path(ctx, source, task.data, extra)
    dm = PairedDataModule(ctx.tokenizer, {SIDE: rows}, batch_size=task.batch_size, max_length=cfg.trainer.max_length,
                          val_fraction=cfg.trainer.val_fraction, seed=cfg.seed,
                          group_by_length=bool(cfg.trainer.get("group_by_length", False)))
    # under DDP each step takes batch_size rows on every rank: an epoch is rows / (batch_size × world size) steps
    world = make_trainer(ctx, None, max_steps=1, val_every=1).world_size
    steps = task.steps or math.ceil(len(dm.train_rows[SIDE]) / (task.batch_size * world)) * task.epochs
    pair = LoraPair(ctx.model, task.adapter, [SIDE])
    module = PairedModule(ctx.model, pair, lr=task.lr, weight_decay=cfg.trainer.weight_decay,
                          warmup_steps=cfg.trainer.warmup_steps, total_steps=steps, grad_clip=cfg.trainer.grad_clip)
    try:  # the base model must come back clean even if training fails
        with stays_on_its_device(ctx.model):  # Lightning leaves the module it trained on the CPU
            trainer = make_trainer(ctx, run, max_steps=steps, val_every=min(cfg.trainer.eval_every, steps),
                                   resume_ckpt=resume)
            t0 = time.perf_counter()
            fit_resumably(trainer, module, dm, resume, f"{source} fine-tune", steps)
            stop_helper_ranks(trainer)
            ctx.timings["train_task"] = time.perf_counter() - t0
            best = module.restore_best()
            folder = ctx.out_dir / "adapter"
            with atomic_path(folder) as tmp:  # a crash mid-save leaves no folder that loads as an adapter
                pair.peft.save_pretrained(str(tmp), selected_adapters=[SIDE])
            adapter = folder / SIDE if (folder / SIDE / "adapter_config.json").is_file() else folder
            shutil.rmtree(resume.parent, ignore_errors=True)  # the adapter is safe on disk: the checkpoint is done
    finally:
        pair.remove()
        ctx.model.eval()
    summary = {"source": source, "task_rows": n_task, "rows": len(rows), "steps": steps, "best": best[SIDE],
               "adapter": str(adapter)}
    write_json(ctx.out_dir / "task_manifest.json", summary)
    print(f"wsteer: {source} fine-tune saved as a PEFT adapter in {adapter}; steer it with base_adapter={adapter}")
    return adapter, summary
