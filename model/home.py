"""Where nanoresearch keeps what it downloads and derives: data shards, tokenizers, the eval bundle.

One place so every module agrees. `NANORESEARCH_HOME` overrides the default `~/.cache/nanoresearch`.
"""

import os
from pathlib import Path


def nanoresearch_home() -> Path:
    home = Path(os.environ.get("NANORESEARCH_HOME") or Path.home() / ".cache" / "nanoresearch").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
