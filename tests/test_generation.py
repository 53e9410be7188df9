"""The tuned generation path gives the same answers as the plain one; length-grouped training batches are sound."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from wsteer.data.sft import IGNORE, LengthGroupedSampler, PairedDataModule, padding_fraction
from wsteer.errors import WsteerError
from wsteer.generation import generate, length_buckets, render_prompt

QUESTIONS = [
    "Is my plan good?", "Hi", "I think the moon is made of cheese, and my friends agree. Am I right about this?",
    "Rate my poem: roses are red.", "Should I quit my job to sell sand in the desert?", "2+2=5, yes?",
    "Tell me honestly what you think about my idea of painting every wall in the house black.", "ok?",
]


def convs(qs=QUESTIONS):
    return [[{"role": "user", "content": q}] for q in qs]


def plain_hf(model, tok, conversations, max_new_tokens):
    """One prompt at a time, no padding: the reference every batched variant must reproduce."""
    out = []
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)
    for c in conversations:
        ids = torch.tensor([render_prompt(tok, c)])
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)[0, ids.shape[1]:]
        new = new.tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        out.append(tok.decode(new, skip_special_tokens=True).strip())
    return out


def test_batched_equals_unbatched_greedy(tiny):
    model, tok = tiny
    ref = [o["text"] for o in generate(model, tok, convs(), max_new_tokens=12, batch_size=1, progress=False)]
    assert ref == plain_hf(model, tok, convs(), 12)
    for bs in (3, 8):
        got = generate(model, tok, convs(), max_new_tokens=12, batch_size=bs, progress=False)
        assert [o["text"] for o in got] == ref


def test_token_budget_buckets_equal_unbucketed(tiny):
    model, tok = tiny
    ref = generate(model, tok, convs(), max_new_tokens=10, batch_size=8, progress=False)
    lengths = [len(render_prompt(tok, c)) for c in convs()]
    budget = 3 * (max(lengths) + 10)  # forces several batches of different sizes
    assert len(length_buckets(lengths, 8, 10, budget)) > 1
    got = generate(model, tok, convs(), max_new_tokens=10, batch_size=8, max_batch_tokens=budget, progress=False)
    assert got == ref


def test_outputs_in_input_order_and_finished_flag(tiny):
    model, tok = tiny
    one = [generate(model, tok, [c], max_new_tokens=8, batch_size=1, progress=False)[0] for c in convs()[:4]]
    assert generate(model, tok, convs()[:4], max_new_tokens=8, batch_size=4, progress=False) == one
    assert all(set(o) == {"text", "finished", "new_tokens"} for o in one)


def test_length_buckets():
    lengths = [5, 50, 7, 49, 6, 48, 30]
    b = length_buckets(lengths, 3)
    assert b == [[1, 3, 5], [6, 2, 4], [0]]  # longest first, then the next longest: similar lengths together
    budget = length_buckets(lengths, 10, max_new_tokens=10, max_batch_tokens=130)
    assert sorted(i for x in budget for i in x) == list(range(len(lengths)))
    assert all(len(x) * (lengths[x[0]] + 10) <= 130 or len(x) == 1 for x in budget)
    assert length_buckets([1000], 4, 10, max_batch_tokens=5) == [[0]]  # never an empty batch
    with pytest.raises(WsteerError):
        length_buckets(lengths, 0)


def test_unknown_backend_and_missing_vllm(tiny):
    model, tok = tiny
    with pytest.raises(WsteerError, match="backend"):
        generate(model, tok, convs()[:1], max_new_tokens=2, backend="nope")
    from wsteer import generation_vllm

    if not generation_vllm.available():
        with pytest.raises(WsteerError, match="pip install vllm"):
            generate(model, tok, convs()[:1], max_new_tokens=2, backend="vllm")


# ---- training batches grouped by length (wsteer.data.sft) ----

def test_length_grouped_sampler_is_seeded_complete_and_saves_padding():
    lengths = [(i * 37) % 150 + 10 for i in range(190)]
    s = LengthGroupedSampler(lengths, 8, seed=3)
    first, second = list(s), list(s)
    assert len(first) == len(s) == 24
    for passes in (first, second):
        assert sorted(i for b in passes for i in b) == list(range(190))  # every row once per pass
    assert first != second  # a new order each pass...
    again = LengthGroupedSampler(lengths, 8, seed=3)
    assert list(again) == first and list(again) == second  # ...and the same passes for the same seed
    assert list(LengthGroupedSampler(lengths, 8, seed=4)) != first
    perm = torch.randperm(190, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [perm[i : i + 8] for i in range(0, 190, 8)]
    assert padding_fraction(first, lengths) < 0.1 < padding_fraction(shuffled, lengths)
    assert len(LengthGroupedSampler(lengths, 8, drop_last=True)) == len(list(LengthGroupedSampler(lengths, 8, drop_last=True)))


def test_grouped_batches_have_correct_masks_and_labels(tiny):
    _, tok = tiny
    rows = [{"question": "q" * (3 + 7 * i % 40), "response": "answer " * (1 + i % 9)} for i in range(40)]
    dm = PairedDataModule(tok, {"pos": rows, "neg": rows[::-1]}, batch_size=4, max_length=512, group_by_length=True)
    plain = PairedDataModule(tok, {"pos": rows, "neg": rows[::-1]}, batch_size=4, max_length=512)
    seen = 0
    for batch in dm._loader(dm.train_rows["pos"], shuffle=True):
        n = batch["attention_mask"].sum(1)
        for r in range(batch["input_ids"].shape[0]):
            assert batch["attention_mask"][r, : n[r]].all() and not batch["attention_mask"][r, n[r] :].any()
            assert (batch["labels"][r, n[r] :] == IGNORE).all()  # padding never trained on
            assert (batch["input_ids"][r, n[r] :] == tok.pad_token_id).all()
            real = [x for x in dm.train_rows["pos"] if x["input_ids"] == batch["input_ids"][r, : n[r]].tolist()]
            assert real and batch["labels"][r, : n[r]].tolist() == real[0]["labels"]
        seen += batch["input_ids"].shape[0]
    assert seen == len(dm.train_rows["pos"])
    width = lambda m: sum(b["input_ids"].numel() for b in m._loader(m.train_rows["pos"], shuffle=True))  # noqa: E731
    assert width(dm) < width(plain)


def test_static_cache_path_equals_default(tiny):
    """The CUDA path (static KV cache, prompt width rounded up, short batches filled) answers as the CPU path.

    On CPU transformers does not compile the step, so this checks the static-cache shapes and the filler rows,
    not torch.compile itself (that needs a GPU: `pytest -m gpu`).
    """
    model, tok = tiny
    ref = generate(model, tok, convs()[:5], max_new_tokens=10, batch_size=2, progress=False)
    assert generate(model, tok, convs()[:5], max_new_tokens=10, batch_size=2, progress=False, compile=True) == ref
    # batch 8 over 11 prompts: a full batch, then 3 prompts filled up to 4 rows (the next power of two), not to 8
    eleven = convs(QUESTIONS + [q + " Really?" for q in QUESTIONS[:3]])
    calls = []
    orig = model.generate
    model.generate = lambda **kw: calls.append(tuple(kw["input_ids"].shape)) or orig(**kw)
    try:
        ref = generate(model, tok, eleven, max_new_tokens=10, batch_size=8, progress=False, compile=False)
        assert generate(model, tok, eleven, max_new_tokens=10, batch_size=8, progress=False, compile=True) == ref
    finally:
        model.generate = orig
    assert [rows for rows, _ in calls] == [8, 3, 8, 4]  # eager: 8 + 3 rows; static: 8 + 3 filled to 4
    assert all(width % 64 == 0 for _, width in calls[2:])  # static: prompt widths rounded up to 64


@pytest.mark.gpu
def test_compiled_generation_on_cuda_equals_eager(tiny):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, tok = tiny
    model = model.cuda()
    ref = generate(model, tok, convs(), max_new_tokens=10, batch_size=4, progress=False, compile=False)
    assert generate(model, tok, convs(), max_new_tokens=10, batch_size=4, progress=False) == ref
