"""Chat page: talk to the best checkpoint of a track, or to any recorded run with a checkpoint on this machine.

"Best" is the ranking `python -m harness.chat --best` uses (`leaderboard.views.best_runs`: the best seed of the
fastest record entry, else of other entries, else the best search result), and the first of those runs whose run dir
has a checkpoint here is loaded: run dirs live on the machine that made them. A run with a chat model (config.json
"chat": true, or RUN/chat made by model.sft) is talked to in the chat format, the whole conversation in every prompt;
a base model has no chat format, so each message is a text prefix it continues, with no history. Replies stream
token by token; the calculator tool's calls are shown as badges. A chat model made by model.sft shows its fine-tuning
evaluation (chat_eval.json: ARC, MMLU, GSM8K accuracies and ChatCORE). The model is loaded once per run dir and checkpoint
(cached by path and modification time); the conversation lives in the session and Reset clears it.

Leaderboard pages import nothing of ours outside `leaderboard`; this one is the exception, for `model.engine` and
`model.checkpoint` (and the torch-free `model.run_dir`) only. The database is only read.
A page script that leaderboard/app.py runs (st.Page), not a module to import.
"""

import json
from pathlib import Path

import streamlit as st
import torch

from leaderboard import dashboard_db as db
from leaderboard import dashboard_format as fmt
from leaderboard import views
from model.checkpoint import latest_checkpoint, load_model
from model.engine import Engine, ReplyStream
from model.run_dir import CONFIG, is_chat

HISTORY_KEY = "chat_history"   # [{"role": "user", "content": str} | {"role": "assistant", "content": [parts]}]
MODEL_KEY = "chat_model"       # the checkpoint the history was made with: another model starts a new conversation
BEST, ANY = "best of a track", "any run"


def chat_target(run_dir: str | None) -> tuple[Path, bool] | None:
    """(the dir to load, whether it is a chat model) for a run dir, or None when it has no checkpoint here. As the
    chat CLI: the run itself when it is a chat run, else its chat run RUN/chat, else its base model."""
    if not run_dir or not (Path(run_dir) / CONFIG).is_file():
        return None
    base = Path(run_dir)
    if not is_chat(base) and is_chat(base / "chat") and latest_checkpoint(base / "chat") is not None:
        return base / "chat", True
    return (base, is_chat(base)) if latest_checkpoint(base) is not None else None


def read_chat_eval(path: Path) -> dict | None:
    """model.sft's chat_eval.json in a chat run dir, or None when it has none (or it cannot be read)."""
    try:
        details = json.loads((path / "chat_eval.json").read_text())
    except (OSError, ValueError):
        return None
    return details if isinstance(details, dict) else None


@st.cache_data(ttl=db.CACHE_TTL_S, show_spinner=False)
def best_runs(url: str, track: str | None) -> list[dict]:
    store = db.open_store(url)
    return views.best_runs(store, track) if store else []


@st.cache_resource(max_entries=2, show_spinner="Loading the model...")
def load(path: str, checkpoint_mtime: float):
    """The model, tokenizer and meta of a run dir; `checkpoint_mtime` is part of the key, so a newer checkpoint (a
    resumed or continued run) is loaded afresh."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(path, device)


def show_reply(parts: list[dict]) -> None:
    """An assistant message: text as markdown, each calculator call as a badge with its result."""
    if not any(p.get("text") for p in parts):
        st.caption("(empty reply)")
    for i, part in enumerate(parts):
        if part["type"] == "text" and part["text"].strip():
            st.markdown(fmt.markdown_literal(part["text"]))
        elif part["type"] == "python":
            following = parts[i + 1] if i + 1 < len(parts) else None
            if following and following["type"] == "python_output":
                st.badge(fmt.markdown_literal(f"calculator: {part['text']} = {following['text']}"),
                         icon=":material/calculate:", color="violet")
            else:
                st.badge(fmt.markdown_literal(f"calculator: {part['text']} (refused)"), icon=":material/calculate:",
                         color="gray")


def prompt_ids(tokenizer, model, history: list[dict], text: str, chat: bool, max_tokens: int) -> tuple[list[int], int]:
    """(prompt tokens, max new tokens). The oldest exchanges go first when the conversation outgrows the model's
    context; a single message longer than that keeps its end."""
    limit = getattr(model, "rotary_len", None)
    if not chat:
        ids = tokenizer.encode(text, prepend=tokenizer.bos_id)
    else:
        messages = [*history, {"role": "user", "content": text}]
        ids = tokenizer.render_for_completion(messages)
        while limit is not None and len(ids) + max_tokens > limit and len(messages) > 1:
            messages = messages[2:]
            ids = tokenizer.render_for_completion(messages)
    if limit is not None and len(ids) + max_tokens > limit:
        ids = ids[-max(1, limit // 2):]
        max_tokens = limit - len(ids)
    return ids, max_tokens


def stream_reply(engine: Engine, stream: ReplyStream, ids: list[int], **sampling):
    """Yield the reply's text as it is generated, escaped for st.write_stream's Markdown; `stream` collects its
    parts."""
    for column, masks in engine.generate(ids, **sampling):
        token, mask = column[0], masks[0]
        if token is None or (mask == 1 and token in engine.default_stops):
            break
        if delta := stream.feed(token, mask):
            yield fmt.markdown_literal(delta)
    if tail := stream.finish():
        yield fmt.markdown_literal(tail)


url = db.current_url()
st.title("Chat")

mode = st.segmented_control("Model", [BEST, ANY], default=BEST) or BEST
chosen, why = None, ""
if mode == BEST:
    tracks = [t["name"] for t in db.tracks(url)]
    track = st.selectbox("Track", [None, *tracks], format_func=lambda t: "all tracks" if t is None else t,
                         help="the best run of this track's leaderboard; without entries, the best search result")
    candidates = best_runs(url, track)
    for skipped, row in enumerate(candidates):
        if chat_target(row["run_dir"]) is not None:
            chosen = row
            why = row["why"] + (f" ({skipped} better-ranked runs have no checkpoint on this machine)" if skipped else "")
            break
else:
    names = db.experiment_names(url)
    runs = [r for r in reversed(db.runs(url)) if chat_target(r["run_dir"]) is not None]  # newest first
    if runs:
        labels = {fmt.run_label(r, names): r for r in runs}  # unique: a label starts with the run's id
        picked = st.selectbox("Run", list(labels), help="recorded runs whose run dir has a checkpoint on this machine")
        chosen, why = labels[picked], picked

if chosen is None:
    db.empty_state(url, "No run with a checkpoint on this machine yet. Train one (`python -m harness.speedrun`, "
                        "`python -m harness.search`, or `python -m model.train`), then chat with it here.")
    st.stop()

path, chat = chat_target(chosen["run_dir"])
checkpoint = latest_checkpoint(path)
try:
    model, tokenizer, meta = load(str(path), checkpoint.stat().st_mtime)
except Exception as e:  # noqa: BLE001 - any unloadable run dir (half-written, other code version) is one line
    st.error(f"Cannot load `{path}`: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    st.stop()
kind = "chat model" if chat else "base model: each message is continued as plain text, with no history"
st.caption(f"{why}  \nloaded `{path}` (step {meta.get('step')}, {kind})")
if chat and (details := read_chat_eval(path)) is not None:
    with st.expander(f"Fine-tuning evaluation: ChatCORE {fmt.number(details.get('chatcore'))}"):
        st.caption("model.sft's evaluation of this chat model after fine-tuning: accuracy on held-out ARC, MMLU "
                   "(multiple choice: chance 0.25) and GSM8K (calculator allowed: chance 0); ChatCORE is the mean "
                   "accuracy above chance, scaled so that 0 is chance and 1 is perfect (nanochat's definition).")
        st.dataframe(fmt.chat_eval_table(details), hide_index=True,
                     column_config={"accuracy": st.column_config.NumberColumn(format="%.3f")})

cols = st.columns([3, 2, 2, 1], vertical_alignment="bottom")
temperature = cols[0].slider("Temperature", 0.0, 2.0, 0.6, step=0.05, help="0 = greedy")
top_k = cols[1].number_input("Top-k", min_value=0, max_value=int(model.config.vocab_size), value=50, step=1,
                             help="sample among the k most likely tokens (0 = all)")
max_tokens = cols[2].number_input("Max tokens", min_value=1, max_value=2048, value=256, step=16,
                                  help="most tokens per reply")
if cols[3].button("Reset", icon=":material/restart_alt:", help="clear the conversation"):
    st.session_state[HISTORY_KEY] = []

model_key = f"{path}@{checkpoint}"
if st.session_state.get(MODEL_KEY) != model_key:
    st.session_state[MODEL_KEY] = model_key
    st.session_state[HISTORY_KEY] = []
history = st.session_state.setdefault(HISTORY_KEY, [])

for message in history:
    with st.chat_message(message["role"]):
        if message["role"] == "user":
            st.markdown(fmt.markdown_literal(message["content"]))
        else:
            show_reply(message["content"])

if text := st.chat_input("Your message" if chat else "Text for the base model to continue"):
    with st.chat_message("user"):
        st.markdown(fmt.markdown_literal(text))
    ids, budget = prompt_ids(tokenizer, model, history if chat else [], text, chat, int(max_tokens))
    with st.chat_message("assistant"):
        stream = ReplyStream(tokenizer)
        live = st.empty()
        with live.container():
            st.write_stream(stream_reply(Engine(model, tokenizer), stream, ids, max_tokens=budget,
                                         temperature=float(temperature), top_k=int(top_k) or None, seed=len(history)))
        with live.container():  # the finished reply as the history shows it: calculator calls as badges
            show_reply(stream.parts)
    history += [{"role": "user", "content": text},
                {"role": "assistant", "content": stream.parts or [{"type": "text", "text": ""}]}]
