"""Supervised fine-tuning rows: chat-templated question → answer, loss on the assistant tokens only."""

from __future__ import annotations

import random
from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from wsteer.errors import WsteerError

IGNORE = -100


def tokenize_example(tokenizer, question: str, response: str, max_length: int,
                     system: str | None = None) -> dict[str, list[int]] | None:
    """Token ids, labels and a response mask for one (question, response) pair.

    Training data strips the system prompt (paper §1): `system=None` keeps only the chat template's own default
    system message (SmolLM2 and Qwen inject one), exactly as at inference without a system prompt. Activation
    collection passes the eliciting `system` prompt (persona-vectors recipe). Prompt tokens are masked out of
    the loss; `response_mask` marks the answer's own tokens (not the end-of-turn markers). Returns None when the
    prompt alone fills `max_length` (no answer token would be trained).
    """
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt):
        raise WsteerError("the tokenizer's chat template does not render the prompt as a prefix of the full chat")
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    rest = tokenizer(full[len(prompt) :], add_special_tokens=False).input_ids
    n_answer = len(tokenizer(response, add_special_tokens=False).input_ids) if response else 0
    if len(p_ids) >= max_length:
        return None
    ids = (p_ids + rest)[:max_length]
    labels = [IGNORE] * len(p_ids) + ids[len(p_ids) :]
    mask = [0] * len(p_ids) + [1] * min(n_answer, len(rest)) + [0] * max(len(rest) - n_answer, 0)
    return {"input_ids": ids, "labels": labels, "response_mask": mask[: len(ids)]}


def collate(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
        response[i, :n] = torch.tensor(r["response_mask"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "response_mask": response}


def split_rows(rows: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle with a fixed seed and hold out `val_fraction` (at least one row) for validation."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_val = max(1, round(len(rows) * val_fraction))
    if len(rows) - n_val < 1:
        raise WsteerError(f"only {len(rows)} example(s): too few to hold out a validation split and still train")
    return rows[n_val:], rows[:n_val]


class LengthGroupedSampler(Sampler[list[int]]):
    """Batches of similar-length rows, in a seeded random order: little padding, same randomness as shuffling.

    Each pass shuffles all rows, cuts the shuffled list into windows of `window` batches, sorts each window by
    length (longest first) and cuts it into batches, then shuffles the order of the batches. Rows of a batch are
    therefore close in length (padding is computed per batch by `collate`), while which rows meet in a batch and
    the order of the batches stay random. Pass p uses `seed + p`, so the batches of every pass are a function of
    the seed alone (a rerun trains on exactly the same batches). Masks and labels are unchanged: `collate` pads
    each row on the right and masks the padding out of attention and loss, as without grouping.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, window: int = 50,
                 drop_last: bool = False):
        if batch_size < 1:
            raise WsteerError(f"batch_size must be a positive integer; got {batch_size}")
        self.lengths, self.batch_size, self.seed, self.window = list(lengths), batch_size, seed, window
        self.drop_last = drop_last
        self.passes = 0  # each __iter__ is one pass over the data (CombinedLoader re-iterates a shorter side)

    def batches(self, pass_index: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + pass_index)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.window * self.batch_size
        out = []
        for start in range(0, len(order), span):
            # sorted() is stable: equal lengths keep their shuffled order, so ties are random too
            chunk = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            out += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.passes)
        self.passes += 1
        return iter(batches)

    def __len__(self) -> int:
        n, span = len(self.lengths), self.window * self.batch_size
        sizes = [min(span, n - s) for s in range(0, n, span)]  # windows are cut into batches separately
        if self.drop_last:
            return sum(m // self.batch_size for m in sizes)
        return sum(-(-m // self.batch_size) for m in sizes)


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of the token slots of right-padded batches that are padding (what grouping by length saves)."""
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / max(slots, 1)


class PairedDataModule(L.LightningDataModule):
    """Tokenized D⁺ and D⁻ (or any named sides), each with its own 5% validation split.

    Training batches are `{side: batch}` dicts (one batch per side per step); validation yields one
    dataloader per side, in `sides` order. `group_by_length=True` draws training batches from a
    `LengthGroupedSampler` (seeded by `seed`) instead of plain shuffling: less padding, so fewer wasted FLOPs.
    """

    def __init__(self, tokenizer, data: dict[str, list[dict]], *, batch_size: int, max_length: int,
                 val_fraction: float = 0.05, seed: int = 0, with_system: bool = False,
                 group_by_length: bool = False):
        super().__init__()
        self.sides = list(data)
        self.batch_size = batch_size
        self.group_by_length, self.seed = group_by_length, seed
        self.pad_id = tokenizer.pad_token_id
        self.train_rows, self.val_rows = {}, {}
        self.dropped = {}
        for side, rows in data.items():
            tok = [tokenize_example(tokenizer, r["question"], r["response"], max_length,
                                    system=r.get("system_prompt") if with_system else None) for r in rows]
            kept = [t for t in tok if t is not None]
            self.dropped[side] = len(tok) - len(kept)
            if not kept:
                raise WsteerError(f"every {side} prompt is longer than trainer.max_length={max_length} tokens; raise it")
            self.train_rows[side], self.val_rows[side] = split_rows(kept, val_fraction, seed)

    def _loader(self, rows, shuffle: bool) -> DataLoader:
        if shuffle and self.group_by_length:
            sampler = LengthGroupedSampler([len(r["input_ids"]) for r in rows], self.batch_size, seed=self.seed)
            return DataLoader(rows, batch_sampler=sampler, collate_fn=lambda b: collate(b, self.pad_id))
        g = torch.Generator().manual_seed(self.seed)  # the training seed sets the batch order
        return DataLoader(rows, batch_size=self.batch_size, shuffle=shuffle, generator=g,
                          collate_fn=lambda b: collate(b, self.pad_id))

    def train_dataloader(self):
        from lightning.pytorch.utilities import CombinedLoader

        loaders = {s: self._loader(self._shard(self.train_rows[s]), shuffle=True) for s in self.sides}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _shard(self, rows: list[dict]) -> list[dict]:
        """This rank's share of the training rows under DDP (all of them on one device).

        We shard here, not with Lightning's DistributedSampler (the trainer runs with `use_distributed_sampler=False`),
        so the length-grouped sampler works per rank and validation stays whole on every rank: every rank then
        computes the same validation loss and keeps the same best weights. Shards are made equal, cycling rows
        as DistributedSampler pads, because every rank must run the same number of steps.
        """
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        if world == 1:
            return rows
        total = -(-len(rows) // world) * world
        padded = [rows[i % len(rows)] for i in range(total)]
        return padded[trainer.global_rank :: world]

    def val_dataloader(self):
        return [self._loader(self.val_rows[s], shuffle=False) for s in self.sides]

    def all_dataloaders(self):
        """Every row of every side (train and validation), one dataloader per side: for activation means."""
        return [self._loader(self.train_rows[s] + self.val_rows[s], shuffle=False) for s in self.sides]

    def train_tokens(self) -> int:
        return sum(len(r["input_ids"]) for rows in self.train_rows.values() for r in rows)
