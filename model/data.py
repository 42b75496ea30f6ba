"""Pretraining data from the command line: download a corpus's shards, measure the packing loader's throughput.

The data itself lives in model/sources.py (where documents come from, the validation split), model/download.py
(fetching shards) and model/loader.py (best-fit packing); this module is only `python -m model.data download|bench`.
"""

from __future__ import annotations

import argparse
import sys
import time

from model.download import download
from model.loader import BestFitLoader
from model.sources import DOWNLOAD_SOURCES, resolve_source
from model.tokenizer import DEFAULT_MAX_CHARS, get_tokenizer


def _bench(args: argparse.Namespace) -> None:
    source = resolve_source(args.data)
    tokenizer = get_tokenizer(source, args.vocab_size, args.max_chars or DEFAULT_MAX_CHARS)
    loader = BestFitLoader(tokenizer, source, "train", args.batch_size, args.seq_len)
    t0 = time.perf_counter()
    next(loader)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.batches):
        next(loader)
        if (i + 1) % max(1, args.batches // 10) == 0:
            elapsed = time.perf_counter() - t0
            eta = elapsed / (i + 1) * (args.batches - i - 1)
            print(f"  {i + 1}/{args.batches} batches, eta {eta:.1f}s", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    loader.close()
    tokens = args.batches * args.batch_size * args.seq_len
    print(f"source {source.name}  vocab {tokenizer.vocab_size}  batch {args.batch_size}x{args.seq_len}")
    print(f"first batch: {first:.2f}s (tokenizer warm-up and first chunk)")
    print(f"throughput: {tokens / elapsed:,.0f} tokens/s over {args.batches} batches ({elapsed:.2f}s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="download train shards and the validation shard of a corpus")
    dl.add_argument("--source", required=True, choices=sorted(DOWNLOAD_SOURCES))
    dl.add_argument("-n", "--num-shards", type=int, required=True, help="number of train shards (val is extra)")
    dl.add_argument("--out", help="directory (default: $NANORESEARCH_HOME/data/<source>)")
    dl.add_argument("--base-url", help="mirror URL (default: $NANORESEARCH_DOWNLOAD_URL or the public one)")
    dl.add_argument("--retries", type=int, default=5, help="attempts per file")
    dl.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry (doubles each time)")
    bench = sub.add_parser("bench", help="measure loader throughput in tokens/s")
    bench.add_argument("--data", help="data spec (default: $NANORESEARCH_DATA or fineweb-edu)")
    bench.add_argument("--vocab-size", type=int, required=True)
    bench.add_argument("--max-chars", type=int, help="tokenizer training characters (default: the tokenizer's)")
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--seq-len", type=int, default=256)
    bench.add_argument("--batches", type=int, default=2000, help="timed batches (enough to outrun the prefetch)")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            out = download(args.source, args.num_shards, args.out, base_url=args.base_url, retries=args.retries,
                           backoff_s=args.backoff)
            print(f"shards are in {out}")
        else:
            _bench(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
