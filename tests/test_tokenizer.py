"""Tokenizer: round trips, special tokens, token bytes, persistence, the cache, chat rendering, the CLI."""

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import model.tokenizer as tokmod
from model.sources import resolve_source
from model.tokenizer import SPECIAL_TOKENS, Tokenizer, cached_tokenizer_dir, get_tokenizer

TEXTS = [
    "Hello, world! It's a test.",
    "Café naïve résumé, Ångström, Straße",
    "日本語のテキストと中文字符",
    "emoji 🚀🎉 and 👩‍👩‍👧 family",
    "tabs\tand\nnewlines\r\n  double  spaces   ",
    "numbers 1234567 and 3.14159",
]


def test_round_trip_including_non_ascii(tiny_tokenizer):
    for text in TEXTS:
        assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


def test_special_tokens_only_from_ids(tiny_tokenizer):
    specials = {tiny_tokenizer.special_id(t) for t in SPECIAL_TOKENS}
    assert len(specials) == len(SPECIAL_TOKENS)
    text = "a document quoting <|bos|> and <|assistant_end|> literally"
    ids = tiny_tokenizer.encode(text)
    assert not specials & set(ids)
    assert tiny_tokenizer.decode(ids) == text
    bos, end = tiny_tokenizer.bos_id, tiny_tokenizer.special_id("<|assistant_end|>")
    ids = tiny_tokenizer.encode("hi", prepend=bos, append="<|assistant_end|>")
    assert ids[0] == bos and ids[-1] == end and not specials & set(ids[1:-1])
    assert tiny_tokenizer.decode(ids) == "<|bos|>hi<|assistant_end|>"


def test_unknown_special_token_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"unknown special token '<\|eos\|>'"):
        tiny_tokenizer.special_id("<|eos|>")


def test_vocab_size_includes_specials(tiny_tokenizer):
    assert tiny_tokenizer.vocab_size == 1024
    assert max(tiny_tokenizer.special_id(t) for t in SPECIAL_TOKENS) < 1024


def test_numbers_split_in_groups_of_at_most_two_digits(tiny_tokenizer):
    ids = tiny_tokenizer.encode("31415926535 and 2718281828")
    for i in ids:
        piece = tiny_tokenizer.decode([i])
        assert sum(c.isdigit() for c in piece) <= 2, piece


def test_encode_batch_matches_encode(tiny_tokenizer):
    batch = tiny_tokenizer.encode_batch(TEXTS, prepend=tiny_tokenizer.bos_id)
    assert batch == [tiny_tokenizer.encode(t, prepend=tiny_tokenizer.bos_id) for t in TEXTS]
    assert tiny_tokenizer.encode_batch(TEXTS) == [tiny_tokenizer.encode(t) for t in TEXTS]


def test_token_bytes_sum_to_utf8_length(tiny_tokenizer):
    token_bytes = tiny_tokenizer.token_bytes()
    assert token_bytes.dtype == torch.int32 and token_bytes.shape == (tiny_tokenizer.vocab_size,)
    for t in SPECIAL_TOKENS:
        assert token_bytes[tiny_tokenizer.special_id(t)] == 0
    for text in TEXTS:
        ids = torch.tensor(tiny_tokenizer.encode(text))
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_save_load_round_trip(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.vocab_size == tiny_tokenizer.vocab_size
    assert [loaded.encode(t) for t in TEXTS] == [tiny_tokenizer.encode(t) for t in TEXTS]
    assert torch.equal(loaded.token_bytes(), tiny_tokenizer.token_bytes())
    assert all(loaded.special_id(t) == tiny_tokenizer.special_id(t) for t in SPECIAL_TOKENS)
    assert not set(loaded.encode("<|bos|>")) & {loaded.bos_id}  # plain-text encoding survives a reload
    assert json.loads((tmp_path / "tok" / "meta.json").read_text())["vocab_size"] == 1024


def test_load_errors_name_the_path(tiny_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.load(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken tokenizer at .*broken"):
        Tokenizer.load(broken)
    tiny_tokenizer.save(tmp_path / "short")
    torch.save(torch.zeros(3, dtype=torch.int32), tmp_path / "short" / "token_bytes.pt")
    with pytest.raises(ValueError, match="does not match"):
        Tokenizer.load(tmp_path / "short")


def test_cache_is_reused_not_retrained(tiny_tokenizer, shared_data, monkeypatch):
    directory = cached_tokenizer_dir(resolve_source(str(shared_data)), 1024, 2_500_000)
    mtime = (directory / "tokenizer.json").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("get_tokenizer retrained a cached tokenizer")

    monkeypatch.setattr(tokmod, "train_tokenizer", no_training)
    again = get_tokenizer(str(shared_data), vocab_size=1024, max_chars=2_500_000, progress=False)
    assert [again.encode(t) for t in TEXTS] == [tiny_tokenizer.encode(t) for t in TEXTS]
    assert (directory / "tokenizer.json").stat().st_mtime_ns == mtime
    # A different budget is a different tokenizer: it must not be served from this cache entry.
    with pytest.raises(AssertionError, match="retrained"):
        get_tokenizer(str(shared_data), vocab_size=1024, max_chars=2_400_000, progress=False)


def _write_jsonl_source(directory, train_docs, val_docs):
    directory.mkdir()
    (directory / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in train_docs))
    (directory / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in val_docs))
    return directory


def test_concurrent_callers_train_once(tmp_path, monkeypatch):
    words = ["alpha beta gamma delta epsilon zeta eta theta"] * 200
    source_dir = _write_jsonl_source(tmp_path / "src", words, ["val text"] * 10)
    calls, real = [], tokmod.train_tokenizer

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokmod, "train_tokenizer", counting)
    results = [None, None]

    def worker(i):
        results[i] = get_tokenizer(str(source_dir), vocab_size=300, max_chars=100_000, progress=False)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results[0].encode("alpha beta") == results[1].encode("alpha beta")
    directory = cached_tokenizer_dir(resolve_source(str(source_dir)), 300, 100_000)
    leftovers = [p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}.")
                 and not p.name.endswith(".lock")]
    assert leftovers == []


def test_trains_on_the_train_split_only(tmp_path):
    train = ["the quick brown fox jumps over the lazy dog " * 20] * 50
    val = ["zyzzyvaquux " * 200] * 50  # a word frequent enough to become a token if val were read
    source_dir = _write_jsonl_source(tmp_path / "src", train, val)
    tok = get_tokenizer(str(source_dir), vocab_size=400, max_chars=1_000_000, progress=False)
    vocab = {tok.id_to_token(i) for i in range(tok.vocab_size)}
    assert "Ġquick" in vocab  # frequent train words are merged...
    assert not any("zyzz" in token for token in vocab)  # ...the val-only word never is


def test_too_small_vocab_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        tokmod.train_tokenizer(["abc"], 100)


# -- chat rendering ------------------------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me compute."},
        {"type": "python", "text": "2+2"},
        {"type": "python_output", "text": "4"},
        {"type": "text", "text": "It is 4."},
    ]},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]


def test_render_conversation_masks(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, mask = tok.render_conversation(CONVERSATION)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    assert ids[0] == tok.bos_id and mask[0] == 0
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == ("Let me compute.<|python_start|>2+2<|python_end|>It is 4.<|assistant_end|>"
                       "You're welcome.<|assistant_end|>")
    not_trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert not_trained == ("<|bos|><|user_start|>Be brief.\n\nWhat is 2+2?<|user_end|><|assistant_start|>"
                           "<|output_start|>4<|output_end|><|user_start|>Thanks!<|user_end|><|assistant_start|>")
    assert tok.decode(ids).startswith("<|bos|><|user_start|>Be brief.\n\nWhat is 2+2?<|user_end|>")


def test_render_conversation_truncates(tiny_tokenizer):
    ids, mask = tiny_tokenizer.render_conversation(CONVERSATION)
    short_ids, short_mask = tiny_tokenizer.render_conversation(CONVERSATION, max_tokens=10)
    assert short_ids == ids[:10] and short_mask == mask[:10]


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ([{"role": "assistant", "content": "hi"}], "expected 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1 has role 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "role 'tool'"),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "system message"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
     "unknown assistant part type 'image'"),
    ([{"role": "user", "content": ["not", "a", "string"]}], "user content must be a string"),
    ([{"content": "no role"}], "must be a dict with 'role'"),
])
def test_bad_conversations_are_rejected(tiny_tokenizer, messages, message):
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.render_conversation(messages)


def test_render_for_completion(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = tok.render_for_completion(CONVERSATION[:4])
    assert prompt[-1] == tok.special_id("<|assistant_start|>")
    assert prompt[:-1] == tok.render_conversation(CONVERSATION[:4])[0]
    # A finished conversation: its last answer is dropped, giving the prompt that should regenerate it.
    assert tok.render_for_completion(CONVERSATION) == prompt


# -- CLI -----------------------------------------------------------------------------------------------------------


def test_cli_train_reuses_cache_and_eval_reports_compression(tiny_tokenizer, shared_data, tmp_path, capsys):
    args = ["--data", str(shared_data), "--vocab-size", "1024", "--max-chars", "2500000"]
    assert tokmod.main(["train", *args, "--out", str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert "reused the cached" in out
    assert Tokenizer.load(tmp_path / "copy").encode("hello there") == tiny_tokenizer.encode("hello there")
    assert tokmod.main(["eval", "--data", str(shared_data), "--tokenizer", str(tmp_path / "copy"),
                        "--eval-chars", "200000"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("chars/token")][0]
    chars_per_token = float(line.split()[1])
    assert 1.5 < chars_per_token < 6  # a trained BPE compresses English prose well beyond 1 char/token


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert tokmod.main(["train", "--data", str(tmp_path / "missing"), "--vocab-size", "512"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown data source") and "\n" not in err
    assert tokmod.main(["eval", "--data", str(tmp_path), "--tokenizer", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_tokenizer_trains_from_a_parquet_file_spec(tmp_path):
    docs = [f"document number {i} talks about apples and oranges" for i in range(3000)]
    pq.write_table(pa.table({"text": docs}), tmp_path / "one.parquet", row_group_size=1000)
    tok = get_tokenizer(str(tmp_path / "one.parquet"), vocab_size=320, max_chars=50_000, progress=False)
    assert tok.decode(tok.encode("apples and oranges")) == "apples and oranges"
