"""End-to-end wall time of the main job on the default model: first run (empty cache) and cached rerun.

Runs `python steer.py behavior=sycophancy k=-2` twice as a user would, in subprocesses, with a fresh cache folder
(`WSTEER_CACHE`) so the first run pays everything (GGUF → safetensors conversion, the two LoRA fine-tunes,
generation) and the second reuses the converted model and the cached vector. Prints both wall times, the stage
timings each run wrote (`timings.json`), and the ratios to the targets (first < 600 s, cached < 60 s on the
2-core CPU). Extra Hydra overrides go after `--`.

    python bench/main_job.py
    python bench/main_job.py -- trainer.group_by_length=true
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"first": 600.0, "cached": 60.0}


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    work = Path(tempfile.mkdtemp(prefix="wsteer-mainjob-"))
    env = dict(os.environ, WSTEER_CACHE=str(work / "cache"), WANDB_MODE="offline", WANDB_DIR=str(work),
               WANDB_SILENT="true", HF_HUB_OFFLINE="1")
    results = {}
    for run in ("first", "cached"):
        out = work / run
        cmd = [sys.executable, "steer.py", "behavior=sycophancy", "k=-2", f"hydra.run.dir={out}", *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}
        results[run] = {"wall_s": wall, "stages": timings}
        print(f"{run}: {wall:.1f} s wall (target < {TARGETS[run]:.0f} s, {wall / TARGETS[run]:.2f} of it); "
              + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if isinstance(v, (int, float))), flush=True)
    print(json.dumps({"command": "steer.py behavior=sycophancy k=-2 " + " ".join(extra), **results}, indent=2))


if __name__ == "__main__":
    main()
