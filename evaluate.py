"""Hydra entry point; the work is in wsteer.recipes.evaluate.run (see README)."""

import hydra

from wsteer.cli import guarded
from wsteer.recipes import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg):
    return guarded(evaluate.run, cfg)


if __name__ == "__main__":
    main()
