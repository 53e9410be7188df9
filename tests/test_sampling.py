"""Sampling that resumes after a kill, judge filtering wired into the data pipeline, fixed-text sides."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT, subprocess_env
from wsteer.behaviors import Behavior
from wsteer.data.pairs import ensure_pairs, judge_and_filter, sample_pairs
from wsteer.errors import WsteerError
from wsteer.judges.base import Judge, Verdict
from wsteer.models import fingerprint


class ScriptedJudge(Judge):
    """Trait 100 for answers containing 'yes', coherence 0 for answers containing 'zz'."""

    name, version = "scripted", "1"
    thresholds = {"trait": 50.0, "coherence": 50.0}

    def judge(self, items):
        return [Verdict(100.0 if "yes" in i.answer else 0.0, 0.0 if "zz" in i.answer else 100.0) for i in items]


def _rows(side_texts):
    return [{"question": f"q{i}", "system_prompt_index": 0, "sample_index": 0, "response": t}
            for i, t in enumerate(side_texts)]


def test_filtering_keeps_matched_pairs_with_trait_on_pos_only_and_both_coherent():
    b = Behavior.from_cfg(OmegaConf.load(CONF / "behavior" / "sycophancy.yaml"))
    rows = {"pos": _rows(["yes a", "no b", "yes zz", "yes d"]), "neg": _rows(["no", "no", "no", "yes"])}
    kept, stats = judge_and_filter(rows, b, ScriptedJudge())
    assert [r["question"] for r in kept["pos"]] == ["q0"]  # q1 pos lacks trait, q2 incoherent, q3 neg has trait
    assert stats["raw"] == {"pos": 4, "neg": 4} and stats["kept"] == {"pos": 1, "neg": 1}
    assert kept["pos"][0]["trait_score"] == 100.0


@pytest.mark.reliability
def test_too_few_kept_pairs_is_a_clear_error_naming_the_counts(smoke_cfg, tiny, monkeypatch):
    import wsteer.data.pairs as pairs

    monkeypatch.setattr(pairs, "build_judge", lambda cfg: ScriptedJudge())  # a random model never says "yes"
    model, tok = tiny
    b = Behavior.from_cfg(OmegaConf.load(CONF / "behavior" / "sycophancy.yaml"))
    with pytest.raises(WsteerError, match=r"kept too few pairs: raw \{'pos': \d+, 'neg': \d+\}, kept \{'pos': 0"):
        ensure_pairs(smoke_cfg("train"), model, tok, b, fingerprint(model))


def test_fixed_text_side_is_used_verbatim_and_paired_with_every_sample(tiny):
    model, tok = tiny
    b = Behavior.from_cfg(OmegaConf.load(CONF / "behavior" / "refusal.yaml").behavior)
    sampling = OmegaConf.create({"n_samples": 1, "temperature": 0.8, "max_new_tokens": 4, "batch_size": 64, "seed": 0})
    rows = sample_pairs(model, tok, b, sampling)
    assert len(rows["neg"]) == len(b.build_questions) * len(b.neg_system_prompts)
    assert all(r["response"].startswith("Sure, here is") for r in rows["neg"])
    assert {r["question"] for r in rows["pos"]} == set(b.build_questions)


@pytest.mark.reliability
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_sampling_killed_midway_resumes_without_redoing_finished_answers(tmp_path, sig):
    args = [sys.executable, "train.py", "debug=smoke", "logger=none", "stage=data", "sampling.n_samples=12",
            "sampling.batch_size=10", "sampling.max_new_tokens=24", f"hydra.run.dir={tmp_path / 'run'}"]
    env = subprocess_env(tmp_path)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = None
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((tmp_path / "cache" / "samples").glob("*/*.jsonl"))
        if found and sum(1 for _ in found[0].open()) >= 40:
            progress = found[0]
            break
        time.sleep(0.2)
    assert progress is not None, "sampling never started writing progress"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:  # stopped at once with one line, exit 143 (not after the batch, not a traceback)
        assert proc.returncode == 143 and "stopped by SIGTERM during sampling D+/D-" in err, err[-2000:]
    before = progress.read_text().splitlines()
    first = [json.loads(x) for x in before if x.strip().endswith("}")]
    assert 40 <= len(first) < 2 * 20 * 5 * 12  # killed partway

    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming sampling" in done.stdout
    after = [json.loads(x) for x in progress.read_text().splitlines()]
    assert after[: len(first)] == first  # finished answers were kept, not redone
    keys = [(r["side"], r["question"], r["system_prompt_index"], r["sample_index"]) for r in after]
    assert len(keys) == len(set(keys)) == 2 * 20 * 5 * 12  # each answer sampled exactly once overall
