"""Paired LoRA training on two CPU processes with Lightning DDP (gloo), or its one-process reference.

Run by tests/test_ddp.py, not collected by pytest (Lightning's `ddp` launcher re-runs this script once per extra
rank, which it could not do with pytest itself):

    python tests/ddp_worker.py OUT ddp        # PairedModule + PairedDataModule, 2 ranks; each writes OUT/rank<r>
    python tests/ddp_worker.py OUT reference  # one process: the same batches, gradients averaged by hand

Both write the final LoRA weights of both sides. With DDP every rank trains on its own shard and the gradients of
*both* sides must be averaged, so the ranks end identical and equal to the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import get_linear_schedule_with_warmup  # noqa: E402

from wsteer.data.sft import PairedDataModule  # noqa: E402
from wsteer.models import load_model  # noqa: E402
from wsteer.training.paired import LoraPair, PairedModule  # noqa: E402
from wsteer.training.trainer import strategy as _strategy  # noqa: E402

WORLD, STEPS, BATCH, LR = 2, 4, 2, 5e-3
SIDES = ("pos", "neg")


def build():
    torch.manual_seed(0)
    model, tok = load_model(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml"), "/nonexistent", device="cpu")
    adapter = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", "init_seed": 0})
    pair = LoraPair(model, adapter, SIDES)
    # 20 rows per side: 16 train rows (val_fraction 0.2) = 8 per rank = STEPS batches of BATCH, one epoch exactly
    data = {side: [{"question": f"Question {i} for {side}?", "response": f"{side} answer {i * 7 % 13} " * (1 + i % 4)}
                   for i in range(20)] for side in SIDES}
    dm = PairedDataModule(tok, data, batch_size=BATCH, max_length=256, val_fraction=0.2, seed=0)
    return model, pair, dm


def weights(pair) -> dict[str, torch.Tensor]:
    return {f"{side}/{n}": p.detach().clone().contiguous() for side in SIDES for n, p in pair.params(side).items()}


def ddp(out: Path) -> None:
    torch.set_num_threads(1)
    model, pair, dm = build()
    module = PairedModule(model, pair, lr=LR, weight_decay=0.0, warmup_steps=1, total_steps=STEPS, grad_clip=1.0)
    # the strategy train.py builds from trainer.strategy=ddp
    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy=_strategy(OmegaConf.create({"strategy": "ddp"})),
                        max_steps=STEPS * len(SIDES), limit_val_batches=0, num_sanity_val_steps=0,
                        use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    save_file(weights(pair), str(out / f"rank{trainer.global_rank}.safetensors"),
              metadata={"world_size": str(trainer.world_size), "steps": str(module.training_steps_done)})


def reference(out: Path) -> None:
    """What DDP must compute: per step and side, the mean of the two ranks' gradients, then clip, AdamW, schedule."""
    torch.set_num_threads(1)
    model, pair, dm = build()
    batches = {}
    shards = {}
    for rank in range(WORLD):  # the batches each rank draws: the data module's own sharding, rank by rank
        dm.trainer = SimpleNamespace(world_size=WORLD, global_rank=rank)
        shards[rank] = {s: dm._shard(dm.train_rows[s]) for s in SIDES}
        batches[rank] = {s: list(dm._loader(shards[rank][s], shuffle=True)) for s in SIDES}
    for s in SIDES:  # the shards split the rows: disjoint, every row in one, equal sizes (16 rows, 2 ranks)
        ids = [[tuple(r["input_ids"]) for r in shards[rank][s]] for rank in range(WORLD)]
        assert not set(ids[0]) & set(ids[1]) and len(ids[0]) == len(ids[1]) == 8
        assert sorted(ids[0] + ids[1]) == sorted(tuple(r["input_ids"]) for r in dm.train_rows[s])
    opts = {s: torch.optim.AdamW(list(pair.params(s).values()), lr=LR, weight_decay=0.0) for s in SIDES}
    scheds = {s: get_linear_schedule_with_warmup(opts[s], 1, STEPS) for s in SIDES}
    model.train()
    for step in range(STEPS):
        for side in SIDES:
            pair.activate(side)
            for rank in range(WORLD):
                b = batches[rank][side][step]
                loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
                (loss / WORLD).backward()
            torch.nn.utils.clip_grad_norm_(list(pair.params(side).values()), 1.0)
            opts[side].step()
            opts[side].zero_grad(set_to_none=True)
            scheds[side].step()
    save_file(weights(pair), str(out / "reference.safetensors"))


if __name__ == "__main__":
    target, mode = Path(sys.argv[1]), sys.argv[2]
    target.mkdir(parents=True, exist_ok=True)
    {"ddp": ddp, "reference": reference}[mode](target)
