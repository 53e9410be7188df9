"""Small helpers for self-describing, atomically written artifacts (manifests, hashes, git commit)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DATA = PROJECT_ROOT / "data"  # data committed with the project (e.g. the default model's D±)


def stable_hash(obj, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to `final`; rename it over `final` only if the block succeeds.

    Works for files and folders: a crash mid-write never leaves something at `final` that looks complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        _default_permissions(tmp)
        if final.is_dir() and tmp.is_dir():
            import shutil

            shutil.rmtree(final)
        os.replace(tmp, final)
    except Exception as e:
        reason = storage_failure(e)
        if reason is None:
            raise
        from wsteer.errors import WsteerError

        raise WsteerError(f"could not write {final}: {reason}; free some space or point output_dir / "
                          f"paths.cache_dir at another disk (what was there before is unchanged)") from e
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


# Write failures that are about the storage, not about the data: disk full, quota, file size limit, read-only.
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EFBIG: "file too large for this file system or limit", errno.EROFS: "read-only file system",
                   errno.EACCES: "permission denied", errno.EIO: "input/output error"}


def storage_failure(e: BaseException) -> str | None:
    """A readable reason if `e` is a storage failure, else None. Libraries written in Rust or C (safetensors,
    Arrow) report the OS error only in their message, as "os error N" or "errno N"."""
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
        return _STORAGE_ERRNOS[e.errno]
    m = re.search(r"(?:os error|errno:?|Errno)\s*(\d+)", str(e), flags=re.IGNORECASE)
    if m and int(m.group(1)) in _STORAGE_ERRNOS:
        return _STORAGE_ERRNOS[int(m.group(1))]
    return None


def _default_permissions(path: Path) -> None:
    """Give written files the usual umask permissions (safetensors writes 0600, which a shared server cannot read)."""
    umask = os.umask(0)
    os.umask(umask)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        os.chmod(f, 0o666 & ~umask)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path
