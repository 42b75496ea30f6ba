"""CORE: prompt rendering on the real bundle, each task type with scripted models whose answers are known,
centering, bundle errors, bundle resolution/download, and the CLI with a stand-in checkpoint loader."""

import json
import random
import re
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from model import evaluate as ev
from model.evaluate import (
    EvalBundleError,
    centered_accuracy,
    evaluate_core,
    fewshot_indices,
    load_bundle,
    load_task_data,
    locate_continuations,
    render_prompts,
    resolve_eval_bundle,
    score_rows,
    shuffled,
)

REAL_BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval_bundle"
needs_real_bundle = pytest.mark.skipif(not (REAL_BUNDLE / "core.yaml").is_file(), reason="shared eval bundle absent")


# -----------------------------------------------------------------------------
# Fakes with the project's tokenizer / model interfaces


class ByteTokenizer:
    """UTF-8 bytes as tokens, BOS = 256."""

    bos_id = 256
    vocab_size = 257

    def encode(self, text, prepend=None, append=None):
        ids = list(text.encode("utf-8"))
        return ([prepend] if prepend is not None else []) + ids + ([append] if append is not None else [])

    def encode_batch(self, texts, prepend=None):
        return [self.encode(t, prepend=prepend) for t in texts]

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self):
        return torch.tensor([1] * 256 + [0], dtype=torch.int32)


class NextTokenTable(nn.Module):
    """Scripted: the logits at each position favour one next token chosen by the current token."""

    def __init__(self, favoured_next: dict[str, str], default: str, strength: float = 10.0):
        super().__init__()
        table = torch.zeros(257, 257)
        table[:, ord(default)] = strength
        for cur, nxt in favoured_next.items():
            table[ord(cur)] = 0
            table[ord(cur), ord(nxt)] = strength
        self.register_buffer("table", table)

    def forward(self, idx):
        return self.table[idx]


class RowCounter(NextTokenTable):
    """Favours 'a' everywhere and counts the sequences it is asked to score."""

    def __init__(self):
        super().__init__({}, default="a")
        self.rows = 0

    def forward(self, idx):
        self.rows += idx.shape[0]
        return super().forward(idx)


class CopyFirstToken(nn.Module):
    """Scripted: every position predicts the first token after BOS (so the continuation is likely exactly
    when it repeats the context's first character)."""

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 257)
        logits.scatter_(2, idx[:, 1:2].unsqueeze(1).expand(-1, idx.shape[1], 1), 10.0)
        return logits


class TinyCausalModel(nn.Module):
    """Random and causal: the running mean of the embeddings so far, then a linear head. Its output at a
    position depends on every earlier token (so left padding or a leaky batch would show)."""

    def __init__(self, vocab_size=257, dim=32, sequence_len=256, seed=0, max_positions=None):
        super().__init__()
        torch.manual_seed(seed)
        self.config = types.SimpleNamespace(sequence_len=sequence_len)
        self.rotary_len = max_positions or 10 * sequence_len  # as GPT: positions up to 10x the training length
        self.emb = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, vocab_size)
        self.longest_seen = 0

    def forward(self, idx):
        assert idx.shape[1] <= self.rotary_len, "fed more tokens than the model can take"
        self.longest_seen = max(self.longest_seen, idx.shape[1])
        h = self.emb(idx).cumsum(1) / torch.arange(1, idx.shape[1] + 1).view(1, -1, 1)
        return self.head(torch.tanh(h))


def make_bundle(root: Path, tasks: list[dict]) -> Path:
    """A bundle on disk. Each task: label, type, items, and optional shots, delimiter, baseline (percent)."""
    root.mkdir(parents=True, exist_ok=True)
    icl, rows = [], ["Eval Task,Task Category,Random baseline"]
    for t in tasks:
        entry = {"label": t["label"], "dataset_uri": f"cat/{t['label']}.jsonl", "num_fewshot": [t.get("shots", 0)],
                 "icl_task_type": t["type"]}
        if "delimiter" in t:
            entry["continuation_delimiter"] = t["delimiter"]
        icl.append(entry)
        rows.append(f"{t['label']},x,{t.get('baseline', 0)}")
        path = root / "eval_data" / "cat" / f"{t['label']}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(item) + "\n" for item in t["items"]))
    (root / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": icl}))
    (root / "eval_meta_data.csv").write_text("\n".join(rows) + "\n")
    return root


# -----------------------------------------------------------------------------
# Each task type, scripted


def test_multiple_choice_picks_lowest_mean_loss_not_sum(tmp_path):
    # The model puts almost all mass on 'a'. "aaaaaaab" has a lower MEAN loss than "b" but a higher SUM, so
    # only mean scoring picks the long option. (Both options share the first 'a', which the common-prefix
    # rule assigns to the context.)
    items = [
        {"query": "Q", "choices": ["aaaaaaaab", "ab"], "gold": 0},   # mean -> 0: right
        {"query": "Q", "choices": ["ab", "aaaaaaaab"], "gold": 1},   # mean -> 1: right
        {"query": "Q", "choices": ["bbb", "aaa", "ccc"], "gold": 0},  # model -> 1: wrong
    ]
    bundle = make_bundle(tmp_path, [{"label": "mc", "type": "multiple_choice", "items": items, "baseline": 50}])
    out = evaluate_core(NextTokenTable({}, default="a"), ByteTokenizer(), bundle, progress=False)
    task = out["tasks"]["mc"]
    assert task["n"] == 3
    assert task["accuracy"] == pytest.approx(2 / 3)
    assert task["baseline"] == pytest.approx(0.5)
    assert task["centered"] == pytest.approx((2 / 3 - 0.5) / 0.5)
    assert out["core"] == pytest.approx(task["centered"])


def test_schema_scores_the_shared_continuation_under_each_context(tmp_path):
    items = [
        {"context_options": ["a said", "b said"], "continuation": "bbbb", "gold": 1},  # 'b' context wins: right
        {"context_options": ["a said", "b said"], "continuation": "bbbb", "gold": 0},  # wrong
        {"context_options": ["b x", "a x", "c x"], "continuation": "aa", "gold": 1},  # right
        {"context_options": ["c y", "b y"], "continuation": "cc", "gold": 0},  # right
    ]
    bundle = make_bundle(tmp_path, [{"label": "sch", "type": "schema", "items": items, "baseline": 50}])
    out = evaluate_core(CopyFirstToken(), ByteTokenizer(), bundle, progress=False)
    assert out["tasks"]["sch"]["accuracy"] == pytest.approx(3 / 4)
    assert out["tasks"]["sch"]["centered"] == pytest.approx(0.5)


def test_language_modeling_needs_every_token_to_be_the_argmax(tmp_path):
    # After 'q' the model predicts ' ', after ' ' 'a', after anything else 'a'.
    model = NextTokenTable({"q": " ", " ": "a"}, default="a")
    items = [
        {"context": "q", "continuation": "aaa"},       # ' ','a','a','a' all argmax: right
        {"context": "q", "continuation": "aab"},       # 3 of 4 tokens right: wrong
        {"context": "q  \n", "continuation": "aaaa"},  # the context's trailing whitespace is trimmed: right
        {"context": "z", "continuation": "aa"},        # after 'z' the model says 'a', not ' ': wrong
    ]
    bundle = make_bundle(tmp_path, [{"label": "lm", "type": "language_modeling", "items": items}])
    out = evaluate_core(model, ByteTokenizer(), bundle, progress=False)
    assert out["tasks"]["lm"]["accuracy"] == pytest.approx(0.5)
    assert out["tasks"]["lm"]["centered"] == pytest.approx(0.5)  # baseline 0: centered == accuracy


def test_core_is_the_unweighted_mean_of_centered_accuracies(tmp_path):
    mc = [{"query": "Q", "choices": ["a", "b", "c", "d"], "gold": g} for g in (0, 0, 0, 1)]  # 3/4 right
    lm = [{"context": "x", "continuation": "aa"}] * 3 + [{"context": "x", "continuation": "b"}] * 7  # 3/10
    bundle = make_bundle(tmp_path, [
        {"label": "mc", "type": "multiple_choice", "items": mc, "baseline": 25},
        {"label": "lm", "type": "language_modeling", "items": lm, "delimiter": ""},
    ])
    out = evaluate_core(NextTokenTable({}, default="a"), ByteTokenizer(), bundle, progress=False)
    # mc: (0.75 - 0.25) / 0.75 = 2/3; lm: 0.3 with baseline 0; CORE = (2/3 + 0.3) / 2
    assert out["tasks"]["mc"]["centered"] == pytest.approx(2 / 3)
    assert out["tasks"]["lm"]["centered"] == pytest.approx(0.3)
    assert out["core"] == pytest.approx((2 / 3 + 0.3) / 2)
    assert [out["tasks"][k]["n"] for k in ("mc", "lm")] == [4, 10]


def test_centering_arithmetic():
    assert centered_accuracy(0.25, 25) == pytest.approx(0.0)
    assert centered_accuracy(1.0, 25) == pytest.approx(1.0)
    assert centered_accuracy(0.625, 25) == pytest.approx(0.5)
    assert centered_accuracy(0.1, 25) < 0  # worse than chance is negative
    assert centered_accuracy(0.4, 0) == pytest.approx(0.4)


def test_max_per_task_takes_the_same_shuffled_prefix(tmp_path):
    items = [{"context": f"item{i}", "continuation": "aa"} for i in range(30)]
    bundle = make_bundle(tmp_path, [{"label": "lm", "type": "language_modeling", "items": items, "shots": 2}])
    out = evaluate_core(NextTokenTable({}, default="a"), ByteTokenizer(), bundle, max_per_task=7, progress=False)
    assert out["tasks"]["lm"]["n"] == 7 and out["max_per_task"] == 7
    with pytest.raises(ValueError, match="max_per_task"):
        evaluate_core(NextTokenTable({}, default="a"), ByteTokenizer(), bundle, max_per_task=0, progress=False)


def _core_rank(rank, world, port, bundle, out_path):
    import os

    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = RowCounter()
        out = evaluate_core(model, ByteTokenizer(), bundle, progress=False, distributed=True)
        Path(f"{out_path}.{rank}").write_text(json.dumps({**out, "rows": model.rows}))
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_split_the_items_and_agree(tmp_path):
    import socket

    import torch.multiprocessing as mp
    mc = [{"query": "Q", "choices": ["a", "b", "c"], "gold": i % 3} for i in range(7)]  # gold 0 at i=0,3,6
    lm = [{"context": "x", "continuation": "a" if i < 2 else "b"} for i in range(5)]
    bundle = make_bundle(tmp_path / "b", [
        {"label": "mc", "type": "multiple_choice", "items": mc, "baseline": 25},
        {"label": "lm", "type": "language_modeling", "items": lm, "delimiter": ""},
    ])
    model = RowCounter()
    single = evaluate_core(model, ByteTokenizer(), bundle, progress=False)
    assert model.rows == 7 * 3 + 5
    assert single["tasks"]["mc"]["accuracy"] == pytest.approx(3 / 7)
    assert single["tasks"]["lm"]["accuracy"] == pytest.approx(2 / 5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "core")
    # fork: the children inherit the imported torch instead of re-importing it
    mp.start_processes(_core_rank, args=(2, port, bundle, out), nprocs=2, join=True, start_method="fork")
    results = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]
    assert [r.pop("rows") for r in results] == [4 * 3 + 3, 3 * 3 + 2]  # items 0,2,4.. and 1,3,5..
    assert results == [single, single]  # same counts, so exactly equal


# -----------------------------------------------------------------------------
# Batching, padding, truncation


def test_padding_and_batch_size_do_not_change_scores():
    model = TinyCausalModel()
    rng = random.Random(0)
    rows = []
    for _ in range(11):  # rows of very different lengths, so most get padded
        tokens = [256] + [rng.randrange(256) for _ in range(rng.randrange(3, 60))]
        start = rng.randrange(1, len(tokens))
        rows.append((tokens, start, len(tokens)))
    one = score_rows(model, rows, batch_size=1, pad_id=256)
    many = score_rows(model, rows, batch_size=5, pad_id=256)
    assert [round(loss, 5) for loss, _ in one] == [round(loss, 5) for loss, _ in many]
    assert [hit for _, hit in one] == [hit for _, hit in many]
    # and the scores are the scored tokens' mean cross-entropy, computed here directly for one row
    tokens, start, end = rows[3]
    logits = model(torch.tensor([tokens]))[0]
    expected = torch.nn.functional.cross_entropy(logits[start - 1 : end - 1], torch.tensor(tokens[start:end]))
    assert one[3][0] == pytest.approx(expected.item(), rel=1e-5)


def test_locating_continuations():
    bos = 256
    mc = locate_continuations("multiple_choice", [[bos, 1, 2, 7, 8], [bos, 1, 2, 9]])
    assert [(s, e) for _, s, e in mc] == [(3, 5), (3, 4)]
    schema = locate_continuations("schema", [[bos, 5, 1, 2, 3], [bos, 6, 6, 1, 2, 3]])
    assert [(s, e) for _, s, e in schema] == [(2, 5), (3, 6)]
    (row,) = locate_continuations("language_modeling", [[bos, 1, 2], [bos, 1, 2, 3, 4]])
    assert row[1:] == (3, 5)
    # identical options still score at least one token each (never an empty, NaN mean)
    same = locate_continuations("multiple_choice", [[bos, 1, 2], [bos, 1, 2]])
    assert all(e - s >= 1 for _, s, e in same)


@needs_real_bundle
def test_long_prompts_are_scored_whole_as_nanochat_scores_them():
    tasks = {t.label: t for t in load_bundle(REAL_BUNDLE)}
    task = tasks["arc_easy"]  # 10-shot: far longer than the 64 tokens (bytes) the model trained at
    data = shuffled(load_task_data(task))
    tokenizer = ByteTokenizer()
    longest = max(len(tokenizer.encode(p)) + 1 for i in (0, 1, 2) for p in render_prompts(task, data, i))
    model = TinyCausalModel(sequence_len=64, max_positions=100_000)
    correct, cropped = ev.evaluate_items(model, tokenizer, task, data, [0, 1, 2], batch_size=4)
    assert len(correct) == 3 and cropped == 0 and model.longest_seen == longest > 64
    # The same answers item by item (a long row gets a batch of its own: batching changes no score).
    alone = [ev.evaluate_items(model, tokenizer, task, data, [i], batch_size=1)[0][0] for i in (0, 1, 2)]
    assert alone == correct
    # Longer than the model can take at all: cropped to its last positions, and counted, never silently.
    small = TinyCausalModel(sequence_len=64, max_positions=200)
    correct, cropped = ev.evaluate_items(small, tokenizer, task, data, [0, 1, 2], batch_size=4)
    assert len(correct) == 3 and cropped == 3 and small.longest_seen == 200


def test_rows_batch_by_tokens_as_well_as_by_count():
    rows = [([0] * n, 1, n) for n in (10, 10, 10, 100, 100, 1000)]
    assert ev._batches(list(range(6)), rows, batch_size=16, max_tokens=None) == [[0, 1, 2, 3, 4, 5]]
    assert ev._batches(list(range(6)), rows, batch_size=16, max_tokens=256) == [[0, 1, 2], [3, 4], [5]]
    assert ev._batches(list(range(6)), rows, batch_size=2, max_tokens=None) == [[0, 1], [2, 3], [4, 5]]


# -----------------------------------------------------------------------------
# Prompt rendering on the real bundle


@needs_real_bundle
def test_multiple_choice_prompts_on_real_lines():
    tasks = {t.label: t for t in load_bundle(REAL_BUNDLE)}
    task = tasks["arc_easy"]
    assert (task.task_type, task.num_fewshot, task.continuation_delimiter) == ("multiple_choice", 10, "\nAnswer: ")
    data = shuffled(load_task_data(task))
    idx = 5
    item = data[idx]
    prompts = render_prompts(task, data, idx)
    assert prompts == render_prompts(task, data, idx)  # deterministic
    assert len(prompts) == len(item["choices"])
    shot_ids = fewshot_indices(len(data), idx, 10)
    assert len(set(shot_ids)) == 10 and idx not in shot_ids
    for prompt, choice in zip(prompts, item["choices"], strict=True):
        blocks = prompt.split("\n\n")
        assert len(blocks) == 11  # ten solved examples, then the item itself last
        assert blocks[-1] == f"{item['query']}\nAnswer: {choice}"
        for block, j in zip(blocks[:10], shot_ids, strict=True):
            assert block == f"{data[j]['query']}\nAnswer: {data[j]['choices'][data[j]['gold']]}"
            assert data[j] is not item
    # another item gets other examples
    assert fewshot_indices(len(data), idx + 1, 10) != shot_ids


@needs_real_bundle
def test_fewshot_draws_match_nanochat_sampling():
    # the definition: random.Random(1234 + idx).sample(all other indices, k)
    for n, idx, k in [(2376, 0, 10), (2376, 2375, 10), (230, 17, 3), (11, 4, 10)]:
        reference = random.Random(1234 + idx).sample([i for i in range(n) if i != idx], k)
        assert fewshot_indices(n, idx, k) == reference
    assert fewshot_indices(50, 3, 0) == []


@needs_real_bundle
def test_language_modeling_and_schema_prompts_on_real_lines():
    tasks = {t.label: t for t in load_bundle(REAL_BUNDLE)}
    jeopardy = tasks["jeopardy"]
    data = shuffled(load_task_data(jeopardy))
    item = data[0]
    without, with_ = render_prompts(jeopardy, data, 0)
    assert with_.startswith(without) and with_.endswith("\nAnswer: " + item["continuation"])
    assert without == without.strip() and without.endswith(item["context"].strip() + "\nAnswer:")
    assert with_.count("\nAnswer: ") == 11
    tok = ByteTokenizer()
    (row,) = locate_continuations("language_modeling", [[256, *tok.encode(p)] for p in (without, with_)])
    tokens, start, end = row
    assert tok.decode(tokens[start:end]) == " " + item["continuation"]  # the delimiter's space, then the answer

    winograd = tasks["winograd"]  # schema, 0-shot, default delimiter ' '
    data = shuffled(load_task_data(winograd))
    item = data[3]
    prompts = render_prompts(winograd, data, 3)
    assert prompts == [f"{c} {item['continuation']}" for c in item["context_options"]]


@needs_real_bundle
def test_real_bundle_loads_22_tasks():
    tasks = load_bundle(REAL_BUNDLE)
    assert len(tasks) == 22
    baselines = {t.label: t.random_baseline for t in tasks}
    assert baselines["hellaswag"] == 25 and baselines["copa"] == 50 and baselines["jeopardy"] == 0
    assert {t.task_type for t in tasks} == set(ev.TASK_TYPES)


@needs_real_bundle
def test_random_model_scores_near_zero_core():
    out = evaluate_core(TinyCausalModel(sequence_len=256), ByteTokenizer(), REAL_BUNDLE, max_per_task=16,
                        batch_size=32, progress=False)
    assert len(out["tasks"]) == 22 and all(t["n"] == 16 for t in out["tasks"].values())
    assert abs(out["core"]) < 0.1
    for label, t in out["tasks"].items():
        if t["baseline"] == 0:  # greedy exact match by a random model: (almost) never
            assert t["accuracy"] <= 1 / 16, label


# -----------------------------------------------------------------------------
# Bundle errors name the file


def _good_bundle(tmp_path):
    return make_bundle(tmp_path / "b", [
        {"label": "mc", "type": "multiple_choice", "items": [{"query": "q", "choices": ["a", "b"], "gold": 0}] * 3},
        {"label": "lm", "type": "language_modeling", "items": [{"context": "c", "continuation": "x"}] * 3},
    ])


def test_missing_files_are_named(tmp_path):
    bundle = _good_bundle(tmp_path)
    assert [t.label for t in load_bundle(bundle)] == ["mc", "lm"]
    (bundle / "eval_data" / "cat" / "lm.jsonl").unlink()
    with pytest.raises(EvalBundleError, match=re.escape(str(bundle / "eval_data" / "cat" / "lm.jsonl"))):
        load_bundle(bundle)
    (bundle / "eval_meta_data.csv").unlink()
    with pytest.raises(EvalBundleError, match=re.escape(str(bundle / "eval_meta_data.csv"))):
        load_bundle(bundle)
    (bundle / "core.yaml").unlink()
    (bundle / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nmc,25\n")
    with pytest.raises(EvalBundleError, match=re.escape(str(bundle / "core.yaml"))):
        load_bundle(bundle)


@pytest.mark.parametrize("target, content, expected", [
    ("core.yaml", "icl_tasks: [\n", "not valid YAML"),
    ("core.yaml", "icl_tasks:\n- {label: mc, dataset_uri: cat/mc.jsonl, num_fewshot: [0], icl_task_type: ranking}\n",
     "icl_task_type 'ranking'"),
    ("core.yaml", "icl_tasks:\n- {label: mc, dataset_uri: cat/mc.jsonl, num_fewshot: [-1], "
                  "icl_task_type: multiple_choice}\n", "num_fewshot"),
    ("eval_meta_data.csv", "Eval Task,Random baseline\nmc,25\n", "no 'Random baseline' row for task 'lm'"),
    ("eval_meta_data.csv", "Eval Task,Random baseline\nmc,lots\nlm,0\n", "'lots'"),
    ("eval_meta_data.csv", "Task,Baseline\nmc,25\n", "expected columns"),
])
def test_malformed_config_files_are_named(tmp_path, target, content, expected):
    bundle = _good_bundle(tmp_path)
    (bundle / target).write_text(content)
    with pytest.raises(EvalBundleError) as err:
        load_bundle(bundle)
    message = str(err.value)
    assert str(bundle / target) in message and expected in message and "\n" not in message


@pytest.mark.parametrize("line, expected", [
    ("{not json", "not valid JSON"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 2}', "'gold'"),
    ('{"query": "q", "choices": "ab", "gold": 0}', "'choices'"),
    ('[1, 2]', "JSON object"),
])
def test_malformed_data_lines_are_named_with_line_number(tmp_path, line, expected):
    bundle = _good_bundle(tmp_path)
    path = bundle / "eval_data" / "cat" / "mc.jsonl"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(EvalBundleError, match=re.escape(f"{path}:4: ") + ".*" + re.escape(expected)):
        evaluate_core(NextTokenTable({}, default="a"), ByteTokenizer(), bundle, progress=False)


# -----------------------------------------------------------------------------
# Where the bundle comes from


def test_resolution_order_flag_then_env_then_home(tmp_path, monkeypatch):
    flag_dir, env_dir, home = tmp_path / "flag", tmp_path / "env", tmp_path / "home"
    flag_dir.mkdir()
    env_dir.mkdir()
    (home / "eval_bundle").mkdir(parents=True)
    (home / "eval_bundle" / "core.yaml").write_text("icl_tasks: []\n")
    monkeypatch.setenv("NANORESEARCH_HOME", str(home))
    monkeypatch.setenv("NANORESEARCH_EVAL_BUNDLE", str(env_dir))
    assert resolve_eval_bundle(str(flag_dir)) == flag_dir
    assert resolve_eval_bundle(None) == env_dir
    monkeypatch.delenv("NANORESEARCH_EVAL_BUNDLE")
    assert resolve_eval_bundle(None) == home / "eval_bundle"
    with pytest.raises(EvalBundleError, match="--eval-bundle .*nope: no such directory"):
        resolve_eval_bundle(str(tmp_path / "nope"))


def test_download_unpacks_atomically_into_home(tmp_path, monkeypatch):
    source = make_bundle(tmp_path / "src" / "eval_bundle", [
        {"label": "mc", "type": "multiple_choice", "items": [{"query": "q", "choices": ["a", "b"], "gold": 1}] * 2}])
    archive = tmp_path / "eval_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in source.rglob("*"):
            zf.write(f, f.relative_to(source.parent))
    home = tmp_path / "home"
    monkeypatch.setenv("NANORESEARCH_HOME", str(home))
    monkeypatch.delenv("NANORESEARCH_EVAL_BUNDLE", raising=False)
    monkeypatch.setattr(ev, "EVAL_BUNDLE_URL", archive.as_uri())
    path = resolve_eval_bundle(None)
    assert path == home / "eval_bundle"
    assert [t.label for t in load_bundle(path)] == ["mc"]
    assert sorted(p.name for p in home.iterdir()) == ["eval_bundle"]  # no temporary left behind


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NANORESEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NANORESEARCH_EVAL_BUNDLE", raising=False)
    monkeypatch.setattr(ev, "EVAL_BUNDLE_URL", (tmp_path / "missing.zip").as_uri())
    monkeypatch.setattr(ev.time, "sleep", lambda s: None)
    with pytest.raises(EvalBundleError, match="download failed after 5 attempts"):
        resolve_eval_bundle(None)
    assert not (tmp_path / "home" / "eval_bundle").exists()
    not_a_zip = tmp_path / "bad.zip"
    not_a_zip.write_bytes(b"this is not a zip")
    monkeypatch.setattr(ev, "EVAL_BUNDLE_URL", not_a_zip.as_uri())
    with pytest.raises(EvalBundleError, match="not a valid zip"):
        resolve_eval_bundle(None)
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == []


# -----------------------------------------------------------------------------
# Reports and the CLI (with a stand-in for model.checkpoint.load_model)


@pytest.fixture
def fake_checkpoint(monkeypatch):
    module = types.ModuleType("model.checkpoint")
    module.load_model = lambda run_dir, device="cpu": (NextTokenTable({}, default="a"), ByteTokenizer(), {})
    monkeypatch.setitem(sys.modules, "model.checkpoint", module)


def test_cli_records_core_and_keeps_other_result_keys(tmp_path, fake_checkpoint, capsys):
    bundle = make_bundle(tmp_path / "bundle", [
        {"label": "mc", "type": "multiple_choice", "baseline": 50,
         "items": [{"query": "Q", "choices": ["a", "b"], "gold": g} for g in (0, 0, 1, 0)]}])
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"status": "ok", "val_bpb": 1.25, "core": None}))
    ev.main(["--run", str(run), "--core", "--eval-bundle", str(bundle), "--device", "cpu"])
    result = json.loads((run / "result.json").read_text())
    assert result == {"status": "ok", "val_bpb": 1.25, "core": pytest.approx(0.5)}  # acc 3/4 vs 50%
    report = json.loads((run / "core.json").read_text())
    assert report["tasks"]["mc"]["accuracy"] == pytest.approx(0.75)
    lines = (run / "core.csv").read_text().splitlines()
    assert lines[0] == "task,accuracy,centered,n,baseline" and lines[-1].startswith("CORE,,0.5")
    assert "CORE: 0.5000" in capsys.readouterr().out


def _cli_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        ev.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and "\n" not in err
    return err


def test_cli_bad_input_is_one_line_error(tmp_path, fake_checkpoint, capsys):
    run = tmp_path / "run"
    run.mkdir()
    bundle = str(_good_bundle(tmp_path))
    assert "no such directory" in _cli_error(["--run", str(tmp_path / "nope"), "--core"], capsys)
    assert "pass --core" in _cli_error(["--run", str(run), "--eval-bundle", bundle], capsys)
    assert "--max-per-task 0" in _cli_error(["--run", str(run), "--core", "--max-per-task", "0",
                                             "--eval-bundle", bundle], capsys)
    assert "missing" in _cli_error(["--run", str(run), "--core", "--eval-bundle", str(tmp_path / "missing")], capsys)
    # a corrupt result.json is reported up front and left exactly as it was
    (run / "result.json").write_text("{truncated")
    assert "result.json" in _cli_error(["--run", str(run), "--core", "--eval-bundle", bundle], capsys)
    assert (run / "result.json").read_text() == "{truncated"
    assert not (run / "core.json").exists()


def test_result_json_is_created_when_missing(tmp_path):
    ev.record_core(tmp_path, 0.125)
    assert json.loads((tmp_path / "result.json").read_text()) == {"core": 0.125}
    ev.record_core(tmp_path, 0.25)
    assert json.loads((tmp_path / "result.json").read_text()) == {"core": 0.25}
