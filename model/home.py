"""Where nanoresearch keeps what it downloads and derives: data shards, tokenizers, the eval bundle.

One place so every module agrees. `NANORESEARCH_HOME` overrides the default `~/.cache/nanoresearch`.
"""

import os
from pathlib import Path


def home_path() -> Path:
    """The directory, as configured, without creating it (for readers such as the dashboard)."""
    return Path(os.environ.get("NANORESEARCH_HOME") or Path.home() / ".cache" / "nanoresearch").expanduser()


def nanoresearch_home() -> Path:
    home = home_path()
    home.mkdir(parents=True, exist_ok=True)
    return home
