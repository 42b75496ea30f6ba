"""The best-fit packing loader: a split of a data source (model/sources.py) as (inputs, targets) batches.

Packing (`BestFitLoader`) is nanochat's BOS-aligned best fit: every row holds T+1 tokens, starts with BOS and has
no padding. Each document is tokenized with BOS in front; a document longer than a row is cut into row-sized pieces
that each start with BOS (otherwise, at short sequence lengths, cropping would throw most of every long document
away). From a buffer of pieces the loader repeatedly places the LARGEST piece that fits the space left in the row;
when none fits it crops the SHORTEST piece to fill the row exactly and puts the cut-off tail back in the buffer as a
new BOS-prefixed piece, so no token of the data is discarded.
"""

from __future__ import annotations

import bisect
import math
import queue
import sys
import threading
from collections import defaultdict, deque

import numpy as np
import torch

from model.sources import DataSource, check_split, resolve_source

_END = object()  # the producer's "no more documents" marker (validation only; training loops forever)
# Documents per tokenizer call: the first chunks are small so the first batch comes quickly, later ones large for
# throughput. With at most _PREFETCH chunks waiting, the producer stays a little ahead without tokenizing the whole
# split (which would steal the CPU from training, and be wasted when a validation set needs only a few batches).
_FIRST_CHUNK_DOCS, _MAX_CHUNK_DOCS, _PREFETCH = 8, 256, 2


class _Doc:
    """A tokenized document (without BOS) and its address (epoch, shard_pos, block, index)."""

    __slots__ = ("addr", "toks")

    def __init__(self, addr: tuple[int, int, int, int], toks: np.ndarray):
        self.addr, self.toks = addr, toks


class BestFitLoader:
    """BOS-aligned best-fit packing of a split into (inputs, targets) int64 batches of shape (B, T).

    The train split loops forever: epoch e visits shards in a seeded random order and shuffles documents inside
    each block (seed, e); validation is a single pass in file order (or, with `val_seed`, with the documents of each
    block in a fixed shuffled order) and raises StopIteration at its end (the last, partial batch is dropped).
    `doc_pieces` keeps at most that many row-sized pieces of each document (None: all of it). Tokenization runs in a background thread a few chunks ahead of packing.
    `state_dict()` records the buffer as document addresses, so a restored loader yields exactly the same batches.
    """

    def __init__(self, tokenizer, source: DataSource | str | None, split: str, batch_size: int, seq_len: int, *,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu", buffer_docs: int = 1000,
                 seed: int = 0, val_seed: int | None = None, doc_pieces: int | None = None):
        check_split(split)
        if not isinstance(source, DataSource):
            source = resolve_source(source)
        for label, value in (("batch_size", batch_size), ("seq_len", seq_len), ("buffer_docs", buffer_docs),
                             ("world_size", world_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.tokenizer, self.source, self.split = tokenizer, source, split
        self.batch_size, self.seq_len, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.device, self.buffer_docs, self.seed = torch.device(device), buffer_docs, seed
        self._bos = tokenizer.bos_id
        self._shuffle_seed = seed if split == "train" else val_seed
        self.doc_pieces = doc_pieces
        # Buffer entries (length, -seq, start, end, doc), kept sorted: bisect finds the largest piece that fits, and
        # among equal lengths the oldest (largest -seq) wins. A piece is BOS + doc.toks[start:end].
        self._buffer: list[tuple[int, int, int, int, _Doc]] = []
        self._seq = 0
        self._last_pulled: tuple[int, int, int, int] | None = None  # address of the last document taken in
        self._exhausted = False
        self._pending: deque[_Doc] = deque()
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._fingerprint = source.fingerprint()

    # -- background tokenization -------------------------------------------------------------------------------

    def _start_producer(self) -> None:
        if self._last_pulled is None:
            start = (0, 0, 0, 0)
        else:
            epoch, pos, block, j = self._last_pulled
            start = (epoch, pos, block, j + 1)  # past the block's end is fine: iter_texts moves on
        self._queue, self._stop = queue.Queue(maxsize=_PREFETCH), threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(start, self._queue, self._stop), daemon=True,
                                        name=f"BestFitLoader-{self.split}-rank{self.rank}")
        self._thread.start()

    def _produce(self, start: tuple[int, int, int, int], out: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def flush(chunk: list) -> bool:
            ids = self.tokenizer.encode_batch([text for _, text in chunk])
            return put([_Doc(addr, np.asarray(t, dtype=np.int32)) for (addr, _), t in zip(chunk, ids, strict=True)])

        try:
            epoch, pos, block, j = start
            chunk_docs = _FIRST_CHUNK_DOCS
            while True:
                chunk, found = [], 0
                texts = self.source.iter_texts(self.split, self.rank, self.world_size, (pos, block, j),
                                               seed=self._shuffle_seed, epoch=epoch)
                for (p, b, jj), text in texts:
                    if text:
                        found += 1
                        chunk.append(((epoch, p, b, jj), text))
                    if len(chunk) == chunk_docs:
                        if not flush(chunk):
                            return
                        chunk, chunk_docs = [], min(2 * chunk_docs, _MAX_CHUNK_DOCS)
                if chunk and not flush(chunk):
                    return
                if self.split != "train":
                    put(_END)
                    return
                if not found and (pos, block, j) == (0, 0, 0):
                    raise ValueError(f"rank {self.rank} of {self.world_size} gets no (non-empty) documents from the "
                                     f"train split of {self.source.name!r}")
                epoch, pos, block, j = epoch + 1, 0, 0, 0
        except BaseException as e:  # hand any failure to the consumer, which re-raises it
            put(e)

    def _pull_doc(self) -> _Doc | None:
        """The next tokenized document of the stream, or None once validation data is exhausted."""
        if self._exhausted:
            return None
        if not self._pending:
            if self._thread is None:
                self._start_producer()
            item = self._queue.get()
            if item is _END:
                self._exhausted = True
                return None
            if isinstance(item, BaseException):
                self.close()  # the producer has stopped; a retry starts a fresh one (and fails the same way)
                raise item
            self._pending.extend(item)
        doc = self._pending.popleft()
        self._last_pulled = doc.addr
        return doc

    def close(self) -> None:
        """Stop the background thread (the loader can still be restored or restarted)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._thread = self._queue = self._stop = None
        self._pending.clear()

    def __del__(self):
        if getattr(self, "_stop", None) is not None:
            self._stop.set()

    # -- packing --------------------------------------------------------------------------------------------------

    def _add_piece(self, start: int, end: int, doc: _Doc) -> None:
        self._seq += 1
        bisect.insort(self._buffer, (1 + end - start, -self._seq, start, end, doc))

    def _add_doc(self, doc: _Doc) -> None:
        n, T = len(doc.toks), self.seq_len
        starts = range(0, n, T)  # row-sized pieces: BOS + at most T tokens
        for start in starts[:self.doc_pieces] if self.doc_pieces is not None else starts:
            self._add_piece(start, min(start + T, n), doc)

    def _fill_row(self, row: np.ndarray) -> bool:
        """Pack one row of T+1 tokens; False if the data ran out first (validation's end)."""
        row_len, pos = len(row), 0
        while pos < row_len:
            while len(self._buffer) < self.buffer_docs and (doc := self._pull_doc()) is not None:
                self._add_doc(doc)
            if not self._buffer:
                return False
            space = row_len - pos
            i = bisect.bisect_right(self._buffer, (space, 0)) - 1  # largest piece with length <= space
            if i >= 0:
                length, _, start, end, doc = self._buffer.pop(i)
                take = length
            else:  # nothing fits: crop the shortest piece (least cropping), keep its tail for later
                length, _, start, end, doc = self._buffer.pop(0)
                take = space
                self._add_piece(start + take - 1, end, doc)
            row[pos] = self._bos
            row[pos + 1:pos + take] = doc.toks[start:start + take - 1]
            pos += take
        return True

    def __iter__(self) -> BestFitLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.full((self.batch_size, self.seq_len + 1), -1, dtype=np.int64)
        for row in rows:
            if not self._fill_row(row):
                raise StopIteration
        batch = torch.from_numpy(rows)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            batch = batch.to(self.device)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    @property
    def epoch(self) -> int:
        """The epoch of the most recent document taken into the buffer."""
        return self._last_pulled[0] if self._last_pulled else 0

    # -- exact resumption -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where the stream is, as JSON-able integers: the last document taken in and the buffered pieces."""
        pieces = sorted(self._buffer, key=lambda e: -e[1])  # insertion order
        return {
            "version": 1, "source": self._fingerprint, "split": self.split, "seq_len": self.seq_len,
            "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
            "last_pulled": list(self._last_pulled) if self._last_pulled else None,
            "exhausted": self._exhausted,
            "buffer": [[*doc.addr, start, end] for _, _, start, end, doc in pieces],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the loader that produced `state` was."""
        expected = {"version": 1, "source": self._fingerprint, "split": self.split, "seq_len": self.seq_len,
                    "seed": self.seed, "rank": self.rank, "world_size": self.world_size}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(f"loader state has {key}={state.get(key)!r} but this loader has {key}={value!r}")
        self.close()
        docs: dict[tuple, _Doc] = {}
        by_block: dict[tuple, set[int]] = defaultdict(set)
        for epoch, pos, block, j, _, _ in state["buffer"]:
            by_block[(epoch, pos, block)].add(j)
        for (epoch, pos, block), js in by_block.items():
            texts = self.source.block_docs(self.split, pos, block, self.rank, self.world_size, self._shuffle_seed,
                                           epoch)
            js = sorted(js)
            if texts is None or js[-1] >= len(texts):
                raise ValueError(f"loader state refers to document {(epoch, pos, block, js[-1])} that the source "
                                 f"{self.source.name!r} does not have")
            for j, ids in zip(js, self.tokenizer.encode_batch([texts[j] for j in js]), strict=True):
                docs[(epoch, pos, block, j)] = _Doc((epoch, pos, block, j), np.asarray(ids, dtype=np.int32))
        self._buffer, self._seq = [], 0
        for epoch, pos, block, j, start, end in state["buffer"]:
            self._add_piece(start, end, docs[(epoch, pos, block, j)])
        self._last_pulled = tuple(state["last_pulled"]) if state["last_pulled"] else None
        self._exhausted = bool(state["exhausted"])


VAL_SEED = 0  # the fixed shuffle of a spread validation set: the same documents in every run


def validation_batches(tokenizer, source: DataSource | str | None, batch_size: int, seq_len: int, num_tokens: int, *,
                       rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                       spread: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: the first ceil(num_tokens / (B*T*world_size)) batches of this rank's val stream.

    `num_tokens` counts all ranks together, so the set covers about the same text whatever the world size. If the
    split is smaller, every full batch it has is returned (with a warning on stderr).

    `spread`: the first row-sized piece of each document, the documents of each block in a fixed shuffled order
    (VAL_SEED), instead of whole documents in file order. A small set (the cpu tier's 32k tokens: 128 rows) then
    samples ~128 documents from all over the block instead of the first few, which in a shard of consecutive book
    chunks are one or two books (and one long document can fill most rows). Measured on the shared Gutenberg shards
    at depth 2: a run and its replica with another init differed by 0.044 bpb on the first 32k tokens and by 0.002
    on the first 262k, whose mean both missed by 0.3 bpb.
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    if not isinstance(source, DataSource):
        source = resolve_source(source)
    wanted = math.ceil(num_tokens / (batch_size * seq_len * world_size))
    loader = BestFitLoader(tokenizer, source, "val", batch_size, seq_len, rank=rank, world_size=world_size,
                           device=device, val_seed=VAL_SEED if spread else None, doc_pieces=1 if spread else None)
    batches = []
    try:
        for batch in loader:
            batches.append(batch)
            if len(batches) == wanted:
                break
    finally:
        loader.close()
    if not batches:
        raise ValueError(f"the val split of {source.name!r} has less than one batch ({batch_size}x{seq_len + 1} "
                         f"tokens) for rank {rank} of {world_size}")
    if len(batches) < wanted:
        print(f"warning: the val split of {source.name!r} has {len(batches)} batches for rank {rank}, "
              f"fewer than the {wanted} asked for", file=sys.stderr)
    return batches
