"""Hydra entry point; the work is in wsteer.recipes.train.run (see README)."""

import hydra

from wsteer.cli import guarded
from wsteer.recipes import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    return guarded(train.run, cfg)


if __name__ == "__main__":
    main()
