"""What the entry scripts share: user-facing errors as one line, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from wsteer.errors import WsteerError

# Multirun jobs are named by their overrides (conf/base.yaml hydra.sweep.subdir). A path-valued override such as
# base_adapter=outputs/ft/adapter would nest one folder per path part, so "/" becomes "_" in the folder name
# (each job's .hydra/overrides.yaml keeps the real value). Registered here because every entry script imports it.
OmegaConf.register_new_resolver("wsteer.dirname", lambda s: str(s).replace("/", "_"), replace=True)


def guarded(run, cfg):
    try:
        return run(cfg)
    except WsteerError as e:
        print(f"wsteer: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


class WritableRunDir(Callback):
    """Refuse an unwritable `hydra.run.dir` / `hydra.sweep.dir` with one line, before Hydra writes into it.

    Hydra creates the run dir before any wsteer code runs and reports a failure there with a stack trace;
    this callback (registered in conf/base.yaml) runs first and exits 2 with the usual `wsteer: error:` line.
    """

    def _check(self, config: DictConfig, key: str) -> None:
        from wsteer.recipes._common import ensure_writable

        folder = Path(str(OmegaConf.select(config, key)))
        try:
            ensure_writable(folder, key, f"set {key}=... to a writable folder")
        except WsteerError as e:
            print(f"wsteer: error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")
