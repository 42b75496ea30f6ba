"""The BPE tokenizer: training (HF `tokenizers`), caching, special tokens and nanochat's chat format.

Byte-level BPE with a GPT-4-style split regex (numbers in groups of at most 2, nanochat's choice for small vocabs).
Text is always encoded as plain text: a document that happens to contain "<|bos|>" gets ordinary tokens for it, so
special tokens can only come from their ids (`special_id`), never from data.

Trained tokenizers are cached under nanoresearch_home()/tokenizers/<data fingerprint>-v<vocab>-c<max_chars>/: the
same data, vocab size and character budget always load the same tokenizer instead of retraining one.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from model.home import nanoresearch_home
from model.sources import DataSource, resolve_source

SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
                 r"""\s+(?!\S)|\s+""")
SPECIAL_TOKENS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                  "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]
DEFAULT_MAX_CHARS = 2_000_000_000  # nanochat's tokenizer budget; small corpora are simply read whole
DOC_CAP_CHARS = 10_000  # per-document cap while training, so a few huge documents cannot dominate the merges
FORMAT_VERSION = 1


class Tokenizer:
    """A trained byte-level BPE tokenizer with nanochat's special tokens."""

    def __init__(self, hf: HFTokenizer):
        self._tok = hf
        self._tok.encode_special_tokens = True  # "<|bos|>" in text is text, not the BOS token
        self._special = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in self._special.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {', '.join(missing)}")
        self.bos_id = self._special["<|bos|>"]
        self._token_bytes: torch.Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def special_id(self, token: str) -> int:
        try:
            return self._special[token]
        except KeyError:
            raise ValueError(f"unknown special token {token!r}: expected one of {', '.join(SPECIAL_TOKENS)}") from None

    def _id(self, token: int | str) -> int:
        return self.special_id(token) if isinstance(token, str) else int(token)

    def encode(self, text: str, prepend: int | str | None = None, append: int | str | None = None) -> list[int]:
        """Token ids of `text` (as plain text); `prepend`/`append` add one token id (or special token name)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if prepend is not None:
            ids.insert(0, self._id(prepend))
        if append is not None:
            ids.append(self._id(append))
        return ids

    def encode_batch(self, texts: list[str], prepend: int | str | None = None) -> list[list[int]]:
        """Encode many texts at once on all cores (the Rust side releases the GIL)."""
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        if prepend is None:
            return [e.ids for e in encodings]
        first = self._id(prepend)
        return [[first, *e.ids] for e in encodings]

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_token(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id)

    def token_bytes(self) -> torch.Tensor:
        """int32 (vocab_size,): UTF-8 bytes each token stands for, 0 for special tokens (bits-per-byte needs it)."""
        if self._token_bytes is None:
            specials = set(self._special.values())
            # Byte-level BPE spells every byte as exactly one character, so a token's string length is its bytes.
            self._token_bytes = torch.tensor(
                [0 if i in specials else len(self._tok.id_to_token(i)) for i in range(self.vocab_size)],
                dtype=torch.int32)
        return self._token_bytes

    # -- chat format ----------------------------------------------------------------------------------------------

    def render_conversation(self, messages: list[dict] | dict, max_tokens: int | None = None,
                            ) -> tuple[list[int], list[int]]:
        """Token ids of a conversation and a mask that is 1 where the model is trained to produce the token.

        Trained: assistant text, python tool calls with their delimiters, <|assistant_end|>. Not trained: BOS, user
        turns, <|assistant_start|>, and tool output (the tool writes it, not the model).
        """
        messages = _normalize(messages)
        ids, mask = [self.bos_id], [0]

        def add(tokens: list[int], trained: int) -> None:
            ids.extend(tokens)
            mask.extend([trained] * len(tokens))

        for i, message in enumerate(messages):
            content = message["content"]
            if message["role"] == "user":
                if not isinstance(content, str):
                    raise ValueError(f"message {i}: user content must be a string, got {type(content).__name__}")
                add([self._special["<|user_start|>"], *self.encode(content), self._special["<|user_end|>"]], 0)
                continue
            add([self._special["<|assistant_start|>"]], 0)
            if isinstance(content, str):
                add(self.encode(content), 1)
            elif isinstance(content, list):
                for part in content:
                    kind = part.get("type") if isinstance(part, dict) else None
                    text = part.get("text") if isinstance(part, dict) else None
                    if not isinstance(text, str):
                        raise ValueError(f"message {i}: each assistant part needs a string 'text', got {part!r:.80}")
                    if kind == "text":
                        add(self.encode(text), 1)
                    elif kind == "python":
                        add([self._special["<|python_start|>"], *self.encode(text), self._special["<|python_end|>"]], 1)
                    elif kind == "python_output":
                        add([self._special["<|output_start|>"], *self.encode(text), self._special["<|output_end|>"]], 0)
                    else:
                        raise ValueError(f"message {i}: unknown assistant part type {kind!r}: expected text, python "
                                         "or python_output")
            else:
                raise ValueError(f"message {i}: assistant content must be a string or a list of parts, "
                                 f"got {type(content).__name__}")
            add([self._special["<|assistant_end|>"]], 1)
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def render_for_completion(self, messages: list[dict] | dict) -> list[int]:
        """The prompt for the assistant's next reply: the conversation, then <|assistant_start|>.

        The last message must be the user's; a trailing assistant message is dropped first (so a finished
        conversation can be used to regenerate its last answer).
        """
        messages = _normalize(messages)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        ids, _ = self.render_conversation(messages)
        return [*ids, self._special["<|assistant_start|>"]]

    # -- persistence ----------------------------------------------------------------------------------------------

    def save(self, directory: str | Path, meta: dict | None = None) -> None:
        """Write tokenizer.json, token_bytes.pt and meta.json into `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        torch.save(self.token_bytes(), directory / "token_bytes.pt")
        info = {"format_version": FORMAT_VERSION, "vocab_size": self.vocab_size, "special_tokens": SPECIAL_TOKENS,
                "split_pattern": SPLIT_PATTERN, **(meta or {})}
        (directory / "meta.json").write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {directory} (expected {path})")
        try:
            tok = cls(HFTokenizer.from_file(str(path)))
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"broken tokenizer at {path}: {reason}") from None
        bytes_path = directory / "token_bytes.pt"
        if bytes_path.is_file():
            try:
                saved = torch.load(bytes_path, weights_only=True)
            except Exception:
                raise ValueError(f"broken token_bytes file {bytes_path}") from None
            if not isinstance(saved, torch.Tensor) or saved.shape != (tok.vocab_size,):
                raise ValueError(f"token_bytes file {bytes_path} does not match the tokenizer's "
                                 f"{tok.vocab_size} tokens")
            tok._token_bytes = saved.to(torch.int32)
        return tok


def _normalize(messages: list[dict] | dict) -> list[dict]:
    """Validate roles and fold a leading system message into the first user message."""
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation must be a non-empty list of {'role', 'content'} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
    if messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user" or not isinstance(messages[0]["content"], str):
            raise ValueError("a system message must be a string followed by a user message")
        merged = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        messages = [merged, *messages[2:]]
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"message {i} has role {m['role']!r}, expected {expected!r}: roles must alternate "
                             "user/assistant (after an optional leading system message)")
    return messages


# ----------------------------------------------------------------------------------------------------------------
# Training and the cache


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer of `vocab_size` tokens (special tokens included) on `texts`."""
    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size < floor:
        raise ValueError(f"vocab_size {vocab_size} is too small: need at least {floor} (256 bytes + special tokens)")
    hf = HFTokenizer(BPE(unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=0,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=SPECIAL_TOKENS)
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def cached_tokenizer_dir(source: DataSource, vocab_size: int, max_chars: int = DEFAULT_MAX_CHARS) -> Path:
    """Where get_tokenizer keeps the tokenizer for (source content, vocab size, character budget)."""
    return nanoresearch_home() / "tokenizers" / f"{source.fingerprint()}-v{vocab_size}-c{max_chars}"


def _training_texts(source: DataSource, max_chars: int, stats: dict, progress: bool) -> Iterator[str]:
    """The train split in file order, each document capped at DOC_CAP_CHARS, until max_chars are read."""
    from tqdm import tqdm

    bar = tqdm(total=max_chars, unit="char", unit_scale=True, desc="reading text for the tokenizer",
               disable=not progress, file=sys.stderr)
    try:
        for _, text in source.iter_texts("train"):
            text = text[:max(0, min(DOC_CAP_CHARS, max_chars - stats["chars"]))]
            if not text:
                if stats["chars"] >= max_chars:
                    return
                continue
            stats["chars"] += len(text)
            stats["docs"] += 1
            bar.update(len(text))
            yield text
    finally:
        bar.close()


def get_tokenizer(source: DataSource | str | None, vocab_size: int, max_chars: int = DEFAULT_MAX_CHARS,
                  progress: bool = True) -> Tokenizer:
    """The tokenizer for (data, vocab_size, max_chars): loaded from the cache, or trained on the TRAIN split once.

    Concurrent callers (torchrun ranks, parallel jobs) serialize on a lock file; the winner trains into a temp
    directory and renames it into place, so nobody ever reads a half-written tokenizer.
    """
    if not isinstance(source, DataSource):
        source = resolve_source(source)
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    final = cached_tokenizer_dir(source, vocab_size, max_chars)
    if final.exists():
        return Tokenizer.load(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists():  # someone else trained it while we waited
            return Tokenizer.load(final)
        stats = {"chars": 0, "docs": 0}
        t0 = time.time()
        tok = train_tokenizer(_training_texts(source, max_chars, stats, progress), vocab_size)
        if stats["chars"] == 0:
            raise ValueError(f"the train split of {source.name!r} has no text to train a tokenizer on")
        if progress:
            print(f"trained a {vocab_size}-token tokenizer on {stats['chars']:,} characters ({stats['docs']:,} "
                  f"documents) of {source.name} in {time.time() - t0:.1f}s", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            tok.save(tmp, meta={"source": source.name, "fingerprint": source.fingerprint(), "max_chars": max_chars,
                                "trained_chars": stats["chars"], "trained_docs": stats["docs"]})
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return tok


# ----------------------------------------------------------------------------------------------------------------
# CLI


def _eval(args: argparse.Namespace) -> None:
    source = resolve_source(args.data)
    if args.tokenizer:
        tok, label = Tokenizer.load(args.tokenizer), args.tokenizer
    else:
        tok = get_tokenizer(source, args.vocab_size, args.max_chars)
        label = str(cached_tokenizer_dir(source, args.vocab_size, args.max_chars))
    chars = nbytes = tokens = docs = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal tokens
        tokens += sum(len(ids) for ids in tok.encode_batch(batch))
        batch.clear()

    for _, text in source.iter_texts("val"):
        batch.append(text)
        chars, nbytes, docs = chars + len(text), nbytes + len(text.encode("utf-8")), docs + 1
        if len(batch) == 256:
            flush()
        if chars >= args.eval_chars:
            break
    flush()
    if tokens == 0:
        raise ValueError(f"the val split of {source.name!r} is empty")
    print(f"tokenizer {label} (vocab {tok.vocab_size}) on the val split of {source.name}: "
          f"{docs:,} documents, {chars:,} characters, {tokens:,} tokens")
    print(f"chars/token {chars / tokens:.3f}   bytes/token {nbytes / tokens:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.tokenizer", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or reuse from the cache) a tokenizer on a source's train split")
    train.add_argument("--data", help="data spec (default: $NANORESEARCH_DATA or fineweb-edu)")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="training characters to read")
    train.add_argument("--out", help="also save the tokenizer to this directory")
    ev = sub.add_parser("eval", help="compression (chars/token, bytes/token) on a source's val split")
    ev.add_argument("--data", help="data spec (default: $NANORESEARCH_DATA or fineweb-edu)")
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument("--vocab-size", type=int, help="use the cached tokenizer trained on --data")
    which.add_argument("--tokenizer", help="a saved tokenizer directory")
    ev.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="training budget of the cached tokenizer")
    ev.add_argument("--eval-chars", type=int, default=5_000_000, help="val characters to evaluate on")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            source = resolve_source(args.data)
            directory = cached_tokenizer_dir(source, args.vocab_size, args.max_chars)
            reused = directory.exists()
            tok = get_tokenizer(source, args.vocab_size, args.max_chars)
            print(f"{'reused the cached' if reused else 'trained a'} {tok.vocab_size}-token tokenizer: {directory}")
            if args.out:
                tok.save(args.out, meta=json.loads((directory / "meta.json").read_text()))
                print(f"saved a copy to {args.out}")
        else:
            _eval(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run the copy imported as model.tokenizer, so its classes are the ones every other module sees (not __main__'s).
    from model.tokenizer import main as _main

    sys.exit(_main())
