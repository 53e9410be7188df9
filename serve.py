"""Hydra entry point; the work is in wsteer.recipes.serve.run (see README, "Serving")."""

import hydra

from wsteer.cli import guarded
from wsteer.recipes import serve


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg):
    return guarded(serve.run, cfg)


if __name__ == "__main__":
    main()
