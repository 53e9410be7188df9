#!/usr/bin/env bash
# Fetch into .whl/ the wheels the GPU benches and `pytest -m gpu` need that the lent GPU image lacks.
# Run here (PyPI reachable), from the repo root; then carry `.whl` to the GPU machine and run bench/gpu_run.sh.
#
# The image has python 3.12, torch, transformers, lightning, peft, accelerate, safetensors, tokenizers,
# huggingface-hub, numpy, pyarrow, pandas, fsspec, xxhash, ... (BENCHMARKS.md); it lacks the packages below.
# Versions are those of this repo's .venv. wandb, openai and gguf are not shipped: nothing on the bench or gpu-test
# path imports them (wandb only with a logger, openai only with the OpenAI judge, gguf only for model.source=gguf).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  hydra-core==1.3.8               # bench/k_switch.py suite pass (compose), tests/conftest.py
  omegaconf==2.3.1                # bench/common.py, wsteer.*
  antlr4-python3-runtime==4.9.3   # omegaconf/hydra (==4.9.*); sdist only on PyPI: built here (pure python)
  datasets==5.2.0                 # bench/common.py pairs(), wsteer.data.pairs, TRL
  dill==0.4.1                     # datasets (<0.4.2)
  multiprocess==0.70.19           # datasets (<0.70.20); a py312-tagged wheel
  trl==1.16.0                     # bench/train_throughput.py TRL baseline
)
PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

rm -rf .whl && mkdir -p .whl
grep -qxF '/.whl/' .gitignore 2>/dev/null || echo '/.whl/' >> .gitignore

for spec in "${WHEELS[@]}"; do
  if ! python3 -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d .whl "$spec" 2>/dev/null; then
    # no wheel on the index (antlr4-python3-runtime 4.9.3): build one; it must come out py3-none-any
    python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl "$spec" 2>/dev/null \
      || python3 -m pip wheel -q --no-deps -w .whl "$spec"
  fi
done

# every wheel must install on the GPU image's cp312 (checked without installing anything)
for w in .whl/*.whl; do
  case "$(basename "$w")" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-py312-none-any.whl|*-cp312-*) ;;
    *) echo "not installable on cp312: $w" >&2; exit 1 ;;
  esac
done
n=$(ls .whl/*.whl | wc -l)
[ "$n" -eq "${#WHEELS[@]}" ] || { echo "expected ${#WHEELS[@]} wheels, got $n" >&2; ls .whl >&2; exit 1; }

ls -l .whl
echo "total: $(du -ch .whl/*.whl | tail -1 | cut -f1) in $n wheels (.whl/)"
