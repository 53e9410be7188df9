"""python -m wsteer.reproduction {export,export-runs,export-monitoring,judge-recorded,judge-check,build}: see
wsteer/reproduction/__init__.py."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from wsteer.errors import WsteerError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wsteer.reproduction", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="keep a finished sweep's per-item scores as docs/reproduction/<name>.json")
    ex.add_argument("sweep_dir")
    ex.add_argument("--name", required=True, help="the experiment's name (the claims name it, e.g. sycophancy)")
    ex.add_argument("--metric", action="append", required=True, help="<evaluator>/<metric>, or <evaluator>/<metric>="
                    "<name>/<metric> to keep it under another name (e.g. a CoT run's evil_mcq/evil_rate=evil_mcq_cot/"
                    "evil_rate beside a zero-shot run's); repeat")
    ex.add_argument("--command", action="append", required=True, help="the command(s) that ran the sweep; repeat")
    ex.add_argument("--notes", default="", help="one paragraph on the setting (reused items, interruptions)")
    ex.add_argument("--out-dir", default="docs/reproduction")
    ex.add_argument("--code-commit", default=None, help="the commit the sweep ran (default: this checkout's)")
    er = sub.add_parser("export-runs", help="keep single evaluate.py runs (e.g. a base and its task fine-tune) as "
                        "the rows <label>@0 of docs/reproduction/<name>.json")
    er.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="repeat")
    er.add_argument("--name", required=True)
    er.add_argument("--metric", action="append", required=True, help="<evaluator>/<metric>; repeat")
    er.add_argument("--command", action="append", required=True, help="the command(s) that made the runs; repeat")
    er.add_argument("--notes", default="")
    er.add_argument("--out-dir", default="docs/reproduction")
    er.add_argument("--code-commit", default=None)
    er.add_argument("--wall-s", type=float, default=None, help="the measured wall time of making the runs")
    em = sub.add_parser("export-monitoring", help="keep a finished monitoring sweep's cosines and curves as "
                        "docs/reproduction/monitoring.json")
    em.add_argument("sweep_dir")
    em.add_argument("--command", action="append", required=True, help="the command(s) that ran the sweep; repeat")
    em.add_argument("--notes", default="")
    em.add_argument("--cache-dir", default="~/.cache/wsteer", help="where the sweep's vectors are cached")
    em.add_argument("--out-dir", default="docs/reproduction")
    em.add_argument("--code-commit", default=None, help="the commit the sweep ran (default: this checkout's)")
    em.add_argument("--eval", action="append", default=[], metavar="LABEL=DIR", help="a judge-free evaluate.py run "
                    "of a fine-tuned model (base_adapter=<job>/<fine-tune>/adapter/task; seed= its training seed), "
                    "e.g. --eval bad_advice=multirun/repro/monitoring_em/bad_advice/seed0; repeat")
    em.add_argument("--em-labels", default=None, help="hand labels of the EM probe's answers (JSONL: seed, finetune, "
                    "question, label 0/1), e.g. docs/reproduction/em_labels.jsonl")
    jr = sub.add_parser("judge-recorded", help="score the recorded CoT (evil_mcq format=cot) and safety answers of "
                        "a finished run or sweep, and a monitoring run's EM probe answers, with a judge, in place (the "
                        "judge-free file is kept)")
    jr.add_argument("sweep_dir")
    jr.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides that pick the judge, e.g. --override judge=openai --override "
                    "judge.model=local; repeat")
    jc = sub.add_parser("judge-check", help="score hand-labelled cases with a judge: what it can and cannot tell")
    jc.add_argument("--cases", default="docs/reproduction/judge_cases.jsonl")
    jc.add_argument("--out", default="docs/reproduction/judge_check.json")
    jc.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="as for judge-recorded")
    jc.add_argument("--command", default=None, help="the command line to record (default: this one)")
    bd = sub.add_parser("build", help="regenerate docs/reproduction.md, its figures and the README table")
    bd.add_argument("--doc", default="docs/reproduction.md")
    bd.add_argument("--data-dir", default="docs/reproduction")
    bd.add_argument("--readme", default="README.md")
    args = p.parse_args(argv)
    try:
        if args.cmd == "export":
            from wsteer.reproduction.data import export

            out = export(args.sweep_dir, Path(args.out_dir) / f"{args.name}.json", args.name, args.metric,
                         args.command, args.notes, args.code_commit)
            print(f"wsteer: wrote {out}")
        elif args.cmd == "export-runs":
            from wsteer.reproduction.data import export_runs

            bad = [r for r in args.run if "=" not in r]
            if bad:
                raise WsteerError(f"--run {bad[0]!r}: write LABEL=DIR, e.g. --run base=outputs/eval/base")
            runs = dict(r.split("=", 1) for r in args.run)
            out = export_runs(runs, Path(args.out_dir) / f"{args.name}.json", args.name, args.metric, args.command,
                              args.notes, args.code_commit, args.wall_s)
            print(f"wsteer: wrote {out}")
        elif args.cmd == "export-monitoring":
            from wsteer.reproduction.monitoring import export_monitoring

            bad = [r for r in args.eval if "=" not in r]
            if bad:
                raise WsteerError(f"--eval {bad[0]!r}: write LABEL=DIR, e.g. --eval control=multirun/x/control/seed0")
            out = export_monitoring(args.sweep_dir, Path(args.out_dir) / "monitoring.json", args.command,
                                    args.notes, args.cache_dir, args.code_commit,
                                    [tuple(r.split("=", 1)) for r in args.eval], args.em_labels)
            print(f"wsteer: wrote {out}")
        elif args.cmd == "judge-recorded":
            from wsteer.reproduction.rejudge import compose_judge, judge_recorded

            counts = judge_recorded(args.sweep_dir, compose_judge(args.override))
            print(f"wsteer: judged {counts['judged']} recorded answers in {counts['jobs']} jobs "
                  f"({counts['unusable']} without a usable score)")
            if counts["em_answers"]:
                print(f"wsteer: judged {counts['em_answers']} EM probe answers ({counts['em_unusable']} without a "
                      "usable trait and coherence score)")
            if counts["unmatched"]:
                print(f"wsteer: warning: {counts['unmatched']} recorded answers match no item of their evaluator's "
                      "current data and were not judged (the data file changed since the run)", file=sys.stderr)
        elif args.cmd == "judge-check":
            from wsteer.reproduction.judge_check import run
            from wsteer.reproduction.rejudge import compose_judge

            command = args.command or "python -m wsteer.reproduction " + shlex.join(sys.argv[1:] if argv is None else argv)
            out = run(compose_judge(args.override), args.cases, args.out, command)
            print(f"wsteer: wrote {out}")
        else:
            from wsteer.reproduction.report import build

            build(Path(args.doc), Path(args.data_dir), Path(args.readme) if args.readme else None)
            print(f"wsteer: wrote {args.doc}")
    except WsteerError as e:
        print(f"wsteer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
