"""Chat fine-tuning: GSM8K tool-call rendering, packing, the chat eval on scripted models, and a tiny end-to-end SFT."""

import json
import math
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from model import sft
from model.sft import MultipleChoice, gsm8k_conversation, gsm8k_number, pack_rows, rows_to_batch

REPO = Path(__file__).resolve().parents[1]
CHAT_DATA = REPO.parent / "shared" / "data" / "chat"
TINY = ["--depth", "1", "--set", "vocab_size=1024", "--set", "sequence_len=64", "--set", "head_dim=32",
        "--set", "device_batch_size=4", "--set", "total_batch_size=256", "--set", "eval_tokens=1024"]


@pytest.fixture(scope="module")
def chat_data() -> Path:
    if not (CHAT_DATA / "gsm8k" / "train.jsonl").is_file():
        pytest.skip(f"shared chat data not found at {CHAT_DATA}")
    return CHAT_DATA


def run(cmd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


# --- rendering ------------------------------------------------------------------------------------------------

def test_gsm8k_answers_become_calculator_calls_that_train_the_call_not_the_output(tiny_tokenizer, chat_data):
    tok = tiny_tokenizer
    first = json.loads((chat_data / "gsm8k" / "train.jsonl").read_text().splitlines()[0])  # the 48/2 clips one
    conversation = gsm8k_conversation(first["question"], first["answer"])
    parts = conversation[1]["content"]
    assert [p["type"] for p in parts] == ["text", "python", "python_output", "text", "python", "python_output", "text"]
    assert [p["text"] for p in parts if p["type"] != "text"] == ["48/2", "24", "48+24", "72"]
    assert parts[-1]["text"].endswith("#### 72") and "<<" not in "".join(p["text"] for p in parts)
    ids, mask = tok.render_conversation(conversation)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "<|python_start|>48/2<|python_end|>" in trained and "<|python_start|>48+24<|python_end|>" in trained
    assert "<|output_start|>" not in trained and "#### 72<|assistant_end|>" in trained
    assert "<|output_start|>24<|output_end|>" in untrained and "<|output_start|>72<|output_end|>" in untrained
    assert first["question"] in untrained  # the user's turn is context, not a target
    assert gsm8k_number(first["answer"]) == "72"


def test_multiple_choice_letters_in_the_prompt_are_the_answer_tokens(tiny_tokenizer):
    q = MultipleChoice("Which is a planet?", ["Moon", "Mars", "Sun"], answer=1)
    ids, mask = tiny_tokenizer.render_conversation(q.conversation())
    answer = [i for i, m in zip(ids, mask) if m][:-1]  # the letter, before <|assistant_end|>
    assert tiny_tokenizer.decode(answer) == "B" and len(answer) == 1
    prompt = tiny_tokenizer.render_for_completion(q.conversation(with_answer=False))
    assert answer[0] in prompt  # "B) Mars" starts with the very token the model must answer with
    with pytest.raises(ValueError, match="2 to 10 choices"):
        MultipleChoice("?", ["only one"], 0).conversation()


def test_gsm8k_number_extraction():
    assert gsm8k_number("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert gsm8k_number("#### 5 then corrected #### -3.5") == "-3.5"
    assert gsm8k_number("The answer is 42") is None
    assert sft._same_number("72.0", "72") and not sft._same_number("72", "73") and not sft._same_number(None, "1")


# --- packing ----------------------------------------------------------------------------------------------------

def test_packing_keeps_whole_conversations_and_masks_the_padding():
    BOS, capacity = 0, 40
    rng = random.Random(0)
    # Conversation k is BOS followed by the token k+1 repeated: whole conversations can be recognised in a row.
    conversations = []
    for k in range(200):
        n = rng.randint(2, capacity)
        conversations.append(([BOS] + [k + 1] * (n - 1), [0] + [rng.randint(0, 1) for _ in range(n - 1)]))
    rows = list(pack_rows(iter(conversations), capacity, BOS, buffer_size=16))
    seen = []
    for ids, mask in rows:
        assert len(ids) == len(mask) == capacity
        t = 0
        while t < capacity and not (ids[t] == BOS and (t + 1 == capacity or ids[t + 1] == BOS)):
            k = ids[t + 1] - 1
            n = len(conversations[k][0])
            assert (ids[t:t + n], mask[t:t + n]) == conversations[k]  # whole, unsplit, with its own mask
            seen.append(k)
            t += n
        assert all(i == BOS for i in ids[t:]) and all(m == 0 for m in mask[t:])  # padding: BOS, never trained
    assert sorted(seen) == list(range(200))  # every conversation exactly once
    # Best fit keeps padding small: on average rows are mostly conversation, not padding.
    padding = sum(m == 0 and i == BOS for ids, mask in rows for i, m in zip(ids, mask))
    assert padding < 0.1 * len(rows) * capacity
    x, y = rows_to_batch(rows[:4], "cpu")
    assert x.shape == y.shape == (4, capacity - 1)
    expect = torch.tensor([ids[1:] for ids, _ in rows[:4]])
    trained = torch.tensor([mask[1:] for _, mask in rows[:4]], dtype=torch.bool)
    assert torch.equal(y[trained], expect[trained]) and bool((y[~trained] == -1).all())
    assert torch.equal(x, torch.tensor([ids[:-1] for ids, _ in rows[:4]]))
    with pytest.raises(ValueError, match="does not fit"):
        list(pack_rows([([BOS] * 41, [0] * 41)], capacity, BOS))


# --- the chat eval on scripted models -------------------------------------------------------------------------

class ScriptedChat:
    """A model that reads its prompt: for letter questions it puts its top letter logit on `letters[question]`
    (and a larger logit on a non-letter token, which the eval must ignore); for GSM8K it spells out
    `scripts[question]` token by token after the prompt (with or without the KV cache)."""

    def __init__(self, tokenizer, letters=None, scripts=None):
        self.tok, self.letters, self.scripts = tokenizer, letters or {}, scripts or {}
        self.config = types.SimpleNamespace(depth=1, n_kv_head=1, head_dim=2, vocab_size=tokenizer.vocab_size)
        self.device, self.rotary_len = torch.device("cpu"), 4096
        self.script, self.prompt_len = None, 0

    def compute_dtype(self):
        return torch.float32

    def _question(self, ids, table):
        text = self.tok.decode(ids)
        return next(q for q in table if q in text)

    def __call__(self, idx, kv_cache=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        start = 0 if kv_cache is None else kv_cache.pos
        if start == 0 and self.letters:
            letter = self.letters[self._question(idx[0].tolist(), self.letters)]
            logits[:, -1, self.tok.encode(letter)[0]] = 5.0
            logits[:, -1, self.tok.encode(" the")[0]] = 9.0
        elif self.scripts:
            if start == 0:
                self.script = self.scripts[self._question(idx[0].tolist(), self.scripts)]
                self.prompt_len = T  # the prefill: the engine feeds the prompt, then one token per step
            for t in range(T):
                k = start + t + 1 - self.prompt_len
                if 0 <= k < len(self.script):
                    logits[:, t, self.script[k]] = 10.0
                elif k >= len(self.script):
                    logits[:, t, self.tok.special_id("<|assistant_end|>")] = 10.0
        if kv_cache is not None:
            kv_cache.advance(T)
        return logits


def test_letter_choice_accuracy_is_computed_right(tiny_tokenizer, chat_data):
    examples = sft.load_arc(chat_data, "ARC-Easy", "test")[:8]
    # Right on examples 0, 3, 5; a wrong letter on the others.
    right = {0, 3, 5}
    letters = {e.question: "ABCDE"[e.answer if i in right else (e.answer + 1) % len(e.choices)]
               for i, e in enumerate(examples)}
    result = sft.choice_accuracy(ScriptedChat(tiny_tokenizer, letters=letters), tiny_tokenizer, examples)
    assert result == {"accuracy": 3 / 8, "correct": 3, "n": 8}


def test_gsm8k_exact_match_with_tool_use_is_computed_right(tiny_tokenizer, chat_data):
    tok = tiny_tokenizer
    problems = sft.load_gsm8k(chat_data, "test")[:5]
    forced = [tok.special_id("<|output_start|>"), *tok.encode("12"), tok.special_id("<|output_end|>")]
    scripts = {}
    for i, p in enumerate(problems):
        truth = gsm8k_number(p["answer"])
        final = {0: truth, 1: str(int(truth) + 1), 2: truth, 3: None, 4: f"{int(truth):,}"}[i]
        # A calculator call first (its forced output lands where the filler is), then the final line.
        call = [tok.special_id("<|python_start|>"), *tok.encode("3*4"), tok.special_id("<|python_end|>")]
        tail = tok.encode(f" so #### {final}" if final is not None else " I do not know")
        scripts[p["question"]] = call + [tok.encode(" x")[0]] * len(forced) + tail
    model = ScriptedChat(tok, scripts=scripts)
    result = sft.gsm8k_accuracy(model, tok, problems, max_tokens=64)
    # Right: 0, 2 and 4 (1,234-style thousands separators are not a different number); 1 is off by one, 3 has none.
    assert result == {"accuracy": 3 / 5, "correct": 3, "n": 5}


# --- end to end -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sft(tiny_tokenizer, shared_data, chat_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    tiny_tokenizer.save(root / "tokenizer")
    base = root / "base"
    proc = run([sys.executable, "-m", "model.train", *TINY, "--data", str(shared_data), "--tokenizer",
                str(root / "tokenizer"), "--out", str(base), "--num-iterations", "5"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = (base / "result.json").read_text()
    proc = run([sys.executable, "-m", "model.sft", "--from", str(base), "--chat-data", str(chat_data),
                "--num-iterations", "12", "--eval-every", "6", "--eval-examples", "2", "--gsm8k-max-tokens", "16",
                "--val-conversations", "20", "--no-smoltalk", "--lr-scale", "20"])
    return base, proc, before


@pytest.mark.slow
def test_tiny_sft_writes_a_loadable_chat_run(tiny_sft):
    from model.checkpoint import load_model

    base, proc, base_result_before = tiny_sft
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 12/12" in proc.stderr and "eta" in proc.stderr  # progress lines
    chat = base / "chat"
    config = json.loads((chat / "config.json").read_text())
    assert config["chat"] is True and config["base_run"] == str(base.resolve())
    assert config["sft"]["num_iterations"] == 12 and config["sft"]["lr_scale"] == 20
    assert config["model"] == json.loads((base / "config.json").read_text())["model"]
    points = [json.loads(line) for line in (chat / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [0, 6, 12]
    assert all(math.isfinite(p["val_loss"]) and math.isfinite(p["val_bpb"]) for p in points)
    result = json.loads((chat / "result.json").read_text())
    assert result["status"] == "ok" and result["steps"] == 12 and result["val_loss"] == points[-1]["val_loss"]
    assert result["tokens"] == 12 * 256
    assert set(result["chat_eval"]) == {"ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K"}
    details = json.loads((chat / "chat_eval.json").read_text())
    assert all(t["n"] == 2 for t in details["tasks"].values())
    assert result["chatcore"] == details["chatcore"]
    from leaderboard.dashboard_format import chat_eval_table  # what the Chat page shows of it
    shown = chat_eval_table(details)
    assert dict(zip(shown["task"], shown["accuracy"])) == result["chat_eval"] and set(shown["n"]) == {2}
    # The base run is untouched; the chat run loads, with weights that SFT changed.
    assert (base / "result.json").read_text() == base_result_before
    chat_model, tokenizer, meta = load_model(chat)
    base_model, _, _ = load_model(base)
    assert meta["chat"] is True and meta["step"] == 12 and tokenizer.vocab_size == 1024
    assert not torch.equal(chat_model.lm_head.weight, base_model.lm_head.weight)
    assert points[-1]["val_loss"] < points[0]["val_loss"]  # it learned something about the chat format


@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_nothing(tiny_sft, tmp_path, capsys, chat_data, monkeypatch):
    base, _, _ = tiny_sft
    cases = [
        (["--from", str(tmp_path / "missing"), "--chat-data", str(chat_data)], "no such run dir"),
        (["--from", str(base), "--chat-data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")],
         "not a directory"),
        (["--from", str(base), "--chat-data", str(tmp_path), "--out", str(tmp_path / "b")], "no chat data found"),
        (["--from", str(base), "--chat-data", str(chat_data)], "already holds a run"),  # base/chat exists
        (["--from", str(base), "--chat-data", str(chat_data), "--lr-scale", "0", "--out", str(tmp_path / "c")],
         "--lr-scale 0"),
        (["--from", str(tmp_path), "--chat-data", str(chat_data), "--out", str(tmp_path / "d")], "config.json"),
    ]
    for argv, expected in cases:
        assert sft.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, err
    with monkeypatch.context() as m:  # the environment variable stands in for --chat-data
        m.setenv("NANORESEARCH_CHAT_DATA", str(tmp_path / "env_nowhere"))
        assert sft.main(["--from", str(base), "--out", str(tmp_path / "e")]) == 2
        assert f"NANORESEARCH_CHAT_DATA={tmp_path / 'env_nowhere'}: not a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was created
