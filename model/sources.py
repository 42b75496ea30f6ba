"""Pretraining data sources: where documents come from, and the pinned validation split.

A *source* is an ordered list of shards (files, or the shards of a Hugging Face streaming dataset). Each shard is
read in *blocks* (a parquet row group, 1024 lines of a jsonl file, a whole .txt file, 1024 streamed rows), and a
document is addressed by (shard position, block, index) -- small integers, which is what makes the packing loader's
state (model/loader.py) a few indices instead of token buffers.

Accepted specs (`resolve_source`):
- a directory holding `.parquet` (column `text`), `.jsonl` / `.jsonl.gz` (field `text`, one document per line) or
  `.txt` files (each file is ONE document); only the top level of the directory is read, files sorted by name;
- a single such file;
- a download source name, `fineweb-edu` or `climbmix`, read from nanoresearch_home()/data/<name>/ (fill it with
  `python -m model.data download --source NAME -n K`, see model/download.py);
- `hf:owner/name[:config]`, a Hugging Face dataset read with `datasets` in streaming mode (column `text`).

The validation split is pinned to the LAST shard by sorted name and is never trained on. A source made of a single
file holds out that file's last block instead (its last row group, or its last 1024 lines); a single file with a
single block cannot be split and is an error.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from model.home import nanoresearch_home

SPLITS = ("train", "val")
FILE_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".txt")
LINES_PER_BLOCK = 1024  # jsonl and HF streaming blocks; the same size as nanochat's parquet row groups


@dataclass(frozen=True)
class DownloadSource:
    """A pretraining corpus published as numbered parquet shards; the last shard is the validation shard."""

    base_url: str
    max_shard: int  # index of the last shard, pinned as validation

    def filename(self, index: int) -> str:
        return f"shard_{index:05d}.parquet"

    @property
    def val_filename(self) -> str:
        return self.filename(self.max_shard)


# nanochat's shard repositories (karpathy's pre-shuffled re-packs, ~250M characters per shard).
DOWNLOAD_SOURCES = {
    "fineweb-edu": DownloadSource(
        "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main", max_shard=1822),
    "climbmix": DownloadSource(
        "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main", max_shard=6542),
}
DEFAULT_SOURCE = "fineweb-edu"


def _accepted() -> str:
    names = ", ".join(DOWNLOAD_SOURCES)
    return (f"a directory or file of {'/'.join(FILE_SUFFIXES)} files, a download source ({names}) "
            "or hf:owner/name[:config]")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def _is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(FILE_SUFFIXES) and not path.name.startswith(".")


@dataclass(frozen=True)
class Shard:
    """One unit of the split: a file (or HF shard id) restricted to blocks [lo, hi); hi=None means to its end."""

    path: str
    lo: int = 0
    hi: int | None = None


class DataSource:
    """A named collection of documents with a pinned train/val split, read block by block."""

    name: str

    def fingerprint(self) -> str:
        raise NotImplementedError

    def shards(self, split: str) -> list[Shard]:
        raise NotImplementedError

    def _read_file_block(self, path: str, block: int) -> list[str] | None:
        """Texts of block `block` of `path`, or None past its end."""
        raise NotImplementedError

    def read_block(self, shard: Shard, block: int) -> list[str] | None:
        file_block = shard.lo + block
        if shard.hi is not None and file_block >= shard.hi:
            return None
        return self._read_file_block(shard.path, file_block)

    def shard_order(self, split: str, seed: int | None, epoch: int) -> list[int]:
        """Shard indices in the order an epoch visits them: file order, or a permutation of (seed, epoch)."""
        n = len(self.shards(split))
        if seed is None:
            return list(range(n))
        return np.random.default_rng([seed, epoch]).permutation(n).tolist()

    def block_docs(self, split: str, shard_pos: int, block: int, rank: int = 0, world_size: int = 1,
                   seed: int | None = None, epoch: int = 0) -> list[str] | None:
        """This rank's documents of one block, in the order the epoch visits them; None past the shard's end.

        Ranks take interleaved documents of every block (doc i goes to rank i % world_size), so ranks are disjoint
        and balanced even when there are fewer shards or blocks than ranks.
        """
        shard_index = self.shard_order(split, seed, epoch)[shard_pos]
        texts = self.read_block(self.shards(split)[shard_index], block)
        if texts is None:
            return None
        mine = texts[rank::world_size]
        if seed is not None:
            order = np.random.default_rng([seed, epoch, shard_index, block]).permutation(len(mine))
            mine = [mine[i] for i in order]
        return mine

    def iter_texts(self, split: str, rank: int = 0, world_size: int = 1, start: tuple[int, int, int] | None = None,
                   *, seed: int | None = None, epoch: int = 0) -> Iterator[tuple[tuple[int, int, int], str]]:
        """Yield ((shard_pos, block, index), text) for one pass over this rank's part of a split.

        `start` is the address of the first document to yield (to resume); `seed` shuffles shard order and the
        documents inside each block, differently for each `epoch` (None keeps file order, as for validation).
        """
        check_split(split)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        pos0, block0, j0 = start or (0, 0, 0)
        for pos in range(pos0, len(self.shards(split))):
            block = block0 if pos == pos0 else 0
            while (texts := self.block_docs(split, pos, block, rank, world_size, seed, epoch)) is not None:
                first = j0 if (pos, block) == (pos0, block0) else 0
                for j in range(first, len(texts)):
                    yield (pos, block, j), texts[j]
                block += 1


class FileSource(DataSource):
    """Documents in local files (parquet / jsonl / jsonl.gz / txt); validation = the last file by sorted name."""

    def __init__(self, name: str, files: list[Path]):
        if not files:
            raise ValueError(f"data source {name!r} has no {'/'.join(FILE_SUFFIXES)} files")
        self.name = name
        self.files = sorted(files, key=lambda p: p.name)
        self._split_shards: dict[str, list[Shard]] | None = None
        self._jsonl_cache: tuple[str, list[str]] | None = None
        self._lock = threading.Lock()

    def fingerprint(self) -> str:
        # Names and sizes of every file plus a hash of the head of a few of them: cheap even for thousands of
        # shards, and it changes when files are added, removed, replaced or rewritten with a different size.
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.name}\0{f.stat().st_size}\n".encode())
        for f in sorted({self.files[0], self.files[len(self.files) // 2], self.files[-1]}):
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 16))
        return h.hexdigest()[:16]

    def shards(self, split: str) -> list[Shard]:
        check_split(split)
        if self._split_shards is None:
            if len(self.files) >= 2:
                train = [Shard(str(f)) for f in self.files[:-1]]
                val = [Shard(str(self.files[-1]))]
            else:
                only = self.files[0]
                n = self._num_blocks(only)
                if n < 2:
                    raise ValueError(f"data source {self.name!r} is a single file with a single block ({only}): "
                                     "need at least 2 files, or a file with at least 2 row groups / 1025 lines, "
                                     "to hold out a validation split")
                train, val = [Shard(str(only), 0, n - 1)], [Shard(str(only), n - 1, n)]
            self._split_shards = {"train": train, "val": val}
        return self._split_shards[split]

    def validated(self) -> FileSource:
        """Check every file before anything reads it for real, so bad data is one clear error at the start, not a
        traceback from deep inside tokenizer training or a data loader: a parquet file must open (a corrupt or
        truncated one has no footer) and have a 'text' column, a jsonl file's first record must be an object with
        a 'text' field, and the files must hold a validation split. Reads footers and first lines only."""
        for f in self.files:
            if f.name.endswith(".parquet"):
                names = self._parquet(f).schema_arrow.names
                if "text" not in names:
                    raise ValueError(f"parquet file {f} has no 'text' column (columns: {', '.join(names) or 'none'})")
            elif f.name.endswith((".jsonl", ".jsonl.gz")):
                self._check_first_record(f)
        self.shards("val")
        return self

    @staticmethod
    def _check_first_record(path: Path) -> None:
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                numbered = ((n, line) for n, line in enumerate(f, 1) if line.strip())
                lineno, line = next(numbered, (0, ""))
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
        if not lineno:
            return  # an empty file: it adds no documents
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "text" not in record:
            raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field")

    def _num_blocks(self, path: Path) -> int:
        if path.name.endswith(".parquet"):
            return self._parquet(path).num_row_groups
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            return math.ceil(len(self._jsonl_texts(str(path))) / LINES_PER_BLOCK)
        return 1  # a .txt file is one document

    @staticmethod
    def _parquet(path: str | Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ValueError(f"cannot read parquet file {path}: {e}") from None

    def _jsonl_texts(self, path: str) -> list[str]:
        # A jsonl file is parsed whole once and kept while the reader walks its blocks (one file at a time).
        with self._lock:
            if self._jsonl_cache is not None and self._jsonl_cache[0] == path:
                return self._jsonl_cache[1]
            opener = gzip.open if path.endswith(".gz") else open
            texts = []
            with opener(path, "rt", encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        texts.append(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field") from None
            self._jsonl_cache = (path, texts)
            return texts

    def _read_file_block(self, path: str, block: int) -> list[str] | None:
        if path.endswith(".parquet"):
            pf = self._parquet(path)
            if block >= pf.num_row_groups:
                return None
            if "text" not in pf.schema_arrow.names:
                columns = ", ".join(pf.schema_arrow.names)
                raise ValueError(f"parquet file {path} has no 'text' column (columns: {columns})")
            try:
                table = pf.read_row_group(block, columns=["text"])
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for damaged pages
                raise ValueError(f"cannot read row group {block} of parquet file {path}: {e}".splitlines()[0]) from None
            return [t or "" for t in table.column("text").to_pylist()]
        if path.endswith((".jsonl", ".jsonl.gz")):
            texts = self._jsonl_texts(path)
            lo = block * LINES_PER_BLOCK
            return texts[lo:lo + LINES_PER_BLOCK] if lo < len(texts) else None
        if block > 0:
            return None
        return [Path(path).read_text(encoding="utf-8", errors="replace")]


class HFSource(DataSource):
    """A Hugging Face dataset read in streaming mode; validation = the last data shard of its train split."""

    def __init__(self, dataset: str, config: str | None = None):
        self.dataset, self.config = dataset, config
        self.name = f"hf:{dataset}" + (f":{config}" if config else "")
        self._ds = None
        self._streams: dict[int, tuple[int, Iterator]] = {}  # shard index -> (next block, row iterator)
        self._lock = threading.Lock()

    def fingerprint(self) -> str:
        # The content of a hub dataset is identified by its name and config (no revision pinning).
        return hashlib.sha256(self.name.encode()).hexdigest()[:16]

    def _dataset(self):
        if self._ds is None:
            import datasets  # heavy import, only for hf: sources

            try:
                self._ds = datasets.load_dataset(self.dataset, self.config, split="train", streaming=True)
            except Exception as e:
                reason = f"{type(e).__name__}: {e}".splitlines()[0]
                raise ValueError(f"cannot open Hugging Face dataset {self.name!r}: {reason}") from None
            if self._ds.num_shards < 2:
                raise ValueError(f"Hugging Face dataset {self.name!r} has a single data shard: need at least 2 "
                                 "(the last one is held out for validation)")
        return self._ds

    def shards(self, split: str) -> list[Shard]:
        check_split(split)
        n = self._dataset().num_shards
        return [Shard(str(i)) for i in range(n - 1)] if split == "train" else [Shard(str(n - 1))]

    def _read_file_block(self, path: str, block: int) -> list[str] | None:
        index = int(path)
        with self._lock:
            next_block, rows = self._streams.get(index, (0, None))
            if rows is None or block < next_block:  # streams only go forward: reopen to go back
                ds = self._dataset()
                rows, next_block = iter(ds.shard(num_shards=ds.num_shards, index=index)), 0
            for _ in range((block - next_block) * LINES_PER_BLOCK):
                if next(rows, None) is None:
                    return None
            batch = [row for _, row in zip(range(LINES_PER_BLOCK), rows, strict=False)]
            self._streams[index] = (block + 1, rows)
        if not batch:
            return None
        if "text" not in batch[0]:
            columns = ", ".join(batch[0])
            raise ValueError(f"Hugging Face dataset {self.name!r} has no 'text' column (columns: {columns})")
        return [row["text"] or "" for row in batch]


def resolve_source(spec: str | None = None) -> DataSource:
    """Turn a data spec (or $NANORESEARCH_DATA, or the default 'fineweb-edu') into a DataSource."""
    spec = spec or os.environ.get("NANORESEARCH_DATA") or DEFAULT_SOURCE
    if spec.startswith("hf:"):
        dataset, _, config = spec[3:].partition(":")
        if not dataset:
            raise ValueError(f"bad Hugging Face spec {spec!r}: expected hf:owner/name[:config]")
        return HFSource(dataset, config or None)
    if spec in DOWNLOAD_SOURCES:
        return _downloaded_source(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in path.iterdir() if _is_data_file(p)]
        if not files:
            raise ValueError(f"data directory {path} has no {', '.join(FILE_SUFFIXES)} files")
        return FileSource(str(path), files).validated()
    if _is_data_file(path):
        return FileSource(str(path), [path]).validated()
    raise ValueError(f"unknown data source {spec!r}: expected {_accepted()}")


def _downloaded_source(name: str) -> FileSource:
    src = DOWNLOAD_SOURCES[name]
    directory = nanoresearch_home() / "data" / name
    files = sorted(directory.glob("shard_*.parquet")) if directory.is_dir() else []
    hint = f"download them with: python -m model.data download --source {name} -n 8"
    if not files:
        raise ValueError(f"no shards of {name!r} in {directory}; {hint}")
    if files[-1].name != src.val_filename:
        raise ValueError(f"the validation shard {src.val_filename} of {name!r} is missing in {directory}; {hint}")
    if len(files) < 2:
        raise ValueError(f"only the validation shard of {name!r} is in {directory}; {hint}")
    return FileSource(name, files).validated()
