"""Hydra entry point; the work is in wsteer.recipes.steer.run (see README)."""

import hydra

from wsteer.cli import guarded
from wsteer.recipes import steer


@hydra.main(version_base="1.3", config_path="conf", config_name="steer")
def main(cfg):
    return guarded(steer.run, cfg)


if __name__ == "__main__":
    main()
