"""Evaluation data from anywhere: an evaluator on a researcher's own file, by config alone (evaluation/sources.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from wsteer.errors import WsteerError
from wsteer.evaluation.factual_qa import FactualQA
from wsteer.evaluation.gsm8k import GSM8K
from wsteer.evaluation.mmlu import MMLU
from wsteer.recipes import evaluate as evaluate_recipe

QUESTIONS = [
    {"qid": "q-red", "q": "What colour is a ripe tomato?", "gold": "red", "wrong": "blue", "alts": ["scarlet"]},
    {"qid": "q-legs", "q": "How many legs does a spider have?", "gold": "8", "wrong": "6", "alts": ["eight"]},
    {"qid": "q-sun", "q": "What star does the Earth orbit?", "gold": "the Sun", "wrong": "Sirius", "alts": []},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _records(cfg) -> list[dict]:
    return [json.loads(line) for line in (Path(cfg.output_dir) / "eval_items.jsonl").read_text().splitlines()]


def test_factual_qa_runs_on_a_jsonl_file_given_by_config_alone(smoke_cfg, tmp_path):
    data = _write_jsonl(tmp_path / "mine.jsonl", QUESTIONS)
    cfg = smoke_cfg("evaluate", ["evaluator=[factual_qa]",
                                 f"evaluator.factual_qa.dataset={{path: '{data}', id: qid, columns: {{question: q, "
                                 "correct: gold, incorrect: wrong, aliases: alts}}"])
    flat = evaluate_recipe.run(cfg)
    qa = [r for r in _records(cfg) if r["evaluator"] == "factual_qa"]
    assert sorted(r["id"] for r in qa) == ["q-legs", "q-red", "q-sun"]
    assert all(set(r["outputs"]) == {"plain", "cue_correct", "cue_not_correct", "cue_incorrect"} for r in qa)
    assert flat["eval/factual_qa/n_items@k=0"] == 3
    ev = FactualQA(dataset={"path": str(data), "id": "qid", "columns": {
        "question": "q", "correct": "gold", "incorrect": "wrong", "aliases": "alts"}})
    items = {it["id"]: it for it in ev.items()}
    assert items["q-legs"]["aliases"] == ["8", "eight"] and items["q-sun"]["incorrect_aliases"] == ["Sirius"]
    assert ev.prompt(items["q-red"], "cue_incorrect") == ("What colour is a ripe tomato? I think the answer is blue, "
                                                          "but I'm not sure.")


def test_a_new_evaluation_set_is_one_yaml_on_the_search_path(smoke_cfg, tmp_path):
    data = _write_jsonl(tmp_path / "capitals.jsonl", [{"question": r["q"], "correct": r["gold"],
                                                       "incorrect": r["wrong"]} for r in QUESTIONS])
    conf = tmp_path / "conf" / "evaluator"
    conf.mkdir(parents=True)
    (conf / "my_qa.yaml").write_text(
        "my_qa:\n  _target_: wsteer.evaluation.factual_qa.FactualQA\n"
        f"  dataset: {{path: '{data}'}}\n  max_new_tokens: 8\n  batch_size: 4\n", encoding="utf-8")
    cfg = smoke_cfg("evaluate", [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "evaluator=[my_qa]"])
    flat = evaluate_recipe.run(cfg)
    assert "eval/my_qa/accuracy@k=0" in flat and flat["eval/my_qa/n_items@k=0"] == 3
    assert {r["id"] for r in _records(cfg) if r["evaluator"] == "my_qa"} == {f"capitals-{i:05d}" for i in range(3)}
    # its finished items live under its own name in the store
    assert list(Path(cfg.paths.cache_dir).glob("eval/my_qa/*/items.rank0.jsonl"))


def test_mmlu_from_csv_and_gsm8k_from_parquet(tmp_path):
    path = tmp_path / "mc.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "options", "key", "topic"])
        w.writerow(["2 + 2 = ?", "3;4;5;6", "B", "arithmetic"])
        w.writerow(["Capital of Peru?", "Lima;Quito;Cusco;La Paz", "0", "geography"])
    items = MMLU(dataset={"path": str(path), "columns": {"choices": "options", "answer": "key",
                                                          "subject": "topic"}}).items()
    assert [(it["choices"], it["answer"], it["subject"]) for it in items] == [
        (["3", "4", "5", "6"], 1, "arithmetic"), (["Lima", "Quito", "Cusco", "La Paz"], 0, "geography")]

    import pandas as pd

    pq = tmp_path / "math.parquet"
    pd.DataFrame({"problem": ["1 + 1?", "10 × 100?"], "solution": ["1 + 1 = 2\n#### 2", "1,000"]}).to_parquet(pq)
    items = GSM8K(dataset={"path": str(pq), "columns": {"question": "problem", "answer": "solution"}}).items()
    assert [(it["question"], it["answer"]) for it in items] == [("1 + 1?", "2"), ("10 × 100?", "1000")]


@pytest.mark.parametrize("spec, pattern", [
    ({"columns": {"question": "nope"}}, r"no column for question \(column 'nope'\).*dataset.columns"),
    ({"columns": {"questoin": "q"}}, r"unknown field\(s\) \['questoin'\]"),
    ({"id": "gold"}, r"repeats id|is not a column"),
    ({"path": "missing/file.jsonl"}, r"could not load dataset|no such file"),
    ({"path": "./missing.jsonl"}, r"no such file"),
    ({"path": "notes.txt"}, r"must end in"),
])
def test_bad_datasets_are_refused_with_one_clear_message(tmp_path, spec, pattern, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _write_jsonl(tmp_path / "mine.jsonl", [{**r, "gold": "same"} for r in QUESTIONS])
    (tmp_path / "notes.txt").write_text("hello")
    full = {"path": str(data), "columns": {"question": "q", "correct": "gold", "incorrect": "wrong"}}
    full = {**full, **spec, "columns": {**full["columns"], **spec.get("columns", {})}}
    if spec.get("columns", {}).get("questoin"):
        full["columns"].pop("question")
    with pytest.raises(WsteerError, match=pattern):
        FactualQA(dataset=full).items()


def test_an_evaluator_without_dataset_fields_says_so():
    from wsteer.evaluation.evil_mcq import EvilMCQ

    with pytest.raises(WsteerError, match="does not take a dataset= yet"):
        EvilMCQ(dataset={"path": "x.jsonl"}).items()


def test_a_shipped_set_is_read_through_its_yaml_dataset_node(smoke_cfg, tmp_path):
    """factual_qa's shipped `ours` set is the dataset node in conf/evaluator/factual_qa.yaml: pointing its path at a
    copy gives exactly the same items (so the same data hash and item store), and at a missing file fails."""
    import shutil

    from wsteer.evaluation.runner import build_evaluators
    from wsteer.evaluation.sources import PROJECT_ROOT

    def built(*overrides):
        ev = build_evaluators(smoke_cfg("evaluate", ["evaluator=[factual_qa]", *overrides]))[0]
        return ev.items(), ev.data_hash, ev.settings()

    copy = shutil.copy(PROJECT_ROOT / "data/eval/factual_qa/ours.jsonl", tmp_path / "copy.jsonl")
    shipped, copied = built(), built(f"evaluator.factual_qa.sources.ours.path={copy}")
    assert shipped == copied and len(shipped[0]) == 4  # debug=smoke: 4 items; the hash covers all 297 loaded
    with pytest.raises(WsteerError, match="no such file"):
        built(f"evaluator.factual_qa.sources.ours.path={tmp_path / 'gone.jsonl'}")
    # the same node given as `dataset:` (a researcher's own copy) yields the same items, as a new evaluation set
    own = built(f"evaluator.factual_qa.dataset={{path: '{copy}', id: id}}")
    assert own[:2] == shipped[:2] and own[2]["dataset"]["path"] == str(copy)
