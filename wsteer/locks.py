"""Cross-process locks, so concurrent jobs of a sweep (Hydra's joblib or Slurm launchers, two terminals) build each
data set and vector once: the first builds it, the others wait and then reuse it from the cache.

`filelock` (a small, well-kept library, already a dependency of torch and datasets) holds an OS-level lock on a
file under `<cache>/locks/`, so a killed holder releases it at once and nothing stale is left to clean up.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from wsteer.artifacts import stable_hash


@contextmanager
def building(cache_dir: str | Path, target: Path, what: str):
    """Hold the lock for building `target` (a cache folder); say so when another job holds it.

    A DDP helper rank (started by Lightning from rank 0, which holds the lock while it trains) takes no lock: it
    would wait for rank 0, which waits for it.
    """
    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        yield
        return
    folder = Path(cache_dir).expanduser() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{stable_hash(str(Path(target).expanduser().resolve()), 16)}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"wsteer: another job is building {what} ({target}); waiting for it, then reusing its result")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
