"""
`python -m harness.chat --run RUN_DIR`: talk to a trained model.

    python -m harness.chat --run runs/d4 -p "What is 12*7?"     # one shot: print the answer, exit
    python -m harness.chat --run runs/d4                        # REPL: `> ` prompt, /reset, /quit or EOF
    python -m harness.chat --best [--track cpu]                 # the best run found so far (see below)

--best asks the leaderboard (--db, else NANORESEARCH_DB) which run is best (`leaderboard.views.best_runs`): the best seed of
the fastest record entry of the track (without --track: of every track, the deepest model's first), else of the
other entries, else the best search result (the deepest model first, then the search's own ranking of best --
furthest up the ladder, lowest mean paired difference there -- among experiments a search promoted or passed, and
the searches' baselines after them). Run dirs live where they were made: the first of those runs whose
run dir has a checkpoint on this machine is loaded, and a line on stderr says which and why.

Which model: RUN_DIR itself when it is a chat run (config.json has "chat": true), else its chat run RUN_DIR/chat/
when there is one (made by `python -m model.sft --from RUN_DIR`), else the base model of RUN_DIR. A line on
stderr says which was loaded. A chat model keeps the conversation (rendered with the chat format, every turn
in the prompt of the next) and shows its calculator calls inline as `[calc 12*7 = 84]`. A base model has no chat
format: each input is a text prefix and its continuation is streamed, with no history.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from model.checkpoint import latest_checkpoint, load_model
from model.cli import ArgumentParser
from model.engine import Engine, ReplyStream
from model.run_dir import CONFIG, RunDirError, load_config


def resolve_run(run_dir: Path) -> tuple[Path, bool]:
    """(the dir to load, whether it is a chat model) for a --run argument."""
    if not (run_dir / CONFIG).is_file():
        raise RunDirError(f"--run {run_dir}: no {CONFIG} (expected a run dir made by model.train or model.sft)")
    if load_config(run_dir).get("chat") is True:
        return run_dir, True
    chat = run_dir / "chat"
    if (chat / CONFIG).is_file() and load_config(chat).get("chat") is True:
        return chat, True
    return run_dir, False


@dataclass
class ChatSession:
    """One conversation with a loaded model (chat mode), or a series of independent completions (base mode)."""
    model: torch.nn.Module
    tokenizer: object
    chat: bool
    temperature: float = 0.6
    top_k: int | None = 50
    max_tokens: int = 256
    seed: int = 42
    history: list[dict] = field(default_factory=list)
    last_prompt: list[int] = field(default_factory=list)
    show_prompt: bool = False  # print each rendered prompt to `notes` (see what the model is given)
    notes: TextIO | None = None  # where notes go; None = the current sys.stderr

    def __post_init__(self):
        self.engine = Engine(self.model, self.tokenizer)
        self.turns = 0

    def reset(self) -> None:
        self.history.clear()

    def prompt_for(self, user_text: str) -> list[int]:
        if not self.chat:
            return self.tokenizer.encode(user_text, prepend=self.tokenizer.bos_id)
        messages = [*self.history, {"role": "user", "content": user_text}]
        ids = self.tokenizer.render_for_completion(messages)
        limit = getattr(self.model, "rotary_len", None)
        while limit is not None and len(ids) + self.max_tokens > limit and len(messages) > 1:
            messages = messages[2:]  # the oldest exchange goes first
            ids = self.tokenizer.render_for_completion(messages)
            print("(the oldest turn was dropped to fit the model's context)", file=self.notes or sys.stderr)
        return ids

    def respond(self, user_text: str, out: TextIO) -> str:
        """Stream the reply to `out`; in chat mode add the exchange to the history. Returns the reply text."""
        ids = self.prompt_for(user_text)
        limit = getattr(self.model, "rotary_len", None)
        max_tokens = self.max_tokens
        if limit is not None and len(ids) + max_tokens > limit:
            ids = ids[-max(1, limit // 2):]  # one turn longer than the context: keep its end
            max_tokens = limit - len(ids)
        self.last_prompt = ids
        if self.show_prompt:
            print(f"[prompt] {self.tokenizer.decode(ids)}", file=self.notes or sys.stderr, flush=True)
        stream = ReplyStream(self.tokenizer)
        stops = self.engine.default_stops
        for column, masks in self.engine.generate(ids, max_tokens=max_tokens, temperature=self.temperature,
                                                  top_k=self.top_k, seed=self.seed + self.turns):
            token, mask = column[0], masks[0]
            if token is None or (mask == 1 and token in stops):
                break
            out.write(stream.feed(token, mask))
            out.flush()
        out.write(stream.finish())
        out.flush()
        self.turns += 1
        if self.chat:
            self.history += [{"role": "user", "content": user_text},
                             {"role": "assistant", "content": stream.parts or [{"type": "text", "text": ""}]}]
        return stream.text


def repl(session: ChatSession, stdin: TextIO, stdout: TextIO) -> None:
    """Read lines until /quit or EOF; /reset clears the conversation."""
    while True:
        stdout.write("> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # EOF
            stdout.write("\n")
            return
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            return
        if line == "/reset":
            session.reset()
            stdout.write("(conversation cleared)\n")
            continue
        session.respond(line, stdout)
        stdout.write("\n")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m harness.chat", description="Chat with (or complete text from) a trained model.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a run dir: its chat model when it has one, else its base model")
    which.add_argument("--best", action="store_true", help="the best run in the leaderboard with a checkpoint here")
    p.add_argument("--track", default=None, help="with --best: the best of this leaderboard track")
    p.add_argument("--db", default=None, help="with --best: database URL (env NANORESEARCH_DB; default sqlite:///nanoresearch.db)")
    p.add_argument("-p", "--prompt", default=None, help="one prompt: print the reply and exit")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens per reply")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--show-prompt", action="store_true", help="print each rendered prompt to stderr")
    return p


def has_checkpoint(run_dir: Path) -> bool:
    return any((d / CONFIG).is_file() and latest_checkpoint(d) is not None for d in (run_dir, run_dir / "chat"))


def best_run(db: str | None, track: str | None) -> tuple[Path, dict, int]:
    """(run dir, its leaderboard row with `why`, how many better-ranked runs have no checkpoint on this machine)."""
    from leaderboard import LeaderboardError, Store
    from leaderboard.views import best_runs
    try:
        with Store(db, read_only=True) as store:
            if store.schema_version == 0:
                raise ValueError(f"--best: {store.url_text} holds no leaderboard yet (run a search or a speedrun first)")
            tracks = [t["name"] for t in store.tracks()]
            if track is not None and track not in tracks:
                raise ValueError(f"--track {track!r}: no such track in {store.url_text} (expected one of "
                                 f"{', '.join(tracks) or 'none: run a speedrun first'})")
            candidates = best_runs(store, track)
    except LeaderboardError as e:
        raise ValueError(f"--best: {e}") from None
    for skipped, row in enumerate(candidates):
        if has_checkpoint(Path(row["run_dir"])):
            return Path(row["run_dir"]), row, skipped
    raise RunDirError(f"--best: none of the {len(candidates)} ranked runs{f' of track {track!r}' if track else ''} in "
                      f"{store.url_text} has a checkpoint on this machine (expected run dirs made here; or use --run)")


def load_session(args: argparse.Namespace) -> ChatSession:
    best, track = getattr(args, "best", False), getattr(args, "track", None)  # callers may build args by hand
    if track is not None and not best:
        raise ValueError(f"--track {track}: only with --best")
    if not (args.temperature >= 0):
        raise ValueError(f"--temperature {args.temperature}: expected a number >= 0")
    if args.top_k < 0:
        raise ValueError(f"--top-k {args.top_k}: expected a non-negative integer (0 = no limit)")
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens {args.max_tokens}: expected a positive integer")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if best:
        run_dir, row, skipped = best_run(getattr(args, "db", None), track)
        print(f"chat: best run {run_dir} (experiment {row['experiment_id']}, rung {row['rung']}, seed {row['seed']}): "
              f"{row['why']}" + (f"; {skipped} better-ranked runs have no checkpoint here" if skipped else ""),
              file=sys.stderr)
        args.run = str(run_dir)
    run_dir, chat = resolve_run(Path(args.run))
    try:
        model, tokenizer, meta = load_model(run_dir, device)
    except RunDirError:
        raise
    except Exception as e:  # noqa: BLE001 - any unloadable checkpoint is reported in one line
        raise RunDirError(f"--run {run_dir}: cannot load the model ({type(e).__name__}: {e})") from None
    kind = "chat" if chat else "base (plain text completion)"
    print(f"chat: loaded {run_dir} (step {meta.get('step')}, {kind}) on {device}", file=sys.stderr)
    return ChatSession(model, tokenizer, chat, temperature=args.temperature, top_k=args.top_k or None,
                       max_tokens=args.max_tokens, seed=args.seed, show_prompt=args.show_prompt)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        session = load_session(args)
    except (RunDirError, ValueError, OSError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    try:
        if args.prompt is not None:
            session.respond(args.prompt, sys.stdout)
            sys.stdout.write("\n")
            return 0
        repl(session, sys.stdin, sys.stdout)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
