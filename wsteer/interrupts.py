"""SIGTERM in the stages Lightning does not run: stop at once with exit 143 and a line naming what was kept.

A scheduler's grace period (Slurm's default is 30 s) may be shorter than one batch of generation, so these stages
do not wait for the batch to end: the handler raises `Interrupted` where the main thread is, and every batch
already finished is on disk (sampling progress, the evaluation item store), so rerunning the same command resumes.
Inside `Trainer.fit`/`test` Lightning chains this handler after its own, so its bookkeeping still runs.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from wsteer.errors import Interrupted


@contextmanager
def stop_promptly_on_sigterm(where: dict):
    """`where["what"]` and `where["kept"]` (updated by the caller as it goes) word the message."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Interrupted(f"stopped by SIGTERM during {where.get('what', 'this stage')}; finished work is kept in "
                          f"{where.get('kept', 'the cache')}: rerun the same command to resume")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
