"""The dashboard's Chat page under Streamlit's AppTest, on a tiny real run dir: the best run of a track is found and
loaded, a message gets the reply the chat CLI gives (same prompt, same sampling), a chat model keeps the conversation
and Reset clears it, calculator calls show as badges, and no checkpoint means a friendly empty state."""

import io
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from harness.chat import ChatSession
from leaderboard import Entry, Experiment, Run, Store, Track
from model.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "leaderboard" / "app.py"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
TINY = ["--depth", "1", "--set", "vocab_size=1024", "--set", "sequence_len=64", "--set", "head_dim=32",
        "--set", "device_batch_size=4", "--set", "total_batch_size=256", "--set", "eval_tokens=1024"]


# A chat_eval.json in model.sft's format: {"tasks": {task: {accuracy, correct, n}}, "chatcore", "examples_per_task"}.
CHAT_EVAL = {"tasks": {"ARC-Easy": {"accuracy": 0.4, "correct": 4, "n": 10},
                       "ARC-Challenge": {"accuracy": 0.3, "correct": 3, "n": 10},
                       "MMLU": {"accuracy": 0.2, "correct": 2, "n": 10}, "GSM8K": {"accuracy": 0.1, "correct": 1, "n": 10}},
             "chatcore": 0.0583, "examples_per_task": 10}


@pytest.fixture(scope="module")
def site(tiny_tokenizer, shared_data, tmp_path_factory):
    """A base run (the track's record) and a copy of it marked as a chat model (an ordinary run), in a database."""
    root = tmp_path_factory.mktemp("dashboard_chat")
    tiny_tokenizer.save(root / "tokenizer")
    base, chatty = root / "base", root / "chatty"
    proc = subprocess.run([sys.executable, "-m", "model.train", *TINY, "--data", str(shared_data), "--tokenizer",
                           str(root / "tokenizer"), "--out", str(base), "--num-iterations", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(base, chatty)
    config = json.loads((chatty / "config.json").read_text())
    (chatty / "config.json").write_text(json.dumps({**config, "chat": True}))  # same weights, chat format
    (chatty / "chat_eval.json").write_text(json.dumps(CHAT_EVAL))  # as model.sft writes it (tests/test_sft.py)
    url = f"sqlite:///{root / 'lb.db'}"
    with Store(url) as store:
        store.record_experiment(Experiment(id="e1", name="tiny recipe", proposer="manual"))
        store.record_track(Track(name="tiny", metric="val_bpb", target=5.0, depth=1))
        record = store.record_run(Run(experiment_id="e1", rung="track:tiny", seed=0, status="ok", depth=1, val_bpb=4.4,
                                      run_dir=str(base), finished_at=T0)).run_id
        store.record_entry(Entry(track="tiny", recipe="tiny recipe", experiment_id="e1", seeds=1, is_record=True,
                                 time_to_target_mean=1.0, run_ids=[record], created_at=T0))
        store.record_run(Run(experiment_id="e1", rung="d1", seed=5, status="ok", depth=1, val_bpb=4.5,
                             run_dir=str(chatty), finished_at=T0))
    return {"url": url, "base": base, "chatty": chatty}


def chat_page(monkeypatch, url: str) -> AppTest:
    monkeypatch.setenv("NANORESEARCH_DB", url)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("dashboard_chat.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def greedy(at: AppTest, max_tokens: int) -> None:
    next(s for s in at.slider if s.label == "Temperature").set_value(0.0)
    next(n for n in at.number_input if n.label == "Max tokens").set_value(max_tokens)


def send(at: AppTest, text: str) -> None:
    at.chat_input[0].set_value(text).run()
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.slow
def test_best_run_of_a_track_is_loaded_and_a_message_gets_a_streamed_reply(monkeypatch, site):
    at = chat_page(monkeypatch, site["url"])
    caption = " ".join(c.value for c in at.caption)
    assert "record #1 (tiny recipe) on track tiny" in caption and f"loaded `{site['base']}` (step 3, base model" in caption
    assert not at.expander  # a base model has no fine-tuning evaluation
    assert {s.label for s in at.slider} >= {"Temperature"} and {"Top-k", "Max tokens"} <= {n.label for n in at.number_input}
    assert any(b.label == "Reset" for b in at.button) and len(at.chat_input) == 1
    greedy(at, 8)
    send(at, "Once upon a time")
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    assert at.chat_message[0].markdown[0].value == "Once upon a time"
    # The base model continues the text: the reply is the CLI's for the same prompt, sampling and budget.
    model, tokenizer, _ = load_model(site["base"])
    expected = ChatSession(model, tokenizer, False, temperature=0.0, max_tokens=8).respond("Once upon a time", io.StringIO())
    history = at.session_state["chat_history"]
    assert "".join(p["text"] for p in history[1]["content"] if p["type"] == "text") == expected
    shown = "".join(md.value for md in at.chat_message[1].markdown)
    assert expected.strip() and shown.strip() == expected.strip()


@pytest.mark.slow
def test_a_chat_model_keeps_the_conversation_and_reset_clears_it(monkeypatch, site):
    at = chat_page(monkeypatch, site["url"])
    at.segmented_control[0].set_value("any run").run()
    run = next(s for s in at.selectbox if s.label == "Run")
    at = run.select(next(o for o in run.options if "tiny recipe · d1 · seed 5" in o)).run()
    assert f"loaded `{site['chatty']}` (step 3, chat model)" in " ".join(c.value for c in at.caption)
    # Its fine-tuning evaluation, one click away.
    assert [e.label for e in at.expander] == ["Fine-tuning evaluation: ChatCORE 0.0583"]
    evaluation = at.expander[0].dataframe[0].value
    assert evaluation.to_dict("records") == [{"task": k, **{c: v[c] for c in ("correct", "n", "accuracy")}}
                                             for k, v in CHAT_EVAL["tasks"].items()]
    greedy(at, 6)
    send(at, "What is the capital of France?")
    send(at, "And of Italy?")
    assert [m.name for m in at.chat_message] == ["user", "assistant"] * 2
    model, tokenizer, _ = load_model(site["chatty"])
    session = ChatSession(model, tokenizer, True, temperature=0.0, max_tokens=6)
    for text in ("What is the capital of France?", "And of Italy?"):
        session.respond(text, io.StringIO())
    # Turn 2 was generated from the whole conversation, exactly as the CLI renders it.
    assert at.session_state["chat_history"] == session.history
    next(b for b in at.button if b.label == "Reset").click().run()
    assert len(at.chat_message) == 0 and at.session_state["chat_history"] == []


@pytest.mark.slow
def test_calculator_calls_show_as_badges(monkeypatch, site):
    at = chat_page(monkeypatch, site["url"])
    at.session_state["chat_history"] = [
        {"role": "user", "content": "What is 12*7? And os.system?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute."}, {"type": "python", "text": "12*7"},
            {"type": "python_output", "text": "84"}, {"type": "text", "text": "It is 84."},
            {"type": "python", "text": "os.system('ls')"}]}]
    at.run()
    texts = [md.value for md in at.chat_message[1].markdown]
    assert "Let me compute\\." in texts and "It is 84\\." in texts  # Markdown-escaped: shown exactly as generated
    # st.badge is Markdown too: the expression is escaped, or 3*4*5 would show as 3<em>4</em>5.
    assert any("badge[" in t and r"calculator\: 12\*7 = 84" in t for t in texts), texts
    assert any("badge[" in t and r"calculator\: os\.system\('ls'\) \(refused\)" in t for t in texts), texts


def test_no_checkpoint_here_is_a_friendly_empty_state(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    with Store(url) as store:  # a run recorded on another machine: its run dir does not exist here
        store.record_run(Run(experiment_id="e1", rung="d1", seed=0, status="ok", val_bpb=4.0, search_id=None,
                             run_dir=str(tmp_path / "elsewhere"), finished_at=T0),
                         experiment=Experiment(id="e1", name="remote", proposer="manual"))
    at = chat_page(monkeypatch, url)
    assert any("No run with a checkpoint on this machine yet" in i.value for i in at.info)
    assert len(at.chat_input) == 0
    missing = chat_page(monkeypatch, f"sqlite:///{tmp_path / 'missing.db'}")
    assert any("No database at" in i.value for i in missing.info)
