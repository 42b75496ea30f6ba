"""
Generation: prefill the prompt once into a KV cache, then decode token by token, with the calculator tool.

    engine = Engine(model, tokenizer)
    for tokens, masks in engine.generate(prompt_ids, num_samples=4, max_tokens=128, temperature=0.8, top_k=50):
        ...  # tokens[i]: the next token of sample i (None once it has finished); masks[i]: 1 sampled, 0 forced
    completions, masks = engine.generate_batch(prompt_ids, num_samples=4)

The prompt is run once at batch 1; the cache is then expanded to `num_samples` rows (`KVCache.expand`) so every
sample continues from the same prefix independently. The model itself handles sliding windows, grouped-query
attention and smear's previous-token state through the cache, so cached decoding computes exactly what a full
recompute of the sequence computes (tested, and `use_cache=False` keeps that slow path for comparison).

Sampling: temperature 0 is greedy (argmax); otherwise softmax(logits / temperature), optionally restricted to the
top_k logits, drawn from a generator seeded by `seed` (same seed, same samples). A sample ends when it emits a
stop token (`<|assistant_end|>` or `<|bos|>` by default); it is no longer advanced after that (its rows still
sit in the batch, but their inputs are dummies and their outputs are ignored).

The calculator tool: when a sample emits `<|python_start|>`, its tokens up to `<|python_end|>` are decoded and
passed to `model.calculator.run_calculator`. If it returns a result, `<|output_start|>` + the result's tokens +
`<|output_end|>` are forced into that sample's stream: they are yielded with mask 0 and fed through the model
like any other token (the model's own prediction at those steps is discarded). A refused or failing expression
forces nothing: the sample just continues after `<|python_end|>`, and the model sees no output block.

`ReplyStream` turns one sample's (token, mask) stream into display text (calls shown as `[calc 12*7 = 84]`) and
into the assistant message's parts, for whatever shows replies (the chat CLI, the dashboard's Chat page).

`python -m model.engine bench --run RUN_DIR [--depth 4 --sequence-len 512]` measures decode tokens/s with and
without the KV cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from model.calculator import run_calculator
from model.kv_cache import KVCache
from model.tokenizer import SPECIAL_TOKENS

DEFAULT_STOP_TOKENS = ("<|assistant_end|>", "<|bos|>")


@dataclass
class _SampleState:
    """Per-sample bookkeeping for the tool and for stopping."""
    forced: deque[int] = field(default_factory=deque)  # tool output still to be forced into the stream
    python_tokens: list[int] | None = None  # the expression being collected, between python_start and python_end
    done: bool = False


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator) -> torch.Tensor:
    """One token id per row of logits (B, V): greedy at temperature 0, else temperature/top-k sampling."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        values, indices = torch.topk(logits, top_k, dim=-1)
        choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)
        return indices.gather(-1, choice).squeeze(-1)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


class Engine:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        special = tokenizer.special_id
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")
        self.default_stops = frozenset(special(t) for t in DEFAULT_STOP_TOKENS)

    def _check_request(self, tokens, num_samples, max_tokens, temperature, top_k) -> None:
        vocab = self.model.config.vocab_size
        if not isinstance(tokens, list | tuple) or not tokens:
            raise ValueError("the prompt must be a non-empty list of token ids")
        bad = [t for t in tokens if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token {bad[0]!r} is not a token id in [0, {vocab})")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r}: expected a positive integer")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens!r}: expected a positive integer")
        if not temperature >= 0:
            raise ValueError(f"temperature={temperature!r}: expected a number >= 0")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k={top_k!r}: expected a positive integer or None")
        limit = getattr(self.model, "rotary_len", None)  # positions the model has rotary tables for
        if limit is not None and len(tokens) + max_tokens > limit:
            raise ValueError(f"prompt ({len(tokens)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                             f"{limit} positions")

    @torch.no_grad()
    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int = 256, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 42, stop_tokens: Iterable[int] | None = None,
                 use_cache: bool = True) -> Iterator[tuple[list[int | None], list[int]]]:
        """Stream (tokens, masks), one entry per sample, at every step until all samples stop or max_tokens steps.

        tokens[i] is sample i's next token (None once it has finished); masks[i] is 1 for a sampled token, 0 for
        a token forced by the calculator tool (and for finished samples). The stop token that ends a sample is
        yielded. stop_tokens defaults to <|assistant_end|> and <|bos|>; pass () to generate exactly max_tokens.
        use_cache=False recomputes the whole sequence at every step (the reference the cache is tested against).
        """
        self._check_request(tokens, num_samples, max_tokens, temperature, top_k)
        stops = self.default_stops if stop_tokens is None else frozenset(stop_tokens)
        device = self.model.device
        generator = torch.Generator(device=device).manual_seed(seed)
        prompt = torch.tensor([list(tokens)], dtype=torch.long, device=device)

        if use_cache:
            cache = KVCache.for_model(self.model, batch_size=1, max_len=len(tokens) + max_tokens)
            logits = self.model(prompt, kv_cache=cache)[:, -1]
            cache = cache.expand(num_samples)
            logits = logits.expand(num_samples, -1)
        else:
            sequence = prompt.expand(num_samples, -1)
            logits = self.model(sequence)[:, -1]

        states = [_SampleState() for _ in range(num_samples)]
        dummy = self.tokenizer.bos_id  # fed to finished samples; what they predict is ignored
        for step in range(max_tokens):
            sampled = sample_next(logits, temperature, top_k, generator).tolist()
            column: list[int | None] = []
            masks: list[int] = []
            for state, token in zip(states, sampled):
                if state.done:
                    column.append(None)
                    masks.append(0)
                    continue
                if state.forced:
                    token, mask = state.forced.popleft(), 0
                else:
                    mask = 1
                    self._track_tool(state, token)
                    state.done = token in stops
                column.append(token)
                masks.append(mask)
            yield column, masks
            if all(s.done for s in states) or step == max_tokens - 1:
                return
            fed = torch.tensor([[dummy if t is None else t] for t in column], dtype=torch.long, device=device)
            if use_cache:
                logits = self.model(fed, kv_cache=cache)[:, -1]
            else:
                sequence = torch.cat([sequence, fed], dim=1)
                logits = self.model(sequence)[:, -1]

    def _track_tool(self, state: _SampleState, token: int) -> None:
        """Follow a sampled token through the tool's states; queue the calculator's output after python_end."""
        if token == self.python_start:
            state.python_tokens = []
        elif token == self.python_end and state.python_tokens is not None:
            expression = self.tokenizer.decode(state.python_tokens)
            state.python_tokens = None
            result = run_calculator(expression)
            if result is not None:  # refused or failed: nothing is forced
                state.forced.extend([self.output_start, *self.tokenizer.encode(result), self.output_end])
        elif state.python_tokens is not None:
            state.python_tokens.append(token)

    def generate_batch(self, tokens: list[int], num_samples: int = 1, **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """Run `generate` to the end: per sample, its generated tokens (the prompt and the final stop token
        excluded) and their masks (1 sampled, 0 forced by the tool)."""
        stops = self.default_stops if kwargs.get("stop_tokens") is None else frozenset(kwargs["stop_tokens"])
        results: list[list[int]] = [[] for _ in range(num_samples)]
        masks: list[list[int]] = [[] for _ in range(num_samples)]
        for column, column_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks)):
                if token is None or (mask == 1 and token in stops):
                    continue
                results[i].append(token)
                masks[i].append(mask)
        return results, masks


# ----------------------------------------------------------------------------------------------------------------
# Showing a reply: the CLI (harness.chat) and the dashboard's Chat page both stream through this.


class ReplyStream:
    """Turns the engine's (token, mask) stream of one reply into display text, and into the assistant message's
    parts (text, python call, python output) so the reply can be put back into the conversation faithfully.

    Text is decoded incrementally: a byte-level token can end in the middle of a UTF-8 character, so the
    undecodable tail (U+FFFD) is held back until the next token completes it."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        sid = tokenizer.special_id
        self.python_start, self.python_end = sid("<|python_start|>"), sid("<|python_end|>")
        self.output_start, self.output_end = sid("<|output_start|>"), sid("<|output_end|>")
        # Special tokens the model samples out of place (a <|python_end|> with no call open, a <|bos|> mid-reply)
        # are markup, never text: they are not shown and not kept in the reply's parts.
        self.specials = frozenset(sid(t) for t in SPECIAL_TOKENS)
        self.parts: list[dict] = []
        self._text: list[int] = []   # tokens of the current text part
        self._shown = 0              # characters of the current text part already displayed
        self._python: list[int] | None = None
        self._output: list[int] | None = None
        self._pending_call: str | None = None  # a finished python call whose output may follow
        self._display: list[str] = []

    def feed(self, token: int, mask: int) -> str:
        """Consume one token; return the text to display now."""
        delta = self._feed(token, mask)
        self._display.append(delta)
        return delta

    def finish(self) -> str:
        """End of the reply: flush whatever is still held back."""
        delta = ""
        if self._pending_call is not None or self._output is not None:
            delta += self._close_call(None if self._output is None else self.tok.decode(self._output))
        if self._python is not None:  # a call the reply never closed
            delta += self._abandon_call()
        delta += self._flush_text(final=True)
        self._display.append(delta)
        return delta

    @property
    def text(self) -> str:
        """Everything displayed so far: the reply as plain text, calls shown as [calc ...]."""
        return "".join(self._display)

    def _feed(self, token: int, mask: int) -> str:
        if self._output is not None:  # inside the tool's forced output block
            if token == self.output_end:
                return self._close_call(self.tok.decode(self._output))
            self._output.append(token)
            return ""
        shown = ""
        if self._pending_call is not None:
            if token == self.output_start and mask == 0:
                self._output = []
                return ""
            shown = self._close_call(None)  # no output followed the call: the calculator refused it
        if self._python is not None:
            if token == self.python_end:
                self._pending_call, self._python = self.tok.decode(self._python), None
            elif token == self.python_start:  # a new call before this one ended: the engine drops this one too
                shown += self._abandon_call()
                self._python = []
            elif token not in self.specials:
                self._python.append(token)
            return shown
        if token == self.python_start:
            self._python = []
            return shown + self._flush_text(final=True)
        if token in self.specials:
            return shown
        self._text.append(token)
        return shown + self._flush_text(final=False)

    def _flush_text(self, final: bool) -> str:
        text = self.tok.decode(self._text)
        end = len(text) if final else len(text.rstrip("\ufffd"))
        delta, self._shown = text[self._shown:end], max(self._shown, end)
        if final:
            if text:
                self.parts.append({"type": "text", "text": text})
            self._text, self._shown = [], 0
        return delta

    def _abandon_call(self) -> str:
        expression, self._python = self.tok.decode(self._python), None
        self.parts.append({"type": "python", "text": expression})
        return f"[calc {expression} ...]"

    def _close_call(self, output: str | None) -> str:
        expression, self._pending_call, self._output = self._pending_call, None, None
        self.parts.append({"type": "python", "text": expression})
        if output is None:
            return f"[calc {expression} = refused]"
        self.parts.append({"type": "python_output", "text": output})
        return f"[calc {expression} = {output}]"


# ----------------------------------------------------------------------------------------------------------------
# Benchmark: decode speed with and without the KV cache.


def _bench_model(args: argparse.Namespace, device: torch.device):
    """The run's trained model, or (with --depth/--sequence-len) a random-init model of the run's shape family."""
    from model.checkpoint import load_model
    from model.config import ModelConfig
    from model.gpt import GPT
    from model.tokenizer import Tokenizer

    if args.depth is None and args.sequence_len is None:
        model, tokenizer, _ = load_model(args.run, device)
        return model, tokenizer, "trained"
    from pathlib import Path

    from model.run_dir import TOKENIZER_DIR, load_config

    base = load_config(args.run)["model"]
    keep = {k: base[k] for k in ("vocab_size", "head_dim", "window_pattern", "smear", "value_embeds", "backout")}
    config = ModelConfig.from_depth(args.depth or base["depth"], sequence_len=args.sequence_len or base["sequence_len"],
                                    **keep)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config).eval()
    return model, Tokenizer.load(Path(args.run) / TOKENIZER_DIR), "random-init"


def _bench(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer, kind = _bench_model(args, device)
    c = model.config
    engine = Engine(model, tokenizer)
    g = torch.Generator().manual_seed(0)
    first_plain = 1 + max(tokenizer.special_id(t) for t in SPECIAL_TOKENS)  # specials take the lowest ids
    prompt = torch.randint(first_plain, c.vocab_size, (args.prompt_tokens,), generator=g).tolist()
    print(f"bench: {kind} depth {c.depth} dim {c.model_dim} heads {c.n_head}/{c.n_kv_head} seq_len {c.sequence_len} "
          f"windows {c.window_pattern} | prompt {len(prompt)} tokens, decode {args.tokens} tokens greedy on {device}",
          file=sys.stderr)

    def timed(use_cache: bool) -> tuple[float, list[int]]:
        out: list[int] = []
        t0 = time.perf_counter()
        for column, _ in engine.generate(prompt, max_tokens=args.tokens, temperature=0.0, stop_tokens=(),
                                         use_cache=use_cache):
            out.append(column[0])
            if len(out) % 128 == 0:
                rate = len(out) / (time.perf_counter() - t0)
                print(f"  {'cache' if use_cache else 'no cache'}: {len(out)}/{args.tokens} tokens, {rate:.1f} tok/s, "
                      f"eta {(args.tokens - len(out)) / rate:.0f}s", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    timed(True)  # warm-up (allocator, kernels)
    results = {}
    for use_cache in (True, False):
        seconds, out = timed(use_cache)
        results[use_cache] = out
        print(f"{'with KV cache' if use_cache else 'without cache (full recompute)'}: {args.tokens / seconds:.1f} "
              f"tokens/s ({seconds:.2f}s for {args.tokens} tokens)")
    print(f"identical greedy tokens: {results[True] == results[False]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from model.cli import ArgumentParser

    parser = ArgumentParser(prog="python -m model.engine", description="KV-cache generation with the calculator tool.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="decode tokens/s with and without the KV cache")
    bench.add_argument("--run", required=True, help="run dir: its model, or with --depth/--sequence-len its tokenizer "
                       "and shape family for a random-init model")
    bench.add_argument("--depth", type=int, default=None, help="random-init model of this depth")
    bench.add_argument("--sequence-len", type=int, default=None, help="random-init model of this sequence length")
    bench.add_argument("--tokens", type=int, default=512, help="tokens to decode")
    bench.add_argument("--prompt-tokens", type=int, default=16)
    bench.add_argument("--device", choices=["cpu", "cuda"], default=None)
    args = parser.parse_args(argv)
    from model.config import ConfigError
    from model.run_dir import RunDirError
    try:
        if args.tokens < 1 or args.prompt_tokens < 1:
            raise ValueError(f"--tokens {args.tokens} / --prompt-tokens {args.prompt_tokens}: expected positive integers")
        return _bench(args)
    except (RunDirError, ConfigError, ValueError, OSError, KeyError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    from model.engine import main as _main  # the copy other modules import, not __main__'s

    sys.exit(_main())
