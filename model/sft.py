"""
`python -m model.sft --from RUN_DIR`: supervised fine-tuning of a base model into a chat model, then a chat eval.

    python -m model.sft --from runs/d4 --chat-data ../shared/data/chat --num-iterations 200

Data: conversations rendered with the tokenizer's chat format and loss mask (only the assistant's tokens are
trained: its text, its calculator calls, <|assistant_end|>), best-fit packed into rows of sequence_len + 1 tokens,
the rest of a row padded with BOS whose targets are -1. The mixture, from --chat-data (or $NANORESEARCH_CHAT_DATA):
- identity_conversations.jsonl: who the assistant is (multi-turn);
- chatterbot_english.jsonl.gz: small talk;
- gsm8k/train.jsonl: grade-school math with calculator calls: every `<<48/2=24>>` annotation of an answer becomes
  a python part ("48/2") and its output part ("24"), the final `#### 72` stays in the final text;
- multiple choice (ARC-Easy/Challenge validation, MMLU dev + validation: the splits there are no train splits
  for, and never the test splits the eval uses): the format of the letter-choice eval;
- online, SmolTalk (HuggingFaceTB/smol-smoltalk via `datasets`), skipped with a message when unreachable.
Every source is taken once and the mixture shuffled (seeded); --val-conversations of it are held out for the
validation loss.

Optimization: `build_optimizer` with the base run's OptimConfig and batch size, every LR scaled by --lr-scale
(default 0.8, nanochat's SFT fraction of the pretraining LRs: the model is already trained, a full LR would undo
too much of it), then linearly to 0 over the run; no weight decay (the base run already annealed it to zero);
Muon momentum at the base recipe's final value. Default horizon: one epoch of the mixture. One process (no
torchrun): SFT is a small fraction of the pretraining compute.

Out (--out, default RUN_DIR/chat), the run-dir contract of model.train: config.json (the base config with
"chat": true, "base_run" and "sft" settings), metrics.jsonl, result.json (status, val_loss/val_bpb on the held-out
conversations, the chat eval), checkpoints/, tokenizer/; `model.checkpoint.load_model` loads it.

Chat eval (--eval-examples per task, a seeded random subset of each test split): ARC-Easy, ARC-Challenge and MMLU
as letter-choice accuracy (the question with lettered choices in a user turn; the answer is the argmax over the
letters' logits right after <|assistant_start|>), GSM8K as exact match of the final `#### number`, generated
greedily through the engine with the calculator. ChatCORE is the mean of the accuracies centered on chance (1/4
for the letter tasks, 0 for GSM8K). Written to result.json and chat_eval.json.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import random
import re
import shlex
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from model import run_dir as rd
from model.checkpoint import load_model, save_checkpoint
from model.cli import ArgumentParser
from model.config import OptimConfig
from model.engine import Engine
from model.optim import build_optimizer

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3
LETTERS = "ABCDEFGHIJ"
SMOLTALK = "HuggingFaceTB/smol-smoltalk"

Conversation = list[dict]


class BadInput(ValueError):
    """Reported as one line on stderr, exit code 2, nothing written."""


def log(message: str) -> None:
    print(f"sft: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Chat data: sources -> conversations

def read_jsonl(path: Path) -> list:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


_CALC = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


def gsm8k_conversation(question: str, answer: str) -> Conversation:
    """A GSM8K problem as a conversation whose answer calls the calculator at every `<<expr=result>>`."""
    parts: list[dict] = []
    position = 0
    for match in _CALC.finditer(answer):
        if match.start() > position:
            parts.append({"type": "text", "text": answer[position:match.start()]})
        parts.append({"type": "python", "text": match.group(1)})
        parts.append({"type": "python_output", "text": match.group(2)})
        position = match.end()
    if position < len(answer):
        parts.append({"type": "text", "text": answer[position:]})  # ends with "#### <answer>"
    return [{"role": "user", "content": question}, {"role": "assistant", "content": parts}]


def multiple_choice_prompt(question: str, choices: list[str]) -> str:
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 2 to {len(LETTERS)} choices, got {len(choices)}")
    # The letter starts its line (no space before it), so it is the same token as the one-letter answer.
    lines = [f"{letter}) {choice}" for letter, choice in zip(LETTERS, choices)]
    return f"{question}\n\n" + "\n".join(lines) + "\n\nAnswer with the letter of the correct choice."


@dataclasses.dataclass
class MultipleChoice:
    question: str
    choices: list[str]
    answer: int  # index into choices

    def conversation(self, with_answer: bool = True) -> Conversation:
        messages = [{"role": "user", "content": multiple_choice_prompt(self.question, self.choices)}]
        if with_answer:
            messages.append({"role": "assistant", "content": LETTERS[self.answer]})
        return messages


def load_arc(chat_dir: Path, subset: str, split: str) -> list[MultipleChoice]:
    out = []
    for row in read_jsonl(chat_dir / "arc" / f"{subset}_{split}.jsonl.gz"):
        labels = row["choices"]["label"]
        out.append(MultipleChoice(row["question"], row["choices"]["text"], labels.index(row["answerKey"])))
    return out


def load_mmlu(chat_dir: Path, split: str) -> list[MultipleChoice]:
    return [MultipleChoice(r["question"], r["choices"], int(r["answer"]))
            for r in read_jsonl(chat_dir / "mmlu" / f"{split}.jsonl.gz")]


def load_gsm8k(chat_dir: Path, split: str) -> list[dict]:
    return read_jsonl(chat_dir / "gsm8k" / f"{split}.jsonl")


def _identity(chat_dir: Path) -> list[Conversation]:
    return read_jsonl(chat_dir / "identity_conversations.jsonl")


def _small_talk(chat_dir: Path) -> list[Conversation]:
    return [row["messages"] for row in read_jsonl(chat_dir / "chatterbot_english.jsonl.gz")]


def _gsm8k_train(chat_dir: Path) -> list[Conversation]:
    return [gsm8k_conversation(r["question"], r["answer"]) for r in load_gsm8k(chat_dir, "train")]


def _multiple_choice(chat_dir: Path) -> list[Conversation]:
    loaders: list[Callable[[], list[MultipleChoice]]] = [
        lambda: load_arc(chat_dir, "ARC-Easy", "validation"), lambda: load_arc(chat_dir, "ARC-Challenge", "validation"),
        lambda: load_mmlu(chat_dir, "dev"), lambda: load_mmlu(chat_dir, "validation")]
    out = []
    for load in loaders:
        try:
            out.extend(q.conversation() for q in load())
        except FileNotFoundError:
            continue
    if not out:
        raise FileNotFoundError("no ARC validation or MMLU dev/validation files")
    return out


LOCAL_SOURCES: dict[str, Callable[[Path], list[Conversation]]] = {
    "identity": _identity, "small_talk": _small_talk, "gsm8k": _gsm8k_train, "multiple_choice": _multiple_choice}


def load_smoltalk(limit: int | None) -> list[Conversation]:
    """SmolTalk's train conversations, or [] with a message when the Hub cannot be reached."""
    if not os.environ.get("HF_HUB_OFFLINE"):
        try:  # fail fast: `datasets` would otherwise retry for half a minute before giving up
            socket.create_connection(("huggingface.co", 443), timeout=5).close()
        except OSError as e:
            log(f"SmolTalk skipped: huggingface.co is unreachable ({e})")
            return []
    try:
        from datasets import load_dataset
        split = "train" if limit is None else f"train[:{limit}]"
        rows = load_dataset(SMOLTALK, split=split)
        return [row["messages"] for row in rows]
    except Exception as e:  # noqa: BLE001 - any failure to fetch an optional source is a skip, not a crash
        log(f"SmolTalk skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return []


def load_mixture(chat_dir: Path, smoltalk: bool, smoltalk_max: int | None) -> dict[str, list[Conversation]]:
    """Conversations by source. Missing local files are skipped with a message; none at all is bad input."""
    sources: dict[str, list[Conversation]] = {}
    missing: list[str] = []
    for name, loader in LOCAL_SOURCES.items():
        try:
            sources[name] = loader(chat_dir)
        except FileNotFoundError as e:
            missing.append(f"{name} skipped: {e}")
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, OSError) as e:
            raise BadInput(f"--chat-data {chat_dir}: unreadable {name} data ({type(e).__name__}: {e})") from None
    if not sources:
        raise BadInput(f"--chat-data {chat_dir}: no chat data found (expected identity_conversations.jsonl, "
                       "chatterbot_english.jsonl.gz, gsm8k/train.jsonl, arc/ or mmlu/)")
    for message in missing:
        log(message)
    if smoltalk:
        rows = load_smoltalk(smoltalk_max)
        if rows:
            sources["smoltalk"] = rows
    return sources


def resolve_chat_dir(flag: str | None) -> Path:
    from model.home import nanoresearch_home

    chosen = flag or os.environ.get("NANORESEARCH_CHAT_DATA")
    if chosen is None:
        default = nanoresearch_home() / "chat_data"
        if default.is_dir():
            return default
        raise BadInput("no chat data: pass --chat-data DIR or set NANORESEARCH_CHAT_DATA (a directory with "
                       "identity_conversations.jsonl, chatterbot_english.jsonl.gz, gsm8k/, arc/, mmlu/)")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        where = f"--chat-data {chosen}" if flag else f"NANORESEARCH_CHAT_DATA={chosen}"
        raise BadInput(f"{where}: not a directory (expected a chat data directory)")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Packing

def pack_rows(conversations: Iterable[tuple[list[int], list[int]]], capacity: int, bos_id: int,
              buffer_size: int = 100) -> Iterator[tuple[list[int], list[int]]]:
    """Best-fit pack rendered conversations (ids, mask) into rows of exactly `capacity` tokens.

    Each row takes, while any fits, the longest buffered conversation that fits whole; the rest is padded with
    BOS (mask 0). No conversation is split across rows: longer ones must be truncated to `capacity` beforehand."""
    source = iter(conversations)
    buffer: list[tuple[list[int], list[int]]] = []
    exhausted = False
    while True:
        while not exhausted and len(buffer) < buffer_size:
            try:
                ids, mask = next(source)
            except StopIteration:
                exhausted = True
                break
            if len(ids) > capacity:
                raise ValueError(f"a conversation of {len(ids)} tokens does not fit a row of {capacity}")
            buffer.append((ids, mask))
        if not buffer:
            return
        row_ids: list[int] = []
        row_mask: list[int] = []
        while buffer:
            room = capacity - len(row_ids)
            best = max((i for i in range(len(buffer)) if len(buffer[i][0]) <= room),
                       key=lambda i: len(buffer[i][0]), default=None)
            if best is None:
                break
            ids, mask = buffer.pop(best)
            row_ids += ids
            row_mask += mask
        pad = capacity - len(row_ids)
        yield row_ids + [bos_id] * pad, row_mask + [0] * pad


def rows_to_batch(rows: list[tuple[list[int], list[int]]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (B, capacity - 1); targets are -1 where the mask does not train the token."""
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
    mask = torch.tensor([r[1] for r in rows], dtype=torch.bool)
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -1)
    return ids[:, :-1].to(device), targets.to(device)


def render_all(tokenizer, conversations: list[Conversation], capacity: int) -> list[tuple[list[int], list[int]]]:
    """Render with the loss mask, truncated to a row. Malformed conversations, and those whose truncation left
    no assistant token to train on (they would only cost compute), are skipped and counted."""
    out, bad, untrained = [], 0, 0
    for conversation in conversations:
        try:
            ids, mask = tokenizer.render_conversation(conversation, max_tokens=capacity)
        except (ValueError, TypeError, AttributeError):
            bad += 1
            continue
        if not any(mask[1:]):  # mask[0] never trains: it has no preceding position to predict it from
            untrained += 1
            continue
        out.append((ids, mask))
    if bad or untrained:
        log(f"skipped {bad} malformed conversations and {untrained} with nothing to train within {capacity} tokens")
    return out


class TrainBatches:
    """Endless (inputs, targets) batches: epoch after epoch of the training conversations, reshuffled per epoch."""

    def __init__(self, rendered, batch_size: int, capacity: int, bos_id: int, seed: int, device):
        self.rendered, self.batch_size, self.capacity, self.bos_id = rendered, batch_size, capacity, bos_id
        self.seed, self.device = seed, device
        self.epoch = 0
        self._rows = self._row_stream()

    def _row_stream(self):
        while True:
            order = list(range(len(self.rendered)))
            random.Random(self.seed * 1000 + self.epoch).shuffle(order)
            yield from pack_rows((self.rendered[i] for i in order), self.capacity, self.bos_id)
            self.epoch += 1

    def __next__(self):
        return rows_to_batch([next(self._rows) for _ in range(self.batch_size)], self.device)


# ----------------------------------------------------------------------------------------------------------------
# Chat eval

def _fit(ids: list[int], limit: int | None) -> list[int]:
    """Keep the end of a prompt longer than the model's positions (the question's tail and the turn markers)."""
    return ids if limit is None or len(ids) <= limit else ids[-limit:]


@torch.no_grad()
def choice_accuracy(model, tokenizer, examples: list[MultipleChoice]) -> dict:
    """Letter-choice accuracy: argmax over the choices' letter tokens right after <|assistant_start|>."""
    correct = 0
    device = model.device
    limit = getattr(model, "rotary_len", None)
    for example in examples:
        letters = [tokenizer.encode(letter)[0] for letter in LETTERS[:len(example.choices)]]
        ids = _fit(tokenizer.render_for_completion(example.conversation(with_answer=False)), limit)
        logits = model(torch.tensor([ids], dtype=torch.long, device=device))[0, -1]
        correct += int(int(logits[letters].argmax()) == example.answer)
    n = len(examples)
    return {"accuracy": correct / n if n else None, "correct": correct, "n": n}


_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def gsm8k_number(text: str) -> str | None:
    """The number after the last `####`, commas removed; None when there is none."""
    found = _FINAL.findall(text)
    return found[-1].replace(",", "") if found else None


def _same_number(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


@torch.no_grad()
def gsm8k_accuracy(model, tokenizer, problems: list[dict], max_tokens: int = 256) -> dict:
    """Exact match of the final number, generated greedily with the calculator tool."""
    engine = Engine(model, tokenizer)
    limit = getattr(model, "rotary_len", None)
    correct = 0
    for problem in problems:
        ids = tokenizer.render_for_completion([{"role": "user", "content": problem["question"]}])
        budget = max_tokens if limit is None else min(max_tokens, max(1, limit // 2))
        ids = _fit(ids, None if limit is None else limit - budget)
        tokens, _ = engine.generate_batch(ids, max_tokens=budget, temperature=0.0)
        predicted = gsm8k_number(tokenizer.decode(tokens[0]))
        correct += int(_same_number(predicted, gsm8k_number(problem["answer"])))
    n = len(problems)
    return {"accuracy": correct / n if n else None, "correct": correct, "n": n}


CHANCE = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0}


def chat_eval(model, tokenizer, chat_dir: Path, examples: int, max_tokens: int, seed: int = 0) -> dict:
    """The four tasks on a seeded random subset of `examples` test items each; missing files are skipped."""
    def subset(items: list) -> list:
        return random.Random(seed).sample(items, min(examples, len(items)))

    tasks: dict[str, Callable[[], dict]] = {
        "ARC-Easy": lambda: choice_accuracy(model, tokenizer, subset(load_arc(chat_dir, "ARC-Easy", "test"))),
        "ARC-Challenge": lambda: choice_accuracy(model, tokenizer, subset(load_arc(chat_dir, "ARC-Challenge", "test"))),
        "MMLU": lambda: choice_accuracy(model, tokenizer, subset(load_mmlu(chat_dir, "test"))),
        "GSM8K": lambda: gsm8k_accuracy(model, tokenizer, subset(load_gsm8k(chat_dir, "test")), max_tokens),
    }
    results = {}
    for name, run in tasks.items():
        t0 = time.perf_counter()
        try:
            results[name] = run()
        except FileNotFoundError as e:
            log(f"chat eval: {name} skipped ({e})")
            continue
        r = results[name]
        log(f"chat eval: {name} {r['correct']}/{r['n']} = {r['accuracy']:.3f} ({time.perf_counter() - t0:.1f}s)")
    centered = [(r["accuracy"] - CHANCE[k]) / (1 - CHANCE[k]) for k, r in results.items() if r["n"]]
    return {"tasks": results, "chatcore": sum(centered) / len(centered) if centered else None,
            "examples_per_task": examples}


# ----------------------------------------------------------------------------------------------------------------
# Training

@torch.no_grad()
def validation_loss(model, rendered, batch_size: int, capacity: int, bos_id: int, token_bytes: torch.Tensor,
                    device) -> tuple[float, float]:
    """(mean nats per trained token, bits per byte of the trained text tokens) on the held-out conversations."""
    rows = list(pack_rows(rendered, capacity, bos_id))
    nats = torch.zeros((), dtype=torch.float64)
    count = 0
    text_nats = torch.zeros((), dtype=torch.float64)
    text_bytes = 0
    token_bytes = token_bytes.to(device)
    for start in range(0, len(rows), batch_size):
        x, y = rows_to_batch(rows[start:start + batch_size], device)
        losses = model(x, y, loss_reduction="none").double()
        valid = y != -1
        nats += losses[valid].sum().cpu()
        count += int(valid.sum())
        nbytes = token_bytes[y.clamp_min(0)] * valid
        text_nats += losses[nbytes > 0].sum().cpu()
        text_bytes += int(nbytes.sum())
    loss = float(nats) / max(count, 1)
    bpb = float(text_nats) / (math.log(2) * text_bytes) if text_bytes else float("nan")
    return loss, bpb


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m model.sft", description="Fine-tune a base run into a chat model.")
    p.add_argument("--from", dest="base", required=True, help="the base run dir (made by model.train)")
    p.add_argument("--out", default=None, help="the chat run dir (default: BASE/chat)")
    p.add_argument("--chat-data", default=None, help="chat data dir (env NANORESEARCH_CHAT_DATA)")
    p.add_argument("--num-iterations", type=int, default=None, help="optimizer steps (default: one epoch)")
    p.add_argument("--lr-scale", type=float, default=0.8, help="multiplies every LR of the base recipe")
    p.add_argument("--device-batch-size", type=int, default=None, help="rows per forward pass (default: base run's)")
    p.add_argument("--total-batch-size", type=int, default=None, help="tokens per step (default: base run's)")
    p.add_argument("--val-conversations", type=int, default=200, help="held-out conversations for the val loss")
    p.add_argument("--eval-every", type=int, default=100, help="steps between val-loss evaluations (0 = end only)")
    p.add_argument("--eval-examples", type=int, default=20, help="test items per chat-eval task (0 = no chat eval)")
    p.add_argument("--gsm8k-max-tokens", type=int, default=256, help="generation budget per GSM8K problem")
    p.add_argument("--no-smoltalk", dest="smoltalk", action="store_false", help="do not try to fetch SmolTalk")
    p.add_argument("--smoltalk-max", type=int, default=None, help="use at most this many SmolTalk conversations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    return p


def check_args(args) -> None:
    for flag in ("num_iterations", "device_batch_size", "total_batch_size", "smoltalk_max", "gsm8k_max_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise BadInput(f"--{flag.replace('_', '-')} {value}: expected a positive integer")
    for flag in ("val_conversations", "eval_every", "eval_examples"):
        if getattr(args, flag) < 0:
            raise BadInput(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a non-negative integer")
    if not (args.lr_scale > 0 and math.isfinite(args.lr_scale)):
        raise BadInput(f"--lr-scale {args.lr_scale}: expected a positive number")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return run(args, argv)
    except BadInput as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return EXIT_BAD_INPUT


def run(args, argv: list[str]) -> int:
    check_args(args)
    want = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is available")
    device = torch.device(want)
    base_dir = Path(args.base)
    if not base_dir.is_dir():
        raise BadInput(f"--from {base_dir}: no such run dir")
    out = Path(args.out) if args.out else base_dir / "chat"
    if (out / rd.CONFIG).exists():
        raise BadInput(f"--out {out}: already holds a run; choose a new --out or remove it")
    chat_dir = resolve_chat_dir(args.chat_data)
    try:
        model, tokenizer, meta = load_model(base_dir, device)
    except rd.RunDirError as e:
        raise BadInput(f"--from {base_dir}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a checkpoint that cannot be loaded is bad input, in one line
        raise BadInput(f"--from {base_dir}: cannot load the model ({type(e).__name__}: {e})") from None

    c = model.config
    T = c.sequence_len
    train_meta = meta.get("train", {})
    batch_size = args.device_batch_size or train_meta.get("device_batch_size", 8)
    total_batch = args.total_batch_size or train_meta.get("total_batch_size", batch_size * T)
    if total_batch % (batch_size * T):
        raise BadInput(f"total batch {total_batch} tokens: expected a multiple of device batch x sequence_len = "
                       f"{batch_size} x {T}")
    grad_accum = total_batch // (batch_size * T)

    # Data: render every conversation once, hold out the validation conversations from the shuffled mixture.
    t0 = time.perf_counter()
    sources = load_mixture(chat_dir, args.smoltalk, args.smoltalk_max)
    mixture = [conv for convs in sources.values() for conv in convs]
    random.Random(args.seed).shuffle(mixture)
    rendered = render_all(tokenizer, mixture, T + 1)
    if len(rendered) <= args.val_conversations:
        raise BadInput(f"--chat-data {chat_dir}: {len(rendered)} conversations, not more than "
                       f"--val-conversations {args.val_conversations}")
    val_rendered, train_rendered = rendered[:args.val_conversations], rendered[args.val_conversations:]
    epoch_rows = sum(1 for _ in pack_rows(train_rendered, T + 1, tokenizer.bos_id))
    num_iterations = args.num_iterations or max(1, epoch_rows // (batch_size * grad_accum))
    log(f"mixture {', '.join(f'{k} {len(v):,}' for k, v in sources.items())} -> {len(train_rendered):,} train / "
        f"{len(val_rendered):,} val conversations, {epoch_rows:,} rows of {T + 1} per epoch "
        f"({time.perf_counter() - t0:.1f}s) | {num_iterations} steps of {batch_size}x{T} x{grad_accum} accum")

    # Optimizer: the base recipe at lr_scale, no weight decay, LR linearly to zero.
    optim_config = OptimConfig(**meta.get("optim", {}))
    optimizer = build_optimizer(model, optim_config, total_batch_size=total_batch, weight_decay=0.0)
    for group in optimizer.param_groups:
        group["initial_lr"] *= args.lr_scale
        if group["kind"] == "muon":
            group["momentum"] = optim_config.momentum_end

    sft_settings = {"lr_scale": args.lr_scale, "num_iterations": num_iterations, "device_batch_size": batch_size,
                    "total_batch_size": total_batch, "grad_accum": grad_accum, "seed": args.seed,
                    "chat_data": str(chat_dir), "sources": {k: len(v) for k, v in sources.items()},
                    "val_conversations": len(val_rendered), "epoch_rows": epoch_rows,
                    "eval_examples": args.eval_examples, "gsm8k_max_tokens": args.gsm8k_max_tokens,
                    "weight_decay": 0.0, "lr_schedule": "linear to 0"}
    config = {**meta, "chat": True, "base_run": str(base_dir.resolve()), "base_step": meta.get("step"),
              "sft": sft_settings, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": "python -m model.sft " + shlex.join(argv)}
    for key in ("step", "checkpoint"):
        config.pop(key, None)
    from model.provenance import code_version
    config["code_version"] = code_version()
    out.mkdir(parents=True, exist_ok=True)
    rd.write_config(out, config)
    tokenizer.save(out / rd.TOKENIZER_DIR)
    rd.clear_points(out)

    token_bytes = tokenizer.token_bytes()
    state = {"step": 0, "train_time": 0.0, "tokens": 0, "val_loss": None, "val_bpb": None, "train_loss": None}
    flops_per_token = model.num_flops_per_token()

    def evaluate(step: int) -> None:
        model.eval()
        state["val_loss"], state["val_bpb"] = validation_loss(model, val_rendered, batch_size, T + 1,
                                                              tokenizer.bos_id, token_bytes, device)
        model.train()
        point = {"step": step, "tokens": state["tokens"], "elapsed_train_s": round(state["train_time"], 3),
                 "train_loss": state["train_loss"], "val_loss": state["val_loss"], "val_bpb": state["val_bpb"],
                 "wall_time": time.time()}
        rd.append_point(out, point)
        log(f"eval: step {step} | val loss {state['val_loss']:.4f} | val bpb {state['val_bpb']:.4f}")

    def write_result(status: str, reason: str | None, chat: dict | None) -> None:
        from model.hardware import peak_memory_bytes
        rd.write_result(out, rd.Result(
            status=status, val_loss=state["val_loss"], val_bpb=state["val_bpb"], core=None,
            chat_eval=None if chat is None else {k: r["accuracy"] for k, r in chat["tasks"].items()},
            chatcore=None if chat is None else chat["chatcore"],
            total_training_time=round(state["train_time"], 3), time_to_target=None,
            tokens=state["tokens"], flops=flops_per_token * state["tokens"], steps=state["step"],
            peak_memory_bytes=peak_memory_bytes(device), reason=reason or None, keys=rd.CHAT_KEYS))

    batches = TrainBatches(train_rendered, batch_size, T + 1, tokenizer.bos_id, args.seed, device)
    model.train()
    status, reason = "ok", None
    try:
        evaluate(0)
        smooth = None
        for step in range(num_iterations):
            t_step = time.perf_counter()
            lr_mult = 1.0 - step / num_iterations
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_mult
            micro = [next(batches) for _ in range(grad_accum)]
            trained = sum(int((y != -1).sum()) for _, y in micro)
            loss_sum = torch.zeros((), device=device)
            for x, y in micro:
                # Sum over the step's trained tokens, normalised once: every trained token weighs the same,
                # however the padding fell across the micro-batches.
                loss = model(x, y, loss_reduction="sum") / max(trained, 1)
                loss.backward()
                loss_sum += loss.detach()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            train_loss = float(loss_sum)
            state["train_time"] += time.perf_counter() - t_step
            state["tokens"] += total_batch
            state["step"] = step + 1
            if not math.isfinite(train_loss):
                status, reason = "diverged", f"loss became {train_loss} at step {step}"
                break
            smooth = train_loss if smooth is None else 0.9 * smooth + 0.1 * train_loss
            state["train_loss"] = smooth
            done = step + 1
            if done % 10 == 0 or done == num_iterations:
                per_step = state["train_time"] / done
                log(f"step {done}/{num_iterations} ({100 * done / num_iterations:.0f}%) | loss {smooth:.4f} | "
                    f"lr x{lr_mult:.2f} | {state['tokens'] / state['train_time']:,.0f} tok/s | "
                    f"epoch {batches.epoch} | eta {per_step * (num_iterations - done):.0f}s")
            if args.eval_every and done % args.eval_every == 0 and done != num_iterations:
                evaluate(done)
        if status == "ok":
            evaluate(state["step"])
            save_checkpoint(out, state["step"], {"step": state["step"], "model": model.state_dict()})
            chat = None
            if args.eval_examples:
                model.eval()
                chat = chat_eval(model, tokenizer, chat_dir, args.eval_examples, args.gsm8k_max_tokens, args.seed)
                rd.atomic_write_json(out / "chat_eval.json", chat)
            write_result("ok", None, chat)
            log(f"ok | {state['step']} steps | val loss {state['val_loss']:.4f}"
                + (f" | chatcore {chat['chatcore']:.4f}" if chat and chat["chatcore"] is not None else "")
                + f" | {out}")
            return EXIT_OK
        write_result(status, reason, None)
        log(f"{status}: {reason}")
        return EXIT_DIVERGED
    except Exception as e:  # noqa: BLE001 - a crash is recorded as a failed run, then shown in full
        message = f"{type(e).__name__}: {e}".splitlines()[0]
        write_result("failed", message, None)
        traceback.print_exc()
        print(f"error: sft failed: {message}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    from model.sft import main as _main  # the copy other modules import, not __main__'s

    sys.exit(_main())
