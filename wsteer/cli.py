"""What the entry scripts share: user-facing errors as one line, never a traceback."""

from __future__ import annotations

import sys

from wsteer.errors import WsteerError


def guarded(run, cfg):
    try:
        return run(cfg)
    except WsteerError as e:
        print(f"wsteer: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
