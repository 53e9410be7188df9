#!/usr/bin/env bash
# Run one stage of the GPU benches on a lent GPU machine (no network), from the repo root:
#
#     bash bench/gpu_run.sh STAGE          # the device tool carrying .whl (built here by bench/gpu_wheels.sh)
#
# Every bench writes its --json, and the stage's whole output is tee'd to STAGE.log, flat in ${OUT:-/tmp/out}.
# Each stage stays under STAGE_BUDGET_S (default 570 s, the tool allows 600 s per command): every bench gets a
# `timeout` of at most what is left of it, so a slow or hung bench cannot take the later ones down, and a failed
# bench does not stop the next one. Times below are estimates for one H100 from the BENCHMARKS.md numbers
# (7B plain loop ≈ 9.2k tok/s, 1.5B ≈ 22k; 7B HF generate at batch 64 ≈ 0.5–1.25k new tok/s unmerged,
# 2.2–2.7k merged, 3.2k static cache) plus ~1 min of torch.compile per new static-cache shape.
#
# Stages (in the order to run them; ≈ 22 min in all, plus ~1–2 min machine start):
#   tests           pytest -m gpu tests/ (compiled vs eager generation on CUDA)                 ≈ 1–2 min
#   train           train_throughput 1.5B then 7B (batch 8, ≤512, 20 steps, 2 repeats)           ≈ 6 min
#   generate-7b     generation 7B (batch 64 / 256, 128 new tokens, warm-up pass + 1 timed pass) ≈ 5 min
#   generate-1.5b   generation 1.5B, same settings                                               ≈ 3 min
#   kswitch_memory  k_switch 7B (5 switches, no suite pass) then memory 7B (5 steps)             ≈ 6–7 min
# Single benches, for reruns: train-1.5b train-7b kswitch memory.
# A 15-minute lease (one call, ≤ 570 s): lease15 = tests, then generation 7B (one pass per system, no ours_big),
# then training 7B (one repeat of plain, ours with random batches as conf/trainer/gpu.yaml, ours grouped, TRL).
# The 2026-12-04 H200 run had no ungrouped `ours` in this stage (it was added after: BENCHMARKS.md).
# lease15b, the second 15-minute lease: the refactored gpu tests, 7B training with random against grouped batches
# (the gpu.yaml default), then big-batch generation (ours_big, batch 256) against merged `generate` with what is left.
# Optional, only with device time left: kswitch_suite = k_switch 7B with the sycophancy suite pass (≈ 8 min: the
# suite's new batch shapes each pay a torch.compile inside the timed pass, see BENCHMARKS.md).
set -uo pipefail
cd "$(dirname "$0")/.."

STAGE=${1:-}
OUT=${OUT:-/tmp/out}
BUDGET=${STAGE_BUDGET_S:-570}
PY=${PY:-python3}
case "$STAGE" in
  tests|train|generate-7b|generate-1.5b|kswitch_memory|train-1.5b|train-7b|kswitch|memory|kswitch_suite|lease15|lease15b) ;;
  *) echo "usage: bash bench/gpu_run.sh {tests|train|generate-7b|generate-1.5b|kswitch_memory|train-1.5b|train-7b|kswitch|memory|kswitch_suite|lease15|lease15b}" >&2
     exit 2 ;;
esac
mkdir -p "$OUT"
LOG="$OUT/$STAGE.log"
START=$(date +%s)
FAILED=()

setup() {
  if [ ! -e /tmp/site/.done ]; then  # once per machine
    if ls .whl/*.whl >/dev/null 2>&1; then
      if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
          .whl/*.whl && touch /tmp/site/.done || echo "WARNING: installing .whl/*.whl failed"
      else  # a venv without pip: the wheels are pure python, so unpacking them is an install
        echo "no pip in $PY: unpacking .whl/*.whl into /tmp/site"
        "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall("/tmp/site") for w in sys.argv[1:]]' .whl/*.whl \
          && touch /tmp/site/.done || echo "WARNING: unpacking .whl/*.whl failed"
      fi
    else
      echo "WARNING: no .whl/*.whl here: run bash bench/gpu_wheels.sh locally and carry .whl"
    fi
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
  export TOKENIZERS_PARALLELISM=false WSTEER_CACHE=/tmp/wsteer-cache
  echo "== stage $STAGE, $(date -u +%FT%TZ), budget ${BUDGET}s, out $OUT"
  nvidia-smi --query-gpu=name,memory.total --format=csv
  "$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0])
import importlib
for name in ("torch", "transformers", "peft", "lightning", "accelerate", "huggingface_hub", "tokenizers", "numpy",
             "pyarrow", "fsspec", "omegaconf", "hydra", "datasets", "trl"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as e:  # report and go on: the bench that needs it will fail on its own
        print(f"{name} MISSING: {type(e).__name__}: {e}")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
}

# bench NAME CAP_S CMD...: run CMD with a timeout of min(CAP_S, what is left of the stage budget); record failures.
bench() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
  local t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 30 ]; then
    echo "== $name: SKIPPED (${left}s left of the stage budget)"; FAILED+=("$name(skipped)"); return
  fi
  echo; echo "== $name (timeout ${t}s): $*"
  local t0=$(date +%s)
  timeout -k 15 "$t" "$@"
  local rc=$?
  echo "== $name: rc $rc after $(( $(date +%s) - t0 ))s"
  [ "$rc" -eq 0 ] || FAILED+=("$name(rc $rc)")
}

train() {  # $1 arch, $2 cap, $3 repeats (2), $4 systems (the bench's default). 144k real tokens per system pass (20 steps × 2 sides × 8 rows × ~450 tokens);
  # 4 systems × 2 repeats, a model load each (TRL: one per side). 1.5B ≈ 1.5–2 min, 7B ≈ 4 min.
  bench "train-$1" "$2" "$PY" bench/train_throughput.py --device cuda --arch "qwen2.5-$1" --batch-size 8 \
    --max-length 512 --steps 20 --repeats "${3:-2}" ${4:+--systems "$4"} --json "$OUT/train_qwen2.5-$1.json"
}

generate() {  # $1 arch, $2 cap, $3 systems (all four). 80 prompts × 128 new tokens = 10k tokens per pass. On CUDA the bench first runs
  # one untimed pass per system (--warmup auto = full), so every static-cache shape is compiled before timing
  # (transformers 5.17 compiles with dynamic=None: after one shape change it recompiles once with dynamic
  # shapes); then one timed pass per system. k·w is merged once, outside the timed passes. 7B ≈ 5 min, 1.5B ≈ 3.
  TORCH_LOGS=recompiles bench "generate-$1" "$2" "$PY" bench/generation.py --device cuda --arch "qwen2.5-$1" \
    --batch-size 64 --big-batch 256 --max-new-tokens 128 --variants 2 --repeats 1 \
    --systems "${3:-hf_generate_peft_unmerged,hf_generate_merged,ours,ours_big}" --json "$OUT/generation_qwen2.5-$1.json"
}

kswitch() {  # $1 cap, $2 suite behavior. 5 switches (bf16: B·A formed on the GPU, ~0.1 s each for 7B), 4
  # steering variants × 2 repeats of 20 prompts × 128 tokens at batch 64, hooks may recompile. ≈ 4–5 min.
  TORCH_LOGS=recompiles bench "kswitch${3:-}" "$1" "$PY" bench/k_switch.py --device cuda --arch qwen2.5-7b \
    --max-new-tokens 128 --batch-size 64 --switches 5 --repeats 2 --suite-behavior "$2" \
    --json "$OUT/kswitch_qwen2.5-7b${3:-}.json"
}

memory() {  # $1 cap. Two child processes (single, paired), each loads 7B and trains 5 steps. ≈ 1.5–2 min.
  bench memory "$1" "$PY" bench/memory.py --device cuda --arch qwen2.5-7b --max-length 512 --steps 5 \
    --json "$OUT/memory_qwen2.5-7b.json"
}

run_stage() {
  setup
  case "$STAGE" in
    tests)          bench tests 480 "$PY" -m pytest -m gpu tests/ -rs -p no:cacheprovider ;;
    train)          train 1.5b 210; train 7b 600 ;;
    train-1.5b)     train 1.5b 600 1 plain,ours,ours_grouped,trl ;;
    train-7b)       train 7b 600 ;;
    generate-7b)    generate 7b 600 ;;
    generate-1.5b)  generate 1.5b 600 ;;
    kswitch_memory) kswitch 400 none; memory 600 ;;
    kswitch)        kswitch 600 none ;;
    memory)         memory 600 ;;
    kswitch_suite)  kswitch 600 sycophancy _suite ;;
    lease15)        bench tests 170 "$PY" -m pytest -m gpu tests/ -rs -p no:cacheprovider
                    generate 7b 230 hf_generate_peft_unmerged,hf_generate_merged,ours
                    train 7b 600 1 plain,ours,ours_grouped,trl ;;
    lease15b)       bench tests 170 "$PY" -m pytest -m gpu tests/ -rs -p no:cacheprovider
                    train 7b 300 1 plain,ours,ours_grouped
                    generate 7b 600 hf_generate_merged,ours_big ;;
  esac
  echo
  if [ "${#FAILED[@]}" -eq 0 ]; then
    echo "== stage $STAGE: all passed in $(( $(date +%s) - START ))s"
  else
    echo "== stage $STAGE: FAILED ${FAILED[*]} ($(( $(date +%s) - START ))s)"
  fi
  ls -l "$OUT"
  [ "${#FAILED[@]}" -eq 0 ]
}

run_stage 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
