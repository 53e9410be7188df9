"""The evaluator contract: a LightningModule whose `test_step` answers and scores a batch of items (paper §3).

One `Trainer.test` runs an evaluator on CPU, one GPU, or data-parallel on several: every metric is a torchmetrics
object updated per item and logged with `self.log`, so Lightning reduces it across processes correctly.

An *item* is the unit a metric is defined on: a factual question with its four cue variants (§3.1), a GCD pair
with its query-only and incorrect-solution prompts (§3.2), one scenario (§3.3). Item results (outputs and
per-item scores) are appended to a JSONL store as they finish; a killed evaluation re-run with the same settings
skips the finished items and feeds their stored scores to the metrics, so nothing is generated twice.
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from pathlib import Path

import lightning as L
import torch
from torchmetrics import MeanMetric

from wsteer.artifacts import stable_hash
from wsteer.errors import WsteerError
from wsteer.generation import generate

# A metric no item scored (a judge-only metric under judge=none) is computed as NaN on purpose; see test_step.
warnings.filterwarnings("ignore", message=r".*compute.*method of metric.*was called before the.*update")


class ItemStore:
    """Append-only JSONL of finished items, one file per (settings key, process rank); flushed per batch."""

    def __init__(self, folder: Path, rank: int = 0):
        self.folder = Path(folder)
        self.path = self.folder / f"items.rank{rank}.jsonl"
        self.done: dict[str, dict] = {}
        for f in sorted(self.folder.glob("items.rank*.jsonl")) if self.folder.is_dir() else []:
            for line in f.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.done[rec["id"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue  # the cut-off last line of a killed run: that item is redone

    def add(self, records: list[dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab+") as f:
            if f.seek(0, os.SEEK_END):
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # end a partial line a killed run left behind
            for rec in records:
                f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        for rec in records:
            self.done[rec["id"]] = rec


def stratified_order(items: list[dict], strata: tuple[str, ...], seed: int) -> list[dict]:
    """A seeded order whose every prefix is a stratified sample: the first N items hold each stratum (the item
    fields `strata`, e.g. the question's category) in proportion to its size, within one item.

    Each stratum is shuffled; its r-th item of n gets the position (r + u) / n with u uniform in [0, 1), and the
    items are sorted by position. So `limit=40` is a spread over every category, not the file's first 40 rows (all
    capitals), and a larger limit contains a smaller one (finished items are reused).
    """
    rng = random.Random(f"wsteer-limit-{seed}")
    groups: dict[tuple, list[dict]] = {}
    for it in items:
        groups.setdefault(tuple(str(it.get(f, "")) for f in strata), []).append(it)
    keyed = []
    for members in groups.values():
        members = list(members)
        rng.shuffle(members)
        keyed += [((r + rng.random()) / len(members), it["id"], it) for r, it in enumerate(members)]
    return [it for *_, it in sorted(keyed, key=lambda t: (t[0], t[1]))]


def finite(results: dict) -> dict[str, float]:
    """`Trainer.test` results without the metrics no item scored (NaN)."""
    return {k: float(v) for k, v in results.items() if math.isfinite(float(v))}


class Evaluator(L.LightningModule):
    """Subclasses set `name`, `version`, `metric_names`, and implement `load_items` and `evaluate`.

    `evaluate(items)` returns one record per item: `{"outputs": {...}, "scores": {metric: value or None}}`;
    a `None` score leaves that metric out for the item (e.g. non-sycophancy exists only for questions the model
    answered correctly without a cue, §3.1). A record with `"unusable_verdicts": n > 0` (the judge gave no score
    for n of its answers) is used in this run but not stored, so a fixed endpoint is asked again next time.
    """

    name = "evaluator"
    version = 1  # bump whenever prompts, parsing or scoring change: stored items are keyed by it
    metric_names: tuple[str, ...] = ()
    strata: tuple[str, ...] = ("category",)  # item fields a `limit` sample is stratified by (stratified_order)
    relative_metrics: tuple[str, ...] = ()  # scores that compare an item with its own k = 0 record (relative_to_k0)
    # item fields a `dataset:` file or hub id can fill (field → required; evaluation/sources.py); empty: no dataset=
    dataset_fields: dict[str, bool] = {}

    def __init__(self, limit: int | None = None, seed: int = 0, max_new_tokens: int = 64, batch_size: int = 16,
                 offset: int = 0, dataset: dict | None = None, source: str | None = None, sources: dict | None = None):
        super().__init__()
        if limit is not None and int(limit) < 1:
            raise WsteerError(f"evaluator {self.name}: limit={limit} must be ≥ 1 (or null for all items)")
        if int(offset) < 0:
            raise WsteerError(f"evaluator {self.name}: offset={offset} must be ≥ 0")
        if int(max_new_tokens) < 1 or int(batch_size) < 1:
            raise WsteerError(f"evaluator {self.name}: max_new_tokens and batch_size must be ≥ 1")
        self.limit, self.seed = limit, seed
        # `offset` skips the first items of the stratified order: a search tunes k on items [0, N) and reports on
        # [N, N + limit), so the reported numbers are not the ones k was chosen on (recipes/search.py)
        self.offset = int(offset)
        # the evaluator's own data (a local file or a hub id with a column map) instead of its built-in sources
        self.dataset = {k: (dict(v) if k == "columns" and v else v) for k, v in dict(dataset).items()} if dataset else None
        # the shipped sets, each a dataset node (or a loader) under `sources:` in conf/evaluator/<name>.yaml, and the
        # one `source` picks. Only the name is a setting: the data hash already keys what the set contains.
        self.source, self.sources = source, None
        if source is not None:
            from omegaconf import DictConfig, OmegaConf

            from wsteer.evaluation.sources import shipped_sources

            if isinstance(sources, DictConfig):
                sources = OmegaConf.to_container(sources, resolve=True)
            self.sources = dict(sources) if sources is not None else shipped_sources(type(self).name)
            if source not in self.sources:
                raise WsteerError(f"evaluator {self.name}: unknown source={source!r}; use evaluator.{self.name}.source="
                                  f"{' or '.join(self.sources)} (the sets under `sources:` in its YAML)")
        self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)
        self.metrics = torch.nn.ModuleDict({m: MeanMetric(nan_strategy="ignore") for m in self.metric_names})
        self.data_hash: str | None = None  # of every loaded item, set by items(): part of the item-store key
        self._n_items = 0  # a plain count summed at epoch end: a logged SumMetric is reduced twice under ddp_spawn
        self.lm = None

    # ---- set up by the runner -------------------------------------------------------------------------------
    def bind(self, model, tokenizer, *, steerer=None, k: float = 0.0, judge=None, behavior=None,
             store_folder: str | Path | None = None) -> Evaluator:
        """Attach the run-time objects; `store_folder` keeps finished items (one file per process rank)."""
        # The evaluator borrows the model; it must not own it as a submodule: Lightning moves the module it tests
        # to the CPU when `test` ends (Strategy.teardown), which would carry a GPU model off its card each time.
        self.__dict__["lm"] = model
        self.tokenizer, self.steerer, self.k = tokenizer, steerer, k
        self.judge, self.behavior, self.store_folder = judge, behavior, store_folder
        self.store = None
        return self

    def setup(self, stage: str) -> None:
        # here, not in bind: under data-parallel each process knows its own rank only now
        if self.store_folder is not None:
            self.store = ItemStore(Path(self.store_folder), rank=self.global_rank)

    def settings(self) -> dict:
        """Everything that changes an item's result; part of the store key and the run record."""
        return {"evaluator": self.name, "version": self.version, "limit": self.limit, "seed": self.seed,
                "sample": (f"stratified by {'+'.join(self.strata)}, seed {self.seed}" if self.limit or self.offset
                           else "all") + (f", after the first {self.offset}" if self.offset else ""),
                "max_new_tokens": self.max_new_tokens, "decoding": "greedy",
                **({"dataset": self.dataset} if self.dataset else {})}

    # ---- to implement ---------------------------------------------------------------------------------------
    def load_items(self) -> list[dict]:
        """The items of the shipped set `source` names; an evaluator without shipped sets overrides this."""
        if self.source is None:
            raise NotImplementedError
        return self.source_items(self.source)

    def source_items(self, source: str) -> list[dict]:
        from wsteer.evaluation.sources import load_source

        return load_source(self, self.sources[source])

    def evaluate(self, items: list[dict]) -> list[dict]:
        raise NotImplementedError

    def from_dataset(self, items: list[dict]) -> list[dict]:
        """Items read through `dataset:` (already mapped to `dataset_fields`), normalised as the built-in
        loaders normalise theirs (e.g. answers' aliases as lists)."""
        return items

    # ---- helpers for subclasses -------------------------------------------------------------------------------
    def items(self) -> list[dict]:
        """The items to run: every loaded item, or a seeded stratified sample of `limit` of them. Also records
        the hash of everything loaded, so an edited data file never reuses answers stored for the old one."""
        if self.dataset:
            from wsteer.evaluation.sources import load_items

            items = self.from_dataset(load_items(self.dataset, self.name, self.dataset_fields))
        else:
            items = self.load_items()
        self.data_hash = stable_hash(items)
        if self.limit or self.offset:
            end = self.offset + self.limit if self.limit else None
            items = stratified_order(items, self.strata, self.seed)[self.offset: end]
        if not items:
            raise WsteerError(f"evaluator {self.name} has no items (limit={self.limit}, offset={self.offset}); "
                              "lower the offset or raise the limit")
        return items

    def answer(self, messages: list[list[dict[str, str]]], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers, batched; prompt-level methods (system prompt baseline) edit the conversation here."""
        if self.steerer is not None:
            messages = [self.steerer.conversation(m, self.k) for m in messages]
        outs = generate(self.lm, self.tokenizer, messages, max_new_tokens=max_new_tokens or self.max_new_tokens,
                        batch_size=self.batch_size, progress=False)
        return [o["text"] for o in outs]

    def relative_to_k0(self, record: dict, k0: dict) -> dict:
        """Scores of `relative_metrics` for an item at some k given the same item's record at k = 0."""
        return {}

    def judged(self) -> bool:
        return self.judge is not None and getattr(self.judge, "name", "none") not in ("none",)

    # ---- Lightning ------------------------------------------------------------------------------------------
    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        store = self.store
        todo = [it for it in batch if store is None or it["id"] not in store.done]
        fresh = []
        if todo:
            for item, rec in zip(todo, self.evaluate(todo), strict=True):
                fresh.append({"id": item["id"], "k": self.k, **rec})
            if store is not None:
                # an item whose judge verdict was unusable (a misbehaving endpoint) is scored as missing in this
                # run but never stored: the next run asks the judge again instead of reusing the gap
                store.add([r for r in fresh if not r.get("unusable_verdicts")])
        by_id = {r["id"]: r for r in fresh}
        for item in batch:
            rec = by_id.get(item["id"]) or store.done[item["id"]]
            self._n_items += 1
            for m, v in rec["scores"].items():
                if m in self.metrics and v is not None and math.isfinite(float(v)):
                    self.metrics[m].update(float(v))
        # Every metric is logged on every process, even with no scored item yet: under data-parallel the epoch-end
        # sync is a collective that all processes must join. One with no item anywhere computes NaN (0/0) and
        # `finite()` drops it, so a judge-only metric without a judge is absent rather than NaN or 0.
        for m, metric in self.metrics.items():
            self.log(f"eval/{self.name}/{m}", metric, on_step=False, on_epoch=True, batch_size=len(batch))

    def on_test_epoch_start(self) -> None:
        self._n_items = 0

    def on_test_epoch_end(self) -> None:
        self.log(f"eval/{self.name}/n_items", torch.tensor(float(self._n_items)), sync_dist=True, reduce_fx="sum")

    def configure_optimizers(self):  # evaluation only
        return None
