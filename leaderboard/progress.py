"""A periodic progress line with rate and ETA on stderr, for long leaderboard commands (ingest, bench)."""

import sys
import time
from typing import TextIO


class Progress:
    """`update(done)` prints "label: done/total (rate/s, ETA m:ss)" at most every `every` seconds;
    `close()` prints the final line if anything was printed (short jobs stay quiet)."""

    def __init__(self, total: int, label: str, *, every: float = 2.0, stream: TextIO | None = None):
        self.total, self.label, self.every = total, label, every
        self.stream = stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.done, self.printed = 0, False

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = f"{int(eta) // 60}:{int(eta) % 60:02d}" if eta != float("inf") else "?"
        return f"{self.label}: {self.done}/{self.total} ({rate:.1f}/s, ETA {eta_text})"

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.last >= self.every:
            print(self._line(now), file=self.stream, flush=True)
            self.last, self.printed = now, True

    def close(self) -> None:
        if self.printed:
            print(self._line(time.monotonic()), file=self.stream, flush=True)
