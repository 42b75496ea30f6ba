"""`python -m harness.chat`: chat or base model by run dir, one-shot and REPL, history, tool display, errors."""

import argparse
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.chat import ChatSession, ReplyStream, load_session, main, repl

REPO = Path(__file__).resolve().parents[1]
CHAT_DATA = REPO.parent / "shared" / "data" / "chat"
TINY = ["--depth", "1", "--set", "vocab_size=1024", "--set", "sequence_len=64", "--set", "head_dim=32",
        "--set", "device_batch_size=4", "--set", "total_batch_size=256", "--set", "eval_tokens=1024"]


def run(cmd, timeout=300, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.fixture(scope="module")
def runs(tiny_tokenizer, shared_data, tmp_path_factory):
    """(base run without a chat run, a chat run made from it by SFT, a copy of the base with the chat run inside)."""
    if not (CHAT_DATA / "gsm8k" / "train.jsonl").is_file():
        pytest.skip(f"shared chat data not found at {CHAT_DATA}")
    root = tmp_path_factory.mktemp("chat_cli")
    tiny_tokenizer.save(root / "tokenizer")
    base, chat = root / "base", root / "sft"
    proc = run([sys.executable, "-m", "model.train", *TINY, "--data", str(shared_data), "--tokenizer",
                str(root / "tokenizer"), "--out", str(base), "--num-iterations", "5"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    # A small slice of the chat data is enough here (test_sft covers the whole mixture) and renders in no time.
    data = root / "chat_data"
    data.mkdir()
    lines = (CHAT_DATA / "identity_conversations.jsonl").read_text().splitlines()[:100]
    (data / "identity_conversations.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(CHAT_DATA / "chatterbot_english.jsonl.gz", data)
    proc = run([sys.executable, "-m", "model.sft", "--from", str(base), "--out", str(chat), "--chat-data",
                str(data), "--num-iterations", "3", "--eval-examples", "0", "--val-conversations", "8",
                "--no-smoltalk"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with_chat = root / "with_chat"
    shutil.copytree(base, with_chat)
    (with_chat / "chat").symlink_to(chat)
    return base, chat, with_chat


def chat_cli(*args, **kw):
    return run([sys.executable, "-m", "harness.chat", *args], **kw)


@pytest.mark.slow
def test_one_shot_against_a_chat_run(runs):
    _, chat, with_chat = runs
    for run_dir, loaded in ((chat, chat), (with_chat, with_chat / "chat")):
        proc = chat_cli("--run", str(run_dir), "-p", "What is 12*7?", "--max-tokens", "12")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip()
        assert f"loaded {loaded} (step 3, chat)" in proc.stderr


@pytest.mark.slow
def test_one_shot_against_a_base_run_completes_text(runs):
    base, _, _ = runs
    proc = chat_cli("--run", str(base), "-p", "Once upon a time", "--max-tokens", "8", "--show-prompt")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() and "(step 5, base" in proc.stderr
    assert "[prompt] <|bos|>Once upon a time\n" in proc.stderr  # a plain text prefix, no chat format


@pytest.mark.slow
def test_repl_through_stdin_keeps_the_history(runs):
    _, chat, _ = runs
    proc = chat_cli("--run", str(chat), "--max-tokens", "6", "--show-prompt",
                    input="What is the capital of France?\nAnd of Italy?\n/quit\nnever read\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    prompts = [line for line in proc.stderr.splitlines() if line.startswith("[prompt] ")]
    assert len(prompts) == 2  # /quit stopped the loop before the last line
    assert prompts[1].startswith(prompts[0][len("[prompt] "):].join(["[prompt] ", ""]))  # turn 2 extends turn 1
    assert "<|user_start|>What is the capital of France?<|user_end|><|assistant_start|>" in prompts[1]
    assert prompts[1].endswith("<|assistant_end|><|user_start|>And of Italy?<|user_end|><|assistant_start|>")
    assert proc.stdout.count("> ") == 3


def session_for(run_dir) -> ChatSession:
    args = argparse.Namespace(run=str(run_dir), temperature=0.0, top_k=0, max_tokens=5, seed=0, device="cpu",
                              show_prompt=False)
    return load_session(args)


@pytest.mark.slow
def test_repl_reset_clears_the_history_and_eof_exits(runs):
    _, chat, _ = runs
    session = session_for(chat)
    out = io.StringIO()
    repl(session, io.StringIO("first question\nsecond question\n"), out)  # ends at EOF
    tok = session.tokenizer
    assert "first question" in tok.decode(session.last_prompt)
    assert len(session.history) == 4 and session.history[1]["role"] == "assistant"
    # What the model said in turn 1 is what the prompt of turn 2 contains.
    reply_ids, _ = tok.render_conversation(session.history[:2])
    assert session.last_prompt[:len(reply_ids)] == reply_ids
    repl(session, io.StringIO("/reset\nthird question\n/quit\n"), out)
    assert "(conversation cleared)" in out.getvalue()
    assert "first question" not in tok.decode(session.last_prompt) and len(session.history) == 2


@pytest.mark.slow
def test_old_turns_are_dropped_when_the_context_is_full(runs):
    _, chat, _ = runs
    session = session_for(chat)
    limit = session.model.rotary_len  # 640 positions for sequence_len 64
    session.notes = io.StringIO()
    session.history = [m for i in range(6) for m in ({"role": "user", "content": f"question {i} " + "word " * 20},
                                                      {"role": "assistant", "content": f"answer {i}"})]
    session.max_tokens = limit - 100  # room for about two of those exchanges
    session.respond("latest question", io.StringIO())
    text = session.tokenizer.decode(session.last_prompt)
    assert len(session.last_prompt) + session.max_tokens <= limit
    assert text.startswith("<|bos|><|user_start|>question ") and "question 0" not in text
    assert "answer 5" in text and text.endswith("latest question<|user_end|><|assistant_start|>")
    assert "oldest turn was dropped" in session.notes.getvalue()


@pytest.mark.slow
def test_base_mode_keeps_no_history(runs):
    base, _, _ = runs
    session = session_for(base)
    assert session.chat is False
    repl(session, io.StringIO("alpha beta\ngamma\n"), io.StringIO())
    assert session.tokenizer.decode(session.last_prompt) == "<|bos|>gamma" and session.history == []


@pytest.mark.slow
def test_bad_run_dir_is_one_line_exit_2(runs, tmp_path, capsys):
    proc = chat_cli("--run", str(tmp_path / "missing"), "-p", "hi")  # once for real: exit code and streams
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --run ") and proc.stderr.count("\n") == 1, proc.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    cases = [([str(tmp_path)], "no config.json"), ([str(tmp_path / "broken")], "malformed"),
             ([str(runs[1]), "--temperature", "-1"], "--temperature -1"),
             ([str(runs[1]), "--max-tokens", "0"], "--max-tokens 0")]
    for argv, expected in cases:
        assert main(["--run", *argv, "-p", "hi"]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert captured.out == "" and err.startswith("error: ") and expected in err and "\n" not in err, err


# --- how a reply's tokens are shown ---------------------------------------------------------------------------

def test_reply_stream_shows_calls_and_rebuilds_the_parts(tiny_tokenizer):
    tok = tiny_tokenizer
    sid = tok.special_id
    stream = ReplyStream(tok)
    tokens = [(t, 1) for t in tok.encode("So ")]
    tokens += [(sid("<|python_start|>"), 1), *[(t, 1) for t in tok.encode("12*7")], (sid("<|python_end|>"), 1)]
    tokens += [(sid("<|output_start|>"), 0), *[(t, 0) for t in tok.encode("84")], (sid("<|output_end|>"), 0)]
    tokens += [(t, 1) for t in tok.encode(" it is.")]
    tokens += [(sid("<|python_start|>"), 1), *[(t, 1) for t in tok.encode("os.system")], (sid("<|python_end|>"), 1)]
    tokens += [(t, 1) for t in tok.encode(" Done")]
    shown = "".join(stream.feed(t, m) for t, m in tokens) + stream.finish()
    assert shown == stream.text == "So [calc 12*7 = 84] it is.[calc os.system = refused] Done"
    assert stream.parts == [
        {"type": "text", "text": "So "}, {"type": "python", "text": "12*7"}, {"type": "python_output", "text": "84"},
        {"type": "text", "text": " it is."}, {"type": "python", "text": "os.system"}, {"type": "text", "text": " Done"}]
    # Re-rendering the parts gives back exactly the tokens the model produced (plus the turn markers).
    ids, _ = tok.render_conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": stream.parts}])
    assert [t for t, _ in tokens] == ids[ids.index(sid("<|assistant_start|>")) + 1:-1]


def test_reply_stream_never_shows_half_a_character(tiny_tokenizer):
    text = "naïve 日本語 ok"
    ids = tiny_tokenizer.encode(text)
    assert len(ids) > len(text.split())  # multi-byte characters span several byte-level tokens here
    stream = ReplyStream(tiny_tokenizer)
    deltas = [stream.feed(t, 1) for t in ids] + [stream.finish()]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
