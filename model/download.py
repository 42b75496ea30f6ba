"""Downloading a named corpus (`DOWNLOAD_SOURCES` in model/sources.py) as parquet shards, with retries."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

from model.home import nanoresearch_home
from model.sources import DOWNLOAD_SOURCES


def download(name: str, num_train: int, out: str | Path | None = None, *, base_url: str | None = None,
             retries: int = 5, backoff_s: float = 2.0, progress: bool = True) -> Path:
    """Fetch the first `num_train` train shards of a download source plus its validation shard into `out`.

    Shards already present are skipped; each file is written to a temp name and renamed only once it reads back as
    parquet with a `text` column, so an interrupted or garbled download never looks like a shard. Failures are
    retried with exponential backoff (backoff_s, 2*backoff_s, ...). The base URL can be overridden (flag or
    $NANORESEARCH_DOWNLOAD_URL), e.g. to a mirror.
    """
    if name not in DOWNLOAD_SOURCES:
        raise ValueError(f"unknown download source {name!r}: expected one of {', '.join(DOWNLOAD_SOURCES)}")
    src = DOWNLOAD_SOURCES[name]
    if not 1 <= num_train <= src.max_shard:
        raise ValueError(f"-n {num_train} is out of range: {name} has train shards 0..{src.max_shard - 1}")
    base_url = (base_url or os.environ.get("NANORESEARCH_DOWNLOAD_URL") or src.base_url).rstrip("/")
    out = Path(out) if out else nanoresearch_home() / "data" / name
    out.mkdir(parents=True, exist_ok=True)
    wanted = [src.filename(i) for i in range(num_train)] + [src.val_filename]
    missing = [f for f in wanted if not (out / f).exists()]
    if progress:
        print(f"{name}: {len(wanted) - len(missing)}/{len(wanted)} shards already in {out}", file=sys.stderr)
    from tqdm import tqdm

    for filename in tqdm(missing, desc=f"downloading {name}", unit="shard", disable=not progress):
        _download_file(f"{base_url}/{filename}", out / filename, retries, backoff_s, progress)
    return out


def _download_file(url: str, dest: Path, retries: int, backoff_s: float, progress: bool) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
            if "text" not in pq.ParquetFile(tmp).schema_arrow.names:
                raise ValueError("the file has no 'text' column")
            os.replace(tmp, dest)
            return
        except Exception as e:  # network errors, HTTP errors, truncated or non-parquet bodies
            tmp.unlink(missing_ok=True)
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            if attempt == retries:
                raise RuntimeError(f"failed to download {url} after {retries} attempts: {reason}") from None
            wait = backoff_s * 2 ** (attempt - 1)
            if progress:
                print(f"\n{url}: attempt {attempt}/{retries} failed ({reason}); retrying in {wait:.1f}s",
                      file=sys.stderr)
            time.sleep(wait)
