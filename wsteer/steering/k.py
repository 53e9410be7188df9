"""Validation of the steering strength k."""

from __future__ import annotations

import math

from wsteer.errors import WsteerError


def check_k(k) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k):
        raise WsteerError(f"k must be a finite number (e.g. k=-2), got {k!r}")
    return float(k)
