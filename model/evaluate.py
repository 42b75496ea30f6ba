"""Evaluation: bits per byte on held-out text, and the CORE metric.

CORE is the DCLM paper's 22-task in-context-learning ensemble as nanochat computes it
(https://arxiv.org/abs/2406.11794): each task is scored by accuracy, centered against its random-guess
baseline, (acc - b) / (1 - b), and CORE is the unweighted mean of the 22 centered accuracies. GPT-2 (124M)
scores about 0.256 with nanochat's scoring; that is the speedrun target.

Three task types, all scored from the model's next-token distribution, no generation:
- multiple_choice: one prompt per choice (context + delimiter + choice); the choice whose tokens have the
  lowest mean cross-entropy wins. The choice tokens are what follows the options' common token prefix.
- schema: one prompt per context option, all sharing one continuation; the context under which the
  continuation has the lowest mean cross-entropy wins. The continuation tokens are the common token suffix.
- language_modeling: correct only if every continuation token is the model's argmax (greedy match).

Prompts start with BOS and carry `num_fewshot` solved examples drawn with random.Random(1234 + idx) from
the task's other items; the data is shuffled once with random.Random(1337), so a `max_per_task` subset is
always the same items. Few-shot examples are drawn from the whole task (not only the subset), so each
item's prompt -- and score -- is the same in a subset run as in the full run; without `max_per_task` this
is exactly nanochat's sampling.

`python -m model.evaluate --run RUN_DIR --core` evaluates a saved run and records `core` in its
result.json, with the per-task table in core.json / core.csv.
"""

import argparse
import csv
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from model.home import nanoresearch_home
from model.run_dir import RESULT, RunDirError, atomic_write_text, load_result, update_result

# The bundle nanochat downloads (core.yaml, eval_meta_data.csv, eval_data/ inside a top-level eval_bundle/).
EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
SHUFFLE_SEED = 1337
FEWSHOT_SEED = 1234
DEFAULT_DELIMITER = " "


class EvalBundleError(Exception):
    """The CORE bundle is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Task:
    label: str
    task_type: str              # one of TASK_TYPES
    num_fewshot: int
    continuation_delimiter: str
    data_path: Path
    random_baseline: float      # accuracy of random guessing, in percent (as eval_meta_data.csv has it)


# -----------------------------------------------------------------------------
# The bundle on disk


def resolve_eval_bundle(flag: str | None) -> Path:
    """The bundle directory: `flag` (--eval-bundle), else $NANORESEARCH_EVAL_BUNDLE, else
    nanoresearch_home()/eval_bundle, downloaded from EVAL_BUNDLE_URL when missing there."""
    env = os.environ.get("NANORESEARCH_EVAL_BUNDLE")
    if flag or env:
        source, path = ("--eval-bundle", flag) if flag else ("NANORESEARCH_EVAL_BUNDLE", env)
        path = Path(path).expanduser()
        if not path.is_dir():
            raise EvalBundleError(f"{source} {path}: no such directory (expected the CORE eval bundle with "
                                  "core.yaml, eval_meta_data.csv and eval_data/)")
        return path
    path = nanoresearch_home() / "eval_bundle"
    if not (path / "core.yaml").is_file():
        download_eval_bundle(path)
    return path


def download_eval_bundle(dest: Path, url: str | None = None, attempts: int = 5) -> Path:
    """Download and unzip the bundle into `dest`. Atomic: it is unpacked next to `dest` and renamed into
    place, so a killed download never leaves a half bundle, and concurrent downloaders do not clash."""
    url = url or EVAL_BUNDLE_URL
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".eval_bundle-", dir=dest.parent))
    try:
        archive = tmp / "eval_bundle.zip"
        _download(url, archive, attempts)
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp / "unzipped")  # extractall drops absolute and '..' member paths
        except zipfile.BadZipFile as e:
            raise EvalBundleError(f"{archive} (from {url}): not a valid zip file: {e}") from None
        found = sorted((tmp / "unzipped").rglob("core.yaml"), key=lambda p: len(p.parts))
        if not found:
            raise EvalBundleError(f"{url}: the archive has no core.yaml (expected an eval_bundle/ directory)")
        try:
            os.replace(found[0].parent, dest)
        except OSError:
            if not (dest / "core.yaml").is_file():  # else another process finished first: use its copy
                raise EvalBundleError(f"{dest}: exists but holds no core.yaml; remove it or set "
                                      "NANORESEARCH_EVAL_BUNDLE / --eval-bundle") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _download(url: str, path: Path, attempts: int) -> None:
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
                total = int(response.headers.get("Content-Length") or 0)
                done, t0, last = 0, time.monotonic(), 0.0
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    now = time.monotonic()
                    if now - last > 1.0 or done == total:
                        last = now
                        _print_progress(f"downloading eval bundle: {_bytes_progress(done, total, now - t0)}")
            print(file=sys.stderr)
            return
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            if attempt == attempts:
                raise EvalBundleError(f"{url}: download failed after {attempts} attempts ({e}); set "
                                      "NANORESEARCH_EVAL_BUNDLE or --eval-bundle to a local bundle") from None
            delay = 2.0**attempt
            print(f"download of {url} failed ({e}); retry {attempt}/{attempts - 1} in {delay:.0f}s",
                  file=sys.stderr)
            time.sleep(delay)


def _bytes_progress(done: int, total: int, elapsed: float) -> str:
    rate = done / max(elapsed, 1e-9)
    if not total:
        return f"{done / 1e6:.1f} MB"
    eta = (total - done) / max(rate, 1e-9)
    return f"{done / 1e6:.1f}/{total / 1e6:.1f} MB ({100 * done / total:.0f}%), eta {eta:.0f}s"


def load_bundle(bundle_dir: str | Path) -> list[Task]:
    """The bundle's tasks, validated: core.yaml, eval_meta_data.csv and every task's data file present."""
    bundle_dir = Path(bundle_dir)
    config_path = bundle_dir / "core.yaml"
    baselines = _read_baselines(bundle_dir / "eval_meta_data.csv")
    try:
        config = yaml.safe_load(config_path.read_text())
    except FileNotFoundError:
        raise EvalBundleError(f"{config_path}: file not found (expected the CORE task list)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise EvalBundleError(f"{config_path}: not valid YAML: {' '.join(str(e).split())}") from None
    entries = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise EvalBundleError(f"{config_path}: expected a non-empty 'icl_tasks' list")

    tasks, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{config_path}: icl_tasks[{i}]"
        if not isinstance(entry, dict):
            raise EvalBundleError(f"{where}: expected a mapping, got {entry!r}")
        label, uri, task_type = entry.get("label"), entry.get("dataset_uri"), entry.get("icl_task_type")
        shots = entry.get("num_fewshot")
        delimiter = entry.get("continuation_delimiter", DEFAULT_DELIMITER)
        if not isinstance(label, str) or not label:
            raise EvalBundleError(f"{where}: 'label' must be a non-empty string, got {label!r}")
        where = f"{config_path}: task {label!r}"
        if label in seen:
            raise EvalBundleError(f"{where}: duplicate label")
        if task_type not in TASK_TYPES:
            raise EvalBundleError(f"{where}: icl_task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
        # the yaml lists the shot counts to run; CORE uses the first, as nanochat does
        if isinstance(shots, list) and shots:
            shots = shots[0]
        if type(shots) is not int or shots < 0:
            raise EvalBundleError(f"{where}: num_fewshot must be a non-negative int or a list of them, "
                                  f"got {entry.get('num_fewshot')!r}")
        if not isinstance(delimiter, str):
            raise EvalBundleError(f"{where}: continuation_delimiter must be a string, got {delimiter!r}")
        if not isinstance(uri, str) or not uri:
            raise EvalBundleError(f"{where}: 'dataset_uri' must be a path under eval_data/, got {uri!r}")
        data_path = bundle_dir / "eval_data" / uri
        if not data_path.is_file():
            raise EvalBundleError(f"{data_path}: file not found (dataset of task {label!r} in {config_path})")
        if label not in baselines:
            raise EvalBundleError(f"{bundle_dir / 'eval_meta_data.csv'}: no 'Random baseline' row for task "
                                  f"{label!r}")
        seen.add(label)
        tasks.append(Task(label, task_type, shots, delimiter, data_path, baselines[label]))
    return tasks


def _read_baselines(path: Path) -> dict[str, float]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "Eval Task" not in columns or "Random baseline" not in columns:
                raise EvalBundleError(f"{path}: expected columns 'Eval Task' and 'Random baseline', got {columns}")
            baselines = {}
            for row in reader:
                label, value = row["Eval Task"], row["Random baseline"]
                try:
                    baseline = float(value)
                except (TypeError, ValueError):
                    raise EvalBundleError(f"{path}:{reader.line_num}: Random baseline {value!r} for {label!r} "
                                          "is not a number") from None
                if not 0 <= baseline < 100:
                    raise EvalBundleError(f"{path}:{reader.line_num}: Random baseline {baseline} for {label!r} "
                                          "must be a percentage in [0, 100)")
                baselines[label] = baseline
    except FileNotFoundError:
        raise EvalBundleError(f"{path}: file not found (expected the per-task random baselines)") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise EvalBundleError(f"{path}: not a valid CSV file: {e}") from None
    return baselines


def load_task_data(task: Task) -> list[dict]:
    """The task's items in file order, each validated for its task type."""
    items = []
    try:
        with open(task.data_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvalBundleError(f"{task.data_path}:{lineno}: not valid JSON ({e})") from None
                problem = _item_problem(task.task_type, item)
                if problem:
                    raise EvalBundleError(f"{task.data_path}:{lineno}: {problem} (task {task.label!r}, "
                                          f"{task.task_type})")
                items.append(item)
    except FileNotFoundError:
        raise EvalBundleError(f"{task.data_path}: file not found (dataset of task {task.label!r})") from None
    except UnicodeDecodeError as e:
        raise EvalBundleError(f"{task.data_path}: not UTF-8 text ({e})") from None
    if len(items) < 1 + (task.num_fewshot > 0):
        raise EvalBundleError(f"{task.data_path}: has {len(items)} items; task {task.label!r} needs at least "
                              f"{1 + (task.num_fewshot > 0)}")
    return items


def _item_problem(task_type: str, item: object) -> str | None:
    """What is wrong with one data item, or None."""
    if not isinstance(item, dict):
        return f"expected a JSON object, got {type(item).__name__}"

    def is_str_list(x: object) -> bool:
        return isinstance(x, list) and len(x) >= 2 and all(isinstance(s, str) for s in x)

    def gold_problem(options: list) -> str | None:
        gold = item.get("gold")
        if type(gold) is not int or not 0 <= gold < len(options):
            return f"'gold' must be an index into the {len(options)} options, got {gold!r}"
        return None

    if task_type == "multiple_choice":
        if not isinstance(item.get("query"), str):
            return "'query' must be a string"
        if not is_str_list(item.get("choices")):
            return "'choices' must be a list of at least 2 strings"
        return gold_problem(item["choices"])
    if task_type == "schema":
        if not is_str_list(item.get("context_options")):
            return "'context_options' must be a list of at least 2 strings"
        if not isinstance(item.get("continuation"), str) or not item["continuation"]:
            return "'continuation' must be a non-empty string"
        return gold_problem(item["context_options"])
    if not isinstance(item.get("context"), str):
        return "'context' must be a string"
    if not isinstance(item.get("continuation"), str) or not item["continuation"].strip():
        return "'continuation' must be a non-empty string"
    return None


# -----------------------------------------------------------------------------
# Prompts


def shuffled(data: list[dict]) -> list[dict]:
    """The task's items in evaluation order (the first `max_per_task` of these form a subset run)."""
    data = list(data)
    random.Random(SHUFFLE_SEED).shuffle(data)
    return data


def fewshot_indices(n_items: int, idx: int, k: int) -> list[int]:
    """The few-shot examples for item `idx`: k other items, seeded by idx.

    Same draws as nanochat's rng.sample([i for i in range(n) if i != idx], k): sample() only uses the
    population's length, so sampling positions in range(n - 1) and skipping over idx is identical, without
    building an n-long list per item (20k items in bigbench_qa_wikidata)."""
    if k <= 0:
        return []
    rng = random.Random(FEWSHOT_SEED + idx)
    return [j if j < idx else j + 1 for j in rng.sample(range(n_items - 1), min(k, n_items - 1))]


def render_prompts(task: Task, data: list[dict], idx: int) -> list[str]:
    """The prompts for item `idx`: one per choice (multiple_choice) or context option (schema); for
    language_modeling two, the prompt without and then with the continuation. Few-shot examples come
    first, each followed by a blank line."""
    item, d = data[idx], task.continuation_delimiter
    shots = [data[i] for i in fewshot_indices(len(data), idx, task.num_fewshot)]
    if task.task_type == "multiple_choice":
        prefix = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{prefix}{item['query']}{d}{choice}" for choice in item["choices"]]
    if task.task_type == "schema":
        prefix = "".join(f"{s['context_options'][s['gold']]}{d}{s['continuation']}\n\n" for s in shots)
        return [f"{prefix}{context}{d}{item['continuation']}" for context in item["context_options"]]
    # Contexts are stripped because some have trailing whitespace; the prompt without the continuation is
    # stripped too, so its trailing delimiter space joins the continuation's first token (as it does in
    # the prompt with it) and its tokens stay a prefix of the full prompt's.
    prefix = "".join(f"{s['context'].strip()}{d}{s['continuation']}\n\n" for s in shots)
    without = f"{prefix}{item['context'].strip()}{d}"
    return [without.strip(), without + item["continuation"]]


# -----------------------------------------------------------------------------
# Scoring

# One row = one sequence to forward: (tokens, start, end) where tokens[start:end] are the scored tokens.
Row = tuple[list[int], int, int]


def _common_prefix(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs, strict=False):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def locate_continuations(task_type: str, token_lists: list[list[int]]) -> list[Row]:
    """Rows for one item's tokenized prompts (each starting with BOS). Every row scores >= 1 token and
    never its first token (nothing predicts it), which only matters for degenerate options."""
    lengths = [len(t) for t in token_lists]
    if task_type == "multiple_choice":
        # same context, different choices: the choices start where the options first differ
        start = min(_common_prefix(token_lists), min(lengths) - 1)
        return [(t, max(start, 1), len(t)) for t in token_lists]
    if task_type == "schema":
        # different contexts, same continuation: score the common suffix
        suffix = _common_prefix([t[::-1] for t in token_lists])
        suffix = max(1, min(suffix, min(lengths) - 1))
        return [(t, len(t) - suffix, len(t)) for t in token_lists]
    without, with_ = token_lists
    # BPE usually tokenizes the stripped prompt as an exact prefix of the full one; if a merge crosses the
    # boundary, score from the first differing token.
    start = len(without) if with_[: len(without)] == without else _common_prefix([without, with_])
    return [(with_, max(1, min(start, len(with_) - 1)), len(with_))]


def truncate_row(row: Row, max_len: int | None) -> Row:
    """Keep the last max_len tokens (the scored ones are at the end), shifting the indices."""
    tokens, start, end = row
    if max_len is None or len(tokens) <= max_len:
        return row
    crop = len(tokens) - max_len
    return tokens[crop:], max(start - crop, 1), end - crop


def _batches(order: list[int], rows: list[Row], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Rows (in `order`: by length) grouped into batches of at most batch_size rows and, when given, about
    max_tokens padded tokens (a long prompt scored whole gets a batch of its own instead of 16 rows of its width)."""
    batches: list[list[int]] = []
    for i in order:
        width = len(rows[i][0])  # the longest so far: rows come shortest first
        if batches and len(batches[-1]) < batch_size and (max_tokens is None or (len(batches[-1]) + 1) * width <= max_tokens):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def score_rows(model, rows: list[Row], *, batch_size: int, pad_id: int, device: str | torch.device = "cpu",
               max_tokens: int | None = None) -> list[tuple[float, bool]]:
    """For each row: mean cross-entropy of its scored tokens, and whether every one is the argmax.

    Rows are sorted by length and right-padded into batches (of at most batch_size rows and about max_tokens padded
    tokens): a causal model's outputs at real positions never see the padding after them, so batching does not
    change any score."""
    results: list[tuple[float, bool]] = [(math.nan, False)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    for batch in _batches(order, rows, batch_size, max_tokens):
        width = max(len(rows[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        owners, positions = [], []  # for every scored token: its row in the batch, and its logits position
        for r, i in enumerate(batch):
            tokens, start, end = rows[i]
            ids[r, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            owners.append(torch.full((end - start,), r, dtype=torch.long))
            positions.append(torch.arange(start - 1, end - 1))  # the logits at p predict token p + 1
        owners = torch.cat(owners)
        ids, positions, row_index = ids.to(device), torch.cat(positions).to(device), owners.to(device)
        logits = model(ids)[row_index, positions].float()  # only the scored positions
        targets = ids[row_index, positions + 1]
        losses = F.cross_entropy(logits, targets, reduction="none").double().cpu()
        misses = (logits.argmax(dim=-1) != targets).long().cpu()
        # per-row sums on the host
        loss_sum = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, owners, losses)
        miss_count = torch.zeros(len(batch), dtype=torch.long).index_add_(0, owners, misses)
        counts = torch.bincount(owners, minlength=len(batch))
        for r, i in enumerate(batch):
            results[i] = (loss_sum[r].item() / counts[r].item(), miss_count[r].item() == 0)
    return results


def max_positions(model) -> int | None:
    """The most tokens the model can take in one forward pass: its rotary tables' length (GPT: 10x the training
    sequence length), None when it does not say."""
    return getattr(model, "rotary_len", None)


def evaluate_items(model, tokenizer, task: Task, data: list[dict], idxs: list[int], *, batch_size: int,
                   device: str | torch.device = "cpu") -> tuple[list[bool], int]:
    """Whether the model gets each item in `idxs` right (few-shot examples drawn from all of `data`), and how many
    of the items had to be cropped.

    A prompt is scored whole, as nanochat scores CORE, also past the sequence length the model trained at (GPT's
    rotary tables reach 10x it). Only a prompt longer than the model can take at all is cropped to its last tokens,
    and counted."""
    limit = max_positions(model)
    seq = getattr(getattr(model, "config", None), "sequence_len", None)
    prompts = [render_prompts(task, data, i) for i in idxs]
    encoded = tokenizer.encode_batch([p for ps in prompts for p in ps])
    rows, spans, k, cropped = [], [], 0, 0
    for ps in prompts:
        token_lists = [[tokenizer.bos_id, *ids] for ids in encoded[k : k + len(ps)]]
        k += len(ps)
        item_rows = locate_continuations(task.task_type, token_lists)
        if limit is not None and any(len(r[0]) > limit for r in item_rows):
            cropped += 1
            item_rows = [truncate_row(r, limit) for r in item_rows]
        spans.append((len(rows), len(rows) + len(item_rows)))
        rows.extend(item_rows)
    scores = score_rows(model, rows, batch_size=batch_size, pad_id=tokenizer.bos_id, device=device,
                        max_tokens=batch_size * seq if seq else None)

    correct = []
    for i, (lo, hi) in zip(idxs, spans, strict=True):
        if task.task_type == "language_modeling":
            correct.append(scores[lo][1])
        else:
            # lowest mean loss wins, the first on ties; a NaN loss never wins
            losses = [s[0] if not math.isnan(s[0]) else math.inf for s in scores[lo:hi]]
            correct.append(losses.index(min(losses)) == data[i]["gold"])
    return correct, cropped


def centered_accuracy(accuracy: float, random_baseline_pct: float) -> float:
    """0 at random guessing, 1 at perfect: (acc - b) / (1 - b) with b the baseline as a fraction."""
    b = random_baseline_pct / 100
    return (accuracy - b) / (1 - b)


def evaluate_core(model, tokenizer, bundle_dir: str | Path, *, max_per_task: int | None = None,
                  batch_size: int = 16, device: str | torch.device = "cpu", progress: bool = True,
                  distributed: bool = False) -> dict:
    """CORE over the bundle's tasks.

    Returns {"core": float, "max_per_task": int | None, "tasks": {label: {"accuracy", "centered", "n",
    "baseline", "cropped"}}} with baseline the random-guess accuracy as a fraction and cropped the items whose
    prompt was longer than the model can take (see evaluate_items). The caller puts the model in eval
    mode (and autocast, if wanted).

    distributed=True (with torch.distributed initialised): every rank scores a stride of the items and the
    counts are all-reduced, so all ranks must call it and all return the same numbers. The default scores
    everything here with no collectives, so calling it on one rank only is safe."""
    if max_per_task is not None and (type(max_per_task) is not int or max_per_task < 1):
        raise ValueError(f"max_per_task must be a positive int or None, got {max_per_task!r}")
    if type(batch_size) is not int or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    tasks = load_bundle(bundle_dir)
    datasets = [shuffled(load_task_data(t)) for t in tasks]  # all validated before any compute
    sizes = [len(d) if max_per_task is None else min(len(d), max_per_task) for d in datasets]
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed and dist.is_initialized() else (0, 1)
    bar = _Progress(sum(sizes), enabled=progress and rank == 0)
    # items per call: enough rows to sort into several full batches, few enough to keep memory small
    chunk = max(32, 4 * batch_size)

    correct_counts, cropped_counts = [], []
    for task, data, n in zip(tasks, datasets, sizes, strict=True):
        mine = list(range(rank, n, world))
        hits = cropped = 0
        for c in range(0, len(mine), chunk):
            idxs = mine[c : c + chunk]
            correct, crops = evaluate_items(model, tokenizer, task, data, idxs, batch_size=batch_size, device=device)
            hits, cropped = hits + sum(correct), cropped + crops
            bar.update(len(idxs) * world, task.label)
        correct_counts.append(hits)
        cropped_counts.append(cropped)
    if world > 1:
        counts = torch.tensor([correct_counts, cropped_counts], dtype=torch.long, device=device)
        dist.all_reduce(counts)
        correct_counts, cropped_counts = counts.tolist()
    bar.close()

    results = {}
    for task, n, hits, cropped in zip(tasks, sizes, correct_counts, cropped_counts, strict=True):
        accuracy = hits / n
        results[task.label] = {"accuracy": accuracy, "centered": centered_accuracy(accuracy, task.random_baseline),
                               "n": n, "baseline": task.random_baseline / 100, "cropped": cropped}
        if cropped and rank == 0:
            print(f"CORE: {cropped} of {n} {task.label} prompts were longer than the model's {max_positions(model)} "
                  "positions and were cropped to their last tokens", file=sys.stderr, flush=True)
    core = sum(r["centered"] for r in results.values()) / len(results)
    return {"core": core, "max_per_task": max_per_task, "tasks": results}


class _Progress:
    """A one-line bar with ETA on stderr (rewritten in place on a terminal, a line every 30 s in logs)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.done = max(total, 1), enabled, 0
        self.t0 = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, n: int, label: str) -> None:
        self.done = min(self.done + n, self.total)
        now = time.monotonic()
        if not self.enabled or now - self.last < (0.2 if self.tty else 30):
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        line = f"CORE {self.done}/{self.total} ({100 * self.done / self.total:.0f}%) {label:<34} " \
               f"{elapsed:.0f}s elapsed, eta {eta:.0f}s"
        print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self.t0
            print(f"{chr(13) if self.tty else ''}CORE {self.done}/{self.total} items in {elapsed:.1f}s" + " " * 40,
                  file=sys.stderr, flush=True)


def _print_progress(line: str) -> None:
    print(f"\r{line}" if sys.stderr.isatty() else line, end="" if sys.stderr.isatty() else "\n",
          file=sys.stderr, flush=True)


# -----------------------------------------------------------------------------
# Bits per byte


@torch.no_grad()
def evaluate_bpb(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], token_bytes: torch.Tensor) -> float:
    """Bits per byte: summed cross-entropy (nats) over the targets that are real text, divided by
    ln(2) x their total UTF-8 length. Independent of the tokenizer's vocabulary, so runs with different
    tokenizers compare. Targets that are -1 (ignored) or special tokens (0 bytes) count in neither sum.

    batches: (inputs, targets) int64 pairs of shape (B, T). token_bytes: (V,) byte length of each token id.
    Under torch.distributed the sums are all-reduced, so every rank returns the same number."""
    total_nats = total_bytes = None
    for x, y in batches:
        device = _device_of(model, y)
        x, y = x.to(device), y.to(device)
        if total_nats is None:
            # float64 sums: millions of tokens at ~3 nats would lose digits in float32 (MPS has no float64)
            dtype = torch.float32 if device.type == "mps" else torch.float64
            total_nats = torch.zeros((), dtype=dtype, device=device)
            total_bytes = torch.zeros((), dtype=torch.long, device=device)
            token_bytes = token_bytes.to(device)
        loss = model(x, y, loss_reduction="none").reshape(-1)
        y = y.reshape(-1)
        nbytes = torch.where(y >= 0, token_bytes[y.clamp(min=0)], 0)
        counted = nbytes > 0
        total_nats += torch.where(counted, loss.to(total_nats.dtype), 0).sum()
        total_bytes += nbytes.sum()
    if total_nats is None:
        raise ValueError("evaluate_bpb: no batches to evaluate")
    if dist.is_initialized():
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    if total_bytes.item() == 0:
        raise ValueError("evaluate_bpb: no target tokens with a byte length > 0 (all targets ignored or special)")
    return total_nats.item() / (math.log(2) * total_bytes.item())


def _device_of(model, fallback: torch.Tensor) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return fallback.device


# -----------------------------------------------------------------------------
# Reports and the CLI


def write_core_report(run_dir: str | Path, results: dict) -> None:
    """core.json (the results as returned by evaluate_core) and core.csv (one row per task, then CORE)."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "core.json", json.dumps(results, indent=2) + "\n")
    lines = ["task,accuracy,centered,n,baseline"]
    for label, r in results["tasks"].items():
        lines.append(f"{label},{r['accuracy']:.6f},{r['centered']:.6f},{r['n']},{r['baseline']:.4f}")
    lines.append(f"CORE,,{results['core']:.6f},,")
    atomic_write_text(run_dir / "core.csv", "\n".join(lines) + "\n")


def _check_result_json(run_dir: Path) -> None:
    """Raise ValueError (one line) when RUN_DIR/result.json exists but cannot be rewritten."""
    if (run_dir / RESULT).exists():
        try:
            load_result(run_dir)
        except RunDirError as e:
            raise ValueError(f"{e}; refusing to overwrite it") from None


def record_core(run_dir: str | Path, core: float) -> None:
    """Set `core` in RUN_DIR/result.json, keeping its other keys (atomic rewrite; created when missing)."""
    try:
        update_result(run_dir, core=core)
    except RunDirError as e:
        raise ValueError(f"{e}; refusing to overwrite it") from None


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run directory (holds the checkpoint and result.json)")
    parser.add_argument("--core", action="store_true", help="evaluate the CORE metric")
    parser.add_argument("--max-per-task", type=int, default=None, help="evaluate only this many items per task")
    parser.add_argument("--eval-bundle", default=None, help="CORE bundle directory (else $NANORESEARCH_EVAL_BUNDLE, "
                        "else NANORESEARCH_HOME/eval_bundle, downloaded when missing)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N | mps (default: cuda when available)")
    args = parser.parse_args(argv)

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        _fail(f"--run {run_dir}: no such directory")
    if not args.core:
        _fail("nothing to evaluate: pass --core")
    if args.max_per_task is not None and args.max_per_task < 1:
        _fail(f"--max-per-task {args.max_per_task}: expected a positive integer")
    if args.batch_size < 1:
        _fail(f"--batch-size {args.batch_size}: expected a positive integer")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        _fail(f"--device {args.device}: expected cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {args.device}: CUDA is not available on this machine")
    try:
        _check_result_json(run_dir)  # fail now, not after the evaluation
        bundle = resolve_eval_bundle(args.eval_bundle)
        load_bundle(bundle)
    except (EvalBundleError, ValueError) as e:
        _fail(str(e))

    from model.checkpoint import load_model  # the checkpoint format lives there

    try:
        model, tokenizer, _meta = load_model(run_dir, device=str(device))
    except Exception as e:  # a CLI reports any load failure in one line
        _fail(f"cannot load a model from {run_dir}: {type(e).__name__}: {e}")
    if isinstance(model, torch.nn.Module):
        model.eval()
    # bf16 autocast on GPUs, as in training; CPU evaluates in float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    try:
        with autocast:
            results = evaluate_core(model, tokenizer, bundle, max_per_task=args.max_per_task,
                                    batch_size=args.batch_size, device=device)
    except EvalBundleError as e:
        _fail(str(e))
    write_core_report(run_dir, results)
    record_core(run_dir, results["core"])
    width = max(len(label) for label in results["tasks"])
    for label, r in results["tasks"].items():
        print(f"{label:<{width}}  accuracy {r['accuracy']:.4f}  centered {r['centered']:+.4f}  (n={r['n']})")
    print(f"CORE: {results['core']:.4f}")


if __name__ == "__main__":
    main()
