"""On-policy data and SFT rows: system prompt stripped, loss on assistant tokens only, clear errors."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF
from wsteer.behaviors import Behavior
from wsteer.data.pairs import ensure_pairs, load_pairs, trim_unfinished
from wsteer.data.sft import IGNORE, PairedDataModule, tokenize_example
from wsteer.errors import WsteerError
from wsteer.models import fingerprint


def _behavior():
    return Behavior.from_cfg(OmegaConf.load(CONF / "behavior" / "sycophancy.yaml"))


def test_sycophancy_behavior_has_40_distinct_questions_and_5_plus_5_prompts():
    b = _behavior()
    assert len(b.build_questions) == len(b.heldout_questions) == 20
    assert len(set(b.build_questions + b.heldout_questions)) == 40
    assert len(b.pos_system_prompts) == len(b.neg_system_prompts) == 5


@pytest.mark.reliability
def test_a_question_in_both_splits_is_refused():
    d = OmegaConf.to_container(OmegaConf.load(CONF / "behavior" / "sycophancy.yaml"))
    d["heldout_questions"][0] = d["build_questions"][3]
    with pytest.raises(WsteerError, match="both build and held-out"):
        Behavior.from_cfg(d)


def test_loss_is_on_the_assistant_answer_only(tiny):
    _, tok = tiny
    row = tokenize_example(tok, "Is the sky green?", "No, it is blue.", max_length=512)
    labels = [t for t in row["labels"] if t != IGNORE]
    assert tok.decode(labels) == "No, it is blue.<|im_end|>\n"
    n_prompt = row["labels"].index(labels[0])
    assert tok.decode(row["input_ids"][:n_prompt]).endswith("<|im_start|>assistant\n")
    assert "Is the sky green?" in tok.decode(row["input_ids"][:n_prompt])


def test_a_prompt_longer_than_max_length_is_dropped_not_trained_on_empty_labels(tiny):
    _, tok = tiny
    assert tokenize_example(tok, "x" * 400, "ok", max_length=128) is None


def test_trim_unfinished_cuts_back_to_the_last_full_sentence():
    assert trim_unfinished("That is a bold plan. But you should also consider the ri") == "That is a bold plan."
    assert trim_unfinished("no sentence end here") == "no sentence end here"


def test_sampler_writes_both_sides_with_manifest_and_training_rows_drop_the_system_prompt(smoke_cfg, tiny):
    cfg = smoke_cfg("train")
    model, tok = tiny
    b = _behavior()
    dd, manifest = ensure_pairs(cfg, model, tok, b, fingerprint(model))
    n = len(b.build_questions) * len(b.pos_system_prompts) * cfg.sampling.n_samples
    assert manifest["counts"]["pos"] <= n and manifest["counts"]["pos"] > 0
    assert manifest["key"]["model_fingerprint"] == fingerprint(model)
    assert manifest["key"]["prompts_hash"] == b.prompts_hash()
    assert set(dd["pos"]["system_prompt"]) <= set(b.pos_system_prompts)
    assert set(dd["neg"]["question"]) <= set(b.build_questions)  # held-out questions never sampled
    # reuse: same key -> same folder, nothing resampled
    dd2, manifest2 = ensure_pairs(cfg, model, tok, b, fingerprint(model))
    assert manifest2["data_hash"] == manifest["data_hash"]
    dm = PairedDataModule(tok, {s: list(dd[s]) for s in ("pos", "neg")}, batch_size=4, max_length=512)
    text = tok.decode(dm.train_rows["pos"][0]["input_ids"])
    assert not any(sp in text for sp in b.pos_system_prompts)
    assert b.demonstration["user"] not in text


@pytest.mark.reliability
def test_unreadable_dataset_folder_gives_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(WsteerError, match="unreadable"):
        load_pairs(tmp_path)
    with pytest.raises(WsteerError, match="no manifest"):
        load_pairs(tmp_path / "missing")
