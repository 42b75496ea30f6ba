"""Which code produced a run: the git commit of this checkout, plus a hash of uncommitted changes if any.

Experiment ids hash this, so a result is never silently attributed to different code."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@functools.cache
def code_version() -> str:
    """'<12-char sha>' or '<sha>-dirty-<8-char hash of the diff>'; 'unknown' outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout
    try:
        sha = git("rev-parse", "HEAD").strip()[:12]
        diff = git("diff", "HEAD", "--", "model")  # only the model code changes what training computes
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if diff:
        return f"{sha}-dirty-{hashlib.sha256(diff.encode()).hexdigest()[:8]}"
    return sha
