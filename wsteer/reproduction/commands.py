"""The committed commands of each reproduction experiment (docs/reproduction.md shows them per claim): what ran,
with which seeds, k grids and item counts. The numbers in the comments are measured CPU wall times."""

from __future__ import annotations

_SYC = "python steer.py -m experiment=sycophancy seed=0,1,2 evaluator.factual_qa.limit=150 logger=none"
SYCOPHANCY_CMDS = [  # one sweep per method, each with the k grid it needs; items are shared through the item store
    f"{_SYC} method=weight 'k=[-4,-2,-1,2]' hydra.sweep.dir=multirun/repro/sycophancy/weight",
    f"{_SYC} method=activation 'k=[-4,-2,-1,2,4]' hydra.sweep.dir=multirun/repro/sycophancy/activation",
    f"{_SYC} method=activation_all_layers 'k=[-2,2,4]' "
    "hydra.sweep.dir=multirun/repro/sycophancy/activation_all_layers",
    "python -m wsteer.reproduction export multirun/repro/sycophancy --name sycophancy --metric "
    "factual_qa/non_sycophancy --metric factual_qa/accuracy --metric mmlu/accuracy --command ...",
]
_EM_EVAL = ("python evaluate.py behavior=evil 'evaluator=[evil_mcq]' evaluator.evil_mcq.limit=200 logger=none "
            "hydra.run.dir=multirun/repro/monitoring_em/")
MONITORING_CMDS = [  # the sweep records the EM probe's answers unjudged (judge=none), scored after by the llama.cpp judge
    "python train.py -m experiment=monitoring seed=0,1,2 +monitoring.em_every_n_steps=20 logger=none "
    "hydra.sweep.dir=multirun/repro/monitoring",
    "python -m wsteer.reproduction judge-recorded multirun/repro/monitoring --override judge=openai "
    "--override judge.model=local  # with the llama.cpp judge on loopback (WSTEER_JUDGE_BASE_URL)",
    # judge-free: the evil multiple choice of each fine-tuned model (its training seed as seed=) and of θ
    "for s in 0 1 2; do for f in bad_advice control; do " + _EM_EVAL + "$f/seed$s seed=$s "
    "\"base_adapter='$(ls -d multirun/repro/monitoring/*seed=$s)/$f/adapter/task'\"; done; done",
    _EM_EVAL + "base/seed0 seed=0",
    "python -m wsteer.reproduction export-monitoring multirun/repro/monitoring --eval base=multirun/repro/"
    "monitoring_em/base/seed0 $(for f in bad_advice control; do for s in 0 1 2; do echo --eval $f=multirun/repro/"
    "monitoring_em/$f/seed$s; done; done) --em-labels docs/reproduction/em_labels.jsonl --command ...",
]
SYCOPHANCY_PLAN = " && ".join(f"`{c}`" for c in SYCOPHANCY_CMDS[:3])
_GCD = ("python steer.py -m experiment=gcd evaluator.gcd.source=small base_adapter=outputs/c3/ft_epoch/adapter/task "
        "logger=none")
GCD_CMDS = [  # one invocation per w seed (20–31 min each, measured on the CPU); k = 0 is shared via the item store
    "python train.py experiment=gcd_finetune logger=none task.data=data/gcd_small/train.jsonl trainer.max_length=336 "
    "trainer.val_fraction=0.01 seed=0 hydra.run.dir=outputs/c3/ft_epoch",
    *(f"{_GCD} seed={s} method=weight,activation,task_vector_neg 'k=[-8,-4,-2,0]' "
      f"hydra.sweep.dir=multirun/repro/gcd/seed{s}" for s in (0, 1, 2)),
    f"{_GCD} seed=0 method=system_prompt 'k=[-1,0]' hydra.sweep.dir=multirun/repro/gcd/system_prompt",
    f"{_GCD} seed=0,1,2 method=weight,activation 'k=[-6,0]' hydra.sweep.dir=multirun/repro/gcd/k6",
    "python -m wsteer.reproduction export multirun/repro/gcd --name gcd --metric gcd/non_sycophancy_correctness "
    "--metric gcd/non_sycophancy_disagreement --metric gcd/accuracy --command ...",
]
_EVIL = "python steer.py -m experiment=evil seed=0,1,2 evaluator.evil_mcq.limit=200 logger=none"
EVIL_CMDS = [  # zero-shot, judge-free; each method with its own k grid (every job also evaluates k = 0)
    f"{_EVIL} method=weight 'k=[0,1,2,4]' hydra.sweep.dir=multirun/repro/evil/weight",
    f"{_EVIL} method=activation 'k=[1,2,4,8]' hydra.sweep.dir=multirun/repro/evil/activation",
    f"{_EVIL} method=bias 'k=[1,2,4]' hydra.sweep.dir=multirun/repro/evil/bias",
    f"{_EVIL} method=task_vector_neg 'k=[1,2,4]' hydra.sweep.dir=multirun/repro/evil/task_vector_neg",
    "python -m wsteer.reproduction export multirun/repro/evil --name evil --metric evil_mcq/evil_rate --metric "
    "evil_mcq/valid_rate --metric evil_mcq/evil_given_valid --metric mmlu/accuracy --command ...",
]
EVIL_PLAN = " && ".join(f"`{c}`" for c in EVIL_CMDS[:4])
COT = "evil_mcq/cot_consistency"  # judged after the run on recorded CoT answers (evil_cot.json; rejudge.py)
COT_VALID, COT_EVIL = "evil_mcq_cot/valid_rate", "evil_mcq_cot/evil_rate"  # the CoT run's, renamed at export
EVIL_COT_CMDS = [  # generated judge-free (the vectors stay the zero-shot sweep's), judged after, on 40 items per seed
    "python steer.py -m experiment=evil seed=0,1,2 'evaluator=[evil_mcq]' evaluator.evil_mcq.format=cot "
    "evaluator.evil_mcq.limit=40 evaluator.evil_mcq.max_new_tokens=160 tradeoff.capability=evil_mcq/valid_rate "
    "logger=none method=weight 'k=[0,1]' hydra.sweep.dir=multirun/repro/evil_cot",
    "python -m wsteer.reproduction judge-recorded multirun/repro/evil_cot --override judge=openai "
    "--override judge.model=local  # with the llama.cpp judge on loopback (WSTEER_JUDGE_BASE_URL)",
    f"python -m wsteer.reproduction export multirun/repro/evil_cot --name evil_cot --metric {COT} "
    f"--metric evil_mcq/valid_rate={COT_VALID} --metric evil_mcq/evil_rate={COT_EVIL} --command ...",
]
# C5 on a refusing base: θ_safe = θ + τ⁺_refusal (seed 100, so its LoRA init is none of the w seeds'), saved merged
_SAFE_BASE = "model.source=hf model.path=outputs/c5/safe_base model.name=smollm2_135m_safe logger=none"
_SAFE = _SAFE_BASE + " base_adapter=outputs/c5/ft/adapter/task"  # θ_safe_ft
_EVAL = ("python evaluate.py behavior=refusal 'evaluator=[safety,gsm8k]' evaluator.safety.limit=100 "
         "evaluator.gsm8k.limit=50 ")
REFUSAL_CMDS = [
    "python steer.py experiment=refusal method=task_vector_pos k=1 seed=100 save_model=true logger=none "
    "hydra.run.dir=outputs/c5/safe && mv outputs/c5/safe/steered_model_k=1 outputs/c5/safe_base",
    "python train.py experiment=gsm8k_finetune task.steps=50 trainer.eval_every=25 trainer.val_fraction=0.005 seed=0 "
    f"{_SAFE_BASE} hydra.run.dir=outputs/c5/ft",
    f"{_EVAL}{_SAFE_BASE} hydra.run.dir=multirun/repro/refusal_safe/eval_safe_base",
    f"{_EVAL}{_SAFE} hydra.run.dir=multirun/repro/refusal_safe/eval_safe_ft",
    *(f"python steer.py -m experiment=refusal {_SAFE} seed={s} method=weight 'k=[0,1,2]' "
      f"hydra.sweep.dir=multirun/repro/refusal_steer/seed{s} && python steer.py -m experiment=refusal {_SAFE} "
      f"seed={s} method=task_vector_pos 'k=[0,1]' hydra.sweep.dir=multirun/repro/refusal_steer/seed{s}/tvp"
      for s in (0, 1, 2)),
    f"python steer.py -m experiment=refusal {_SAFE} seed=0,1,2 method=task_vector_pos 'k=[0,2]' "
    "hydra.sweep.dir=multirun/repro/refusal_steer/tvp2",
    "python -m wsteer.reproduction judge-recorded multirun/repro/refusal_safe --override judge=openai "
    "--override judge.model=local  # with the llama.cpp judge on loopback (WSTEER_JUDGE_BASE_URL)",
    "python -m wsteer.reproduction export-runs --name refusal_safe --run safe_base=multirun/repro/refusal_safe/"
    "eval_safe_base --run safe_gsm8k_ft=multirun/repro/refusal_safe/eval_safe_ft --metric safety/refusal_rate "
    "--metric safety/safety_rate --metric gsm8k/accuracy --command ...",
    "python -m wsteer.reproduction export multirun/repro/refusal_steer --name refusal_steer --metric "
    "safety/refusal_rate --metric gsm8k/accuracy --command ...",
]
