"""Resumable fits: validate at step 0 or continue from the resume checkpoint, and turn SIGTERM into exit 143.

Used by the paired vector fine-tunes (`recipes/train.py`) and the task fine-tunes (`recipes/task_finetune.py`).
The checkpoint itself is written by `ResumeCheckpoint` (`training/paired.py`) after every validation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lightning.pytorch.utilities.exceptions import SIGTERMException

from wsteer.errors import Interrupted


def usable_checkpoint(path: Path | None) -> tuple[Path | None, int]:
    """`(path, global steps done)` if `path` holds a checkpoint that loads safely, else `(None, 0)`.

    An unreadable checkpoint (it cannot be half-written, but may come from another wsteer version) is discarded
    with a warning: the run then trains from scratch instead of failing a sweep.
    """
    if path is None or not path.is_file():
        return None, 0
    from lightning.fabric.utilities.cloud_io import _load

    try:  # weights_only: a checkpoint is data, never code
        state = _load(path, map_location="cpu", weights_only=True)
        if "wsteer_paired" not in state or "loops" not in state:
            raise ValueError("not a wsteer paired-training checkpoint")
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same thing: start over
        print(f"wsteer: warning: discarding unreadable training checkpoint {path} ({e.__class__.__name__}: "
              f"{str(e)[:200]}); training starts from step 0")
        path.unlink()
        return None, 0
    return path, int(state.get("global_step", 0))


def fit_resumably(trainer, module, dm, resume: Path | None, what: str, steps: int, steps_per_global: int = 1) -> None:
    """Validate at step 0 (or resume from `resume`), fit, and validate once more if the last step had none.

    `steps_per_global`: global steps per training step (paired training counts one per side).
    """
    ckpt, global_step = usable_checkpoint(resume)
    if ckpt is None:
        trainer.validate(module, datamodule=dm, verbose=False)  # step 0: the untrained weights' val loss
    else:
        print(f"wsteer: resuming {what} at step {global_step // steps_per_global} of {steps} from {ckpt}")
    with warnings.catch_warnings():
        # Resuming mid-epoch restarts the (shuffled, non-stateful) data order; steps, optimizer and LR schedule
        # state continue exactly, which is what matters for finished work. Lightning's warning says only that.
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch.*")
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
        except SIGTERMException as e:  # Lightning exits with status 0 on SIGTERM; a stopped job is no success
            raise Interrupted(f"stopped by SIGTERM at step {module.training_steps_done} of {steps}; the checkpoint "
                              f"in {resume.parent if resume else '(none)'} keeps the finished steps: rerun the same "
                              "command to resume") from e
    if not module.history or module.history[-1]["step"] != steps:
        trainer.validate(module, datamodule=dm, verbose=False)
