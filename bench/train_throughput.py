"""Training tokens/s: our paired-LoRA Lightning training vs a plain PyTorch+PEFT loop vs TRL's SFTTrainer.

Same model, data (the shipped sycophancy D⁺/D⁻), LoRA config (r 32, α 16, all linear layers), batch size, sequence
cap, optimizer (AdamW, linear schedule, grad clip 1) and number of optimizer steps per side. Every system trains
two adapters, one per side, as the paired method needs: ours and the plain loop on one base model in one process
(alternating sides every step), TRL as two trainer runs (it trains one adapter per run). tokens/s counts real
(non-padding) tokens, so padding waste shows up as lost throughput.

    python bench/train_throughput.py                              # CPU, SmolLM2-135M (embedded default)
    python bench/train_throughput.py --device cuda --arch qwen2.5-7b --max-length 512 --steps 20   # GPU PATH

On CUDA the model is bf16 and training runs under bf16 autocast (Lightning `bf16-mixed`); MFU is reported against
the H100's dense bf16 peak with model FLOPs = 4 × matmul parameters per token (forward + input gradients; the
frozen base needs no weight gradients; attention FLOPs are left out, so MFU is slightly understated).

`--precision` picks 32-true (the CPU default), bf16-mixed (autocast; fp32 weights) or bf16-true (bf16 weights) for
every system. Every row also gets its achieved model FLOP/s (`bench.common.training_flops`: 4 × matmul parameters
per real token plus attention, over each row's real length) as a share of this machine's matmul peak, measured in
the same run with a plain `torch.mm` loop at the same dtype and thread count (`bench.common.matmul_peak`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    H100_BF16_DENSE_TFLOPS,
    free,
    load,
    lora_cfg,
    matmul_peak,
    model_shape,
    pairs,
    parser,
    report,
    setup,
    share_of_peak,
    timed,
    training_flops,
)
from wsteer.data.sft import PairedDataModule, collate  # noqa: E402

SIDES = ("pos", "neg")
LR, WD, WARMUP = 3e-4, 0.01, 1


def matmul_params(model) -> int:
    """Parameters used in matmuls per token: every Linear, including the LM head (not the input embedding)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def precision(args) -> str:
    """The Lightning precision every system trains at: `--precision`, or bf16-mixed on CUDA and 32-true on CPU."""
    chosen = getattr(args, "precision", "auto")  # other benches (memory.py) call run_ours with their own args
    if chosen != "auto":
        return chosen
    return "bf16-mixed" if args.device == "cuda" else "32-true"


def load_for(args):
    """The model in the dtype the precision trains it in (bf16-true: bf16 weights; otherwise load()'s default)."""
    return load(args.arch, args.device, torch.bfloat16 if precision(args) == "bf16-true" else None)


def lengths(mask) -> list[int]:
    return [int(n) for n in mask.sum(dim=1)]


def datamodule(tok, args, grouped: bool) -> PairedDataModule:
    return PairedDataModule(tok, pairs(), batch_size=args.batch_size, max_length=args.max_length,
                            val_fraction=0.05, seed=0, group_by_length=grouped)


def run_ours(args, grouped: bool, sides=SIDES, callbacks=()) -> dict:
    import lightning as L

    from wsteer.training.paired import LoraPair, PairedModule

    model, tok = load_for(args)
    dm = datamodule(tok, args, grouped)
    n = matmul_params(model)
    shape = model_shape(model)  # of the base: the LoRA matmuls are a rounding error in the FLOPs
    pair = LoraPair(model, lora_cfg(), sides)
    module = PairedModule(model, pair, lr=LR, weight_decay=WD, warmup_steps=WARMUP, total_steps=args.steps)
    counted = {"tokens": 0, "slots": 0, "lengths": []}

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            for side in sides:
                counted["tokens"] += int(batch[side]["attention_mask"].sum())
                counted["slots"] += batch[side]["attention_mask"].numel()
                counted["lengths"] += lengths(batch[side]["attention_mask"])

    trainer = L.Trainer(max_steps=args.steps * len(sides), limit_val_batches=0, num_sanity_val_steps=0,
                        accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                        precision=precision(args), logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[Count(), *callbacks], default_root_dir=tempfile.mkdtemp(prefix="wsteer-bench-"))
    _, dt = timed(lambda: trainer.fit(module, datamodule=dm), args.device)
    pair.remove()
    return {"seconds": dt, "tokens": counted["tokens"], "padding": 1 - counted["tokens"] / counted["slots"],
            "params": n, "lengths": counted["lengths"], "shape": shape}


def run_plain(args) -> dict:
    """What one writes by hand: PEFT adapters, shuffled padded batches, AdamW per adapter, autocast on GPU."""
    from peft import get_peft_model
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from wsteer.training.paired import lora_config

    model, tok = load_for(args)
    shape = model_shape(model)
    dm = datamodule(tok, args, grouped=False)
    torch.manual_seed(0)
    peft = get_peft_model(model, lora_config(lora_cfg()), adapter_name="pos")
    peft.add_adapter("neg", lora_config(lora_cfg()))
    peft.train()
    opts, scheds, loaders = {}, {}, {}
    for side in SIDES:
        params = [p for n, p in peft.named_parameters() if "lora_" in n and f".{side}." in n]
        for p in params:
            p.requires_grad_(True)
        opts[side] = torch.optim.AdamW(params, lr=LR, weight_decay=WD)
        scheds[side] = get_linear_schedule_with_warmup(opts[side], WARMUP, args.steps)
        g = torch.Generator().manual_seed(0)
        loaders[side] = DataLoader(dm.train_rows[side], batch_size=args.batch_size, shuffle=True, generator=g,
                                   collate_fn=lambda b: collate(b, tok.pad_token_id))
    counted = {"tokens": 0, "lengths": []}
    dev = torch.device(args.device)
    autocast = precision(args) == "bf16-mixed"

    def loop():
        iters = {s: iter(loaders[s]) for s in SIDES}
        for _ in range(args.steps):
            for side in SIDES:
                try:
                    batch = next(iters[side])
                except StopIteration:
                    iters[side] = iter(loaders[side])
                    batch = next(iters[side])
                counted["tokens"] += int(batch["attention_mask"].sum())
                counted["lengths"] += lengths(batch["attention_mask"])
                peft.set_adapter(side)
                with torch.autocast(args.device, dtype=torch.bfloat16, enabled=autocast):
                    loss = peft(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                                labels=batch["labels"].to(dev)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in opts[side].param_groups for p in g["params"]], 1.0)
                opts[side].step()
                opts[side].zero_grad(set_to_none=True)
                scheds[side].step()

    _, dt = timed(loop, args.device)
    return {"seconds": dt, "tokens": counted["tokens"], "lengths": counted["lengths"], "shape": shape}


def run_trl(args) -> dict:
    """TRL SFTTrainer, one run per side, on the same pre-tokenized rows (loss on the answer tokens only)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from wsteer.training.paired import lora_config

    total = {"tokens": 0, "seconds": 0.0, "lengths": []}
    for side in SIDES:
        model, tok = load_for(args)
        total["shape"] = model_shape(model)
        dm = datamodule(tok, args, grouped=False)
        rows = [{"input_ids": r["input_ids"], "completion_mask": [int(x != -100) for x in r["labels"]]}
                for r in dm.train_rows[side]]
        cfg = SFTConfig(output_dir=tempfile.mkdtemp(prefix="wsteer-bench-trl-"), max_steps=args.steps,
                        per_device_train_batch_size=args.batch_size, learning_rate=LR, weight_decay=WD,
                        warmup_steps=WARMUP, lr_scheduler_type="linear", max_grad_norm=1.0,
                        gradient_checkpointing=False, logging_strategy="no", save_strategy="no", eval_strategy="no",
                        report_to=[], use_cpu=args.device == "cpu", bf16=precision(args) == "bf16-mixed",
                        max_length=args.max_length, completion_only_loss=True, packing=False, padding_free=False,
                        dataloader_num_workers=0, disable_tqdm=True, seed=0)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=lora_config(lora_cfg()))
        compute_loss = trainer.compute_loss

        def counting(model, inputs, *a, _f=compute_loss, **kw):
            # counted where a batch is trained on (the collator also sees batches prefetched and never used)
            total["tokens"] += int(inputs["attention_mask"].sum())
            total["lengths"] += lengths(inputs["attention_mask"])
            return _f(model, inputs, *a, **kw)

        trainer.compute_loss = counting
        _, dt = timed(trainer.train, args.device)
        total["seconds"] += dt
    return total


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per side")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--systems", default="plain,ours,ours_grouped,trl")
    p.add_argument("--repeats", type=int, default=1, help="interleaved passes per system; the best is kept")
    p.add_argument("--precision", default="auto", choices=("auto", "32-true", "bf16-mixed", "bf16-true"),
                   help="auto: bf16-mixed on CUDA, 32-true on CPU")
    p.add_argument("--peak-seconds", type=float, default=0.3, help="per shape and repeat of the matmul peak loop")
    args = p.parse_args()
    setup(args)
    best: dict[str, dict] = {}
    for rep in range(args.repeats):  # systems interleaved, best pass kept: load from other jobs only slows a pass
        for system in args.systems.split(","):
            if system == "trl":
                r = run_trl(args)
            elif system == "plain":
                r = run_plain(args)
            else:
                r = run_ours(args, grouped=system == "ours_grouped")
            free(args.device)  # the system's model and optimizer state are garbage now
            r["tok_per_s"] = r["tokens"] / r["seconds"]
            r["model_flops"] = training_flops(r["shape"], r.pop("lengths"))
            if args.device == "cuda" and "params" in r:
                r["mfu"] = 4 * r["params"] * r["tok_per_s"] / (H100_BF16_DENSE_TFLOPS * 1e12)
            print(f"pass {rep}, {system}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "shape"), flush=True)
            if system not in best or r["tok_per_s"] > best[system]["tok_per_s"]:
                best[system] = r
    # The limit, in this run, at the training's dtype and thread count, on the model's own weight shapes with a
    # training batch's rows (batch × sequence cap).
    shape = next(iter(best.values()))["shape"]
    peak = matmul_peak(torch.float32 if precision(args) == "32-true" else torch.bfloat16, torch.get_num_threads(),
                       rows=args.batch_size * args.max_length, shapes=shape["peak_shapes"],
                       min_seconds=args.peak_seconds, device=args.device)
    print(f"matmul peak: {peak['flops'] / 1e9:.1f} GFLOP/s ({peak['dtype']}, {peak['threads']} threads, {peak['shape']})")
    names = {"plain": "plain_torch_peft_loop", "trl": "trl_sfttrainer"}
    rows = []
    for s, r in best.items():
        r.pop("shape")
        achieved = share_of_peak(r.pop("model_flops"), r["seconds"], peak)
        rows.append({"system": names.get(s, s), **r, **achieved})
    report(f"training tokens/s ({args.arch}, {args.device}, {precision(args)}, batch {args.batch_size}, "
           f"≤{args.max_length} tokens, {args.steps} steps × 2 sides)", rows, "plain_torch_peft_loop", "tok_per_s",
           args=args, also_vs="trl_sfttrainer")


if __name__ == "__main__":
    main()
