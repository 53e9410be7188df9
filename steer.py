"""Hydra entry point; the work is in wsteer.recipes.steer.run, or wsteer.recipes.search.run with search=... (see README)."""

import hydra

from wsteer.cli import guarded
from wsteer.recipes import search, steer


@hydra.main(version_base="1.3", config_path="conf", config_name="steer")
def main(cfg):
    return guarded(search.run if cfg.get("search") else steer.run, cfg)


if __name__ == "__main__":
    main()
