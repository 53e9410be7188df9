"""The judge's prompt files: a YAML with a `version` and the `trait` and `coherence` templates, packaged ones under
`wsteer/judges/prompts/` or any path; the version that keys cached verdicts includes a hash of both templates."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from wsteer.errors import WsteerError
from wsteer.judges.base import JudgeItem

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_PROMPTS = "trait_coherence"


def resolve_prompts_path(prompts: str | os.PathLike | None) -> Path:
    """Find a prompt YAML: ``None`` → the packaged default; an existing path; else a packaged name.

    Relative paths are taken from the current directory (Hydra runs with ``chdir: false``); a bare name such as
    ``trait_coherence`` (with or without ``.yaml``) refers to ``wsteer/judges/prompts/``.
    """
    if prompts is None:
        prompts = DEFAULT_PROMPTS
    path = Path(prompts).expanduser()
    if path.is_file():
        return path
    for candidate in (PROMPTS_DIR / str(prompts), PROMPTS_DIR / f"{prompts}.yaml"):
        if candidate.is_file():
            return candidate
    packaged = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))
    raise WsteerError(f"judge prompts {str(prompts)!r} not found: give a YAML path or one of {packaged}")


def load_prompts(prompts: str | os.PathLike | None) -> tuple[Path, str, dict[str, str]]:
    """Return ``(path, version, {"trait": template, "coherence": template})``.

    The version is the file's ``version`` plus a short hash of both templates, so editing a template without
    bumping ``version`` still invalidates cached verdicts.
    """
    path = resolve_prompts_path(prompts)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise WsteerError(f"judge prompts {path} are unreadable ({e.__class__.__name__}: {e})") from e
    if not isinstance(data, dict) or "version" not in data:
        raise WsteerError(f"judge prompts {path} need a `version` and `trait`/`coherence` templates")
    templates = {}
    dummy = {f: "x" for f in JudgeItem.__dataclass_fields__}
    for which in ("trait", "coherence"):
        template = data.get(which)
        if not isinstance(template, str) or not template.strip():
            raise WsteerError(f"judge prompts {path} have no `{which}` template")
        try:
            template.format(**dummy)
        except (KeyError, IndexError, ValueError) as e:
            raise WsteerError(
                f"judge prompt `{which}` in {path} has a bad placeholder ({e!r}); use only "
                f"{{behavior}}, {{trait_description}}, {{question}}, {{answer}} (write literal braces as {{{{ }}}})"
            ) from e
        templates[which] = template
    digest = hashlib.sha256((templates["trait"] + "\0" + templates["coherence"]).encode()).hexdigest()[:8]
    return path, f"{data['version']}-{digest}", templates
