"""The reproduction report: the paper's claims checked on committed per-item results (docs/reproduction.md).

- `data.py`: export a finished `steer.py` multirun to a small JSON of per-seed, per-k, per-item scores; load it.
- `claims.py`: each claim of the paper as paired differences with the sign the paper predicts, and the verdict;
  `commands.py`: the committed commands that ran each experiment.
- `monitoring.py`: C6's results across training seeds (cosines, curves, EM answers); `em.py`: its emergent-
  misalignment table.
- `report.py`: the document, its figures and the README's verdict table, regenerated from the JSON alone.
- `runs.py`: read one finished evaluate.py run (used by `data.export_runs` and the C6 export).
- `rejudge.py`: score recorded answers with a judge after the run (`judge-recorded`); `judge_check.py`: what a judge
  can tell, on hand-labelled cases (`judge-check`).

    python -m wsteer.reproduction export multirun/steer/repro-sycophancy --name sycophancy \\
        --metric factual_qa/non_sycophancy --metric factual_qa/accuracy --command "python steer.py -m ..."
    python -m wsteer.reproduction build
"""
