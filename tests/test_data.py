"""Data sources, the pinned validation split, best-fit packing, exact resumption and downloading."""

import functools
import http.server
import json
import math
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import model.data as datamod
from model.download import download
from model.loader import BestFitLoader, validation_batches
from model.sources import FileSource, HFSource, resolve_source

BOS = 0


class CountingTokenizer:
    """A stand-in tokenizer whose documents are space-separated token ids, so lengths and contents are exact."""

    bos_id = BOS
    vocab_size = 100_000

    def encode_batch(self, texts):
        return [[int(x) for x in t.split()] for t in texts]


def numbered_docs(lengths, first_id=1):
    """Documents made of distinct token ids (never BOS), so every token of the data is identifiable."""
    docs, next_id = [], first_id
    for n in lengths:
        docs.append(" ".join(str(i) for i in range(next_id, next_id + n)))
        next_id += n
    return docs, next_id


def write_parquet_source(directory, files: dict[str, list[str]], row_group_size=1024):
    directory.mkdir(parents=True, exist_ok=True)
    for name, docs in files.items():
        pq.write_table(pa.table({"text": docs}), directory / name, row_group_size=row_group_size)
    return directory


def segments(row: torch.Tensor) -> list[list[int]]:
    """The BOS-delimited pieces of a packed row (without their BOS)."""
    out = []
    for t in row.tolist():
        if t == BOS:
            out.append([])
        else:
            out[-1].append(t)
    return out


def drain(loader, limit=10_000):
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == limit:
            break
    return batches


# -- sources -------------------------------------------------------------------------------------------------------


def test_last_shard_by_name_is_validation(tmp_path):
    # Written out of order on purpose: the split is by sorted name, not by creation order.
    src = write_parquet_source(tmp_path / "d", {"s2.parquet": ["c"], "s0.parquet": ["a"], "s1.parquet": ["b"]})
    source = resolve_source(str(src))
    assert isinstance(source, FileSource)
    assert [t for _, t in source.iter_texts("train")] == ["a", "b"]
    assert [t for _, t in source.iter_texts("val")] == ["c"]


def test_jsonl_gz_and_txt_sources(tmp_path):
    import gzip

    d = tmp_path / "mixed"
    d.mkdir()
    with gzip.open(d / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    (d / "b.txt").write_text("a whole\n\nfile is one document")
    (d / "notes.md").write_text("ignored")
    source = resolve_source(str(d))
    assert [t for _, t in source.iter_texts("train")] == ["first", "second"]
    assert [t for _, t in source.iter_texts("val")] == ["a whole\n\nfile is one document"]


def test_single_file_holds_out_its_last_block(tmp_path):
    docs = [f"doc {i}" for i in range(10)]
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"text": docs}), path, row_group_size=4)  # row groups of 4, 4, 2
    source = resolve_source(str(path))
    assert [t for _, t in source.iter_texts("train")] == docs[:8]
    assert [t for _, t in source.iter_texts("val")] == docs[8:]
    pq.write_table(pa.table({"text": docs}), tmp_path / "tiny.parquet")
    with pytest.raises(ValueError, match="single file with a single block"):
        resolve_source(str(tmp_path / "tiny.parquet")).shards("train")
    (tmp_path / "one.txt").write_text("just one document")
    with pytest.raises(ValueError, match="need at least 2 files"):
        resolve_source(str(tmp_path / "one.txt")).shards("val")


def test_bad_specs_give_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown data source '.*nope'.*hf:owner/name") as e:
        resolve_source(str(tmp_path / "nope"))
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"data directory .*empty has no"):
        resolve_source(str(empty))
    with pytest.raises(ValueError, match="bad Hugging Face spec"):
        resolve_source("hf:")
    bad = write_parquet_source(tmp_path / "bad", {"a.parquet": ["x"], "b.parquet": ["y"]})
    pq.write_table(pa.table({"body": ["x"]}), bad / "a.parquet")
    with pytest.raises(ValueError, match=r"a.parquet has no 'text' column \(columns: body\)"):
        list(resolve_source(str(bad)).iter_texts("train"))
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    (tmp_path / "j" / "b.jsonl").write_text('{"text": "val"}\n')
    with pytest.raises(ValueError, match=r"a.jsonl:2: expected a JSON object with a 'text' field"):
        list(resolve_source(str(tmp_path / "j")).iter_texts("train"))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        list(resolve_source(str(tmp_path / "j")).iter_texts("test"))


def test_default_source_and_missing_downloads(tmp_path, monkeypatch):
    monkeypatch.delenv("NANORESEARCH_DATA", raising=False)
    hint = r"python -m model.data download --source fineweb-edu"
    with pytest.raises(ValueError, match=rf"no shards of 'fineweb-edu'.*{hint}"):
        resolve_source(None)
    monkeypatch.setenv("NANORESEARCH_DATA", str(write_parquet_source(tmp_path / "env", {"a.parquet": ["x"],
                                                                                      "b.parquet": ["y"]})))
    assert resolve_source(None).name == str(tmp_path / "env")


def test_downloaded_source_needs_its_validation_shard(tmp_path, monkeypatch):
    monkeypatch.setenv("NANORESEARCH_HOME", str(tmp_path / "home"))
    directory = tmp_path / "home" / "data" / "climbmix"
    write_parquet_source(directory, {"shard_00000.parquet": ["a"], "shard_00001.parquet": ["b"]})
    with pytest.raises(ValueError, match="validation shard shard_06542.parquet of 'climbmix' is missing"):
        resolve_source("climbmix")
    write_parquet_source(directory, {"shard_06542.parquet": ["v"]})
    source = resolve_source("climbmix")
    assert [t for _, t in source.iter_texts("val")] == ["v"]


def test_fingerprint_is_stable_and_tracks_content(tmp_path):
    src = write_parquet_source(tmp_path / "d", {"a.parquet": ["x"], "b.parquet": ["y"]})
    first = resolve_source(str(src)).fingerprint()
    assert resolve_source(str(src)).fingerprint() == first
    write_parquet_source(src, {"c.parquet": ["z"]})
    assert resolve_source(str(src)).fingerprint() != first


def test_ranks_get_disjoint_documents_covering_the_split(shared_data):
    source = resolve_source(str(shared_data))
    everything = [t for _, t in source.iter_texts("val")]
    parts = [[t for _, t in source.iter_texts("val", rank=r, world_size=3)] for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(everything)
    assert all(len(p) >= len(everything) // 3 - 3 for p in parts)  # balanced to within a document per block
    with pytest.raises(ValueError, match="rank 3 is not in"):
        next(source.iter_texts("val", rank=3, world_size=3))


def test_seeded_epochs_reshuffle_the_same_documents(tmp_path):
    docs, _ = numbered_docs([3] * 40)
    src = write_parquet_source(tmp_path / "d", {"a.parquet": docs[:20], "b.parquet": docs[20:30],
                                                "c.parquet": docs[30:]}, row_group_size=5)
    source = resolve_source(str(src))
    epoch0 = [t for _, t in source.iter_texts("train", seed=1, epoch=0)]
    epoch1 = [t for _, t in source.iter_texts("train", seed=1, epoch=1)]
    assert sorted(epoch0) == sorted(epoch1) == sorted(docs[:30])
    assert epoch0 != epoch1
    assert [t for _, t in source.iter_texts("train", seed=1, epoch=0)] == epoch0


def test_hf_source_streams_shards_with_the_last_one_as_validation(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    src = write_parquet_source(tmp_path / "d", {"a.parquet": [f"a{i}" for i in range(1500)],
                                                "b.parquet": [f"b{i}" for i in range(7)]})
    calls, real_load = [], datasets.load_dataset

    def local_stream(name, config, split, streaming):  # stands in for the hub: same IterableDataset type
        calls.append((name, config, split, streaming))
        return real_load("parquet", data_files={"train": sorted(map(str, src.iterdir()))},
                                     split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", local_stream)
    source = resolve_source("hf:someone/corpus:en")
    assert isinstance(source, HFSource) and source.name == "hf:someone/corpus:en"
    train = [t for _, t in source.iter_texts("train")]
    assert train == [f"a{i}" for i in range(1500)]  # two blocks of the first shard
    assert [t for _, t in source.iter_texts("val")] == [f"b{i}" for i in range(7)]
    assert source.block_docs("train", 0, 1)[0] == "a1024"  # random access to a block re-streams as needed
    assert calls[0] == ("someone/corpus", "en", "train", True)


# -- packing -------------------------------------------------------------------------------------------------------


def test_largest_fitting_document_first_then_crop_the_shortest(tmp_path):
    # Documents of 6, 4, 3 and 2 tokens: pieces (BOS + tokens) of 7, 5, 4 and 3, in rows of T+1 = 9 tokens.
    docs, _ = numbered_docs([6, 4, 3, 2])
    src = write_parquet_source(tmp_path / "d", {"a.parquet": ["1"], "b.parquet": docs})
    loader = BestFitLoader(CountingTokenizer(), resolve_source(str(src)), "val", 1, 8, buffer_docs=100)
    rows = [torch.cat([x[0], y[0, -1:]]) for x, y in drain(loader)]
    d6, d4, d3, d2 = ([int(t) for t in d.split()] for d in docs)
    # Row 1: the 7-piece is the largest that fits 9. Two slots are left and no piece fits, so the SHORTEST piece
    # (d2's 3) is cropped to fill them exactly: BOS + d2's first token.
    assert segments(rows[0]) == [d6, d2[:1]]
    # Row 2: 9 free -> largest fit is d4's 5-piece, then d3's 4-piece fills the row exactly.
    assert segments(rows[1]) == [d4, d3]
    # The cropped tail (BOS + d2[1:]) went back to the buffer; alone it cannot fill a row, so validation ends.
    assert len(rows) == 2


def test_long_documents_are_cut_into_bos_pieces_and_no_token_is_lost_or_repeated(tmp_path):
    lengths = [1, 5, 17, 40, 3, 9, 64, 2, 30, 11] * 6
    docs, end = numbered_docs(lengths)
    src = write_parquet_source(tmp_path / "d", {"a.parquet": ["1"], "b.parquet": docs}, row_group_size=16)
    T = 16
    loader = BestFitLoader(CountingTokenizer(), resolve_source(str(src)), "val", 2, T, buffer_docs=8)
    batches = drain(loader)
    emitted = []
    for inputs, targets in batches:
        assert inputs.shape == targets.shape == (2, T) and inputs.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        rows = torch.cat([inputs, targets[:, -1:]], dim=1)
        assert (rows[:, 0] == BOS).all() and (rows >= 0).all()  # BOS-aligned, nothing left unfilled
        for row in rows:
            for seg in segments(row):
                assert len(seg) <= T
                emitted.extend(seg)
    assert len(emitted) == len(set(emitted))  # nothing duplicated
    leftover = (end - 1) - len(emitted)
    assert 0 <= leftover < 2 * (T + 1)  # everything but the final partial batch is used
    # Pieces keep document order: within a segment, ids are consecutive.
    for inputs, _ in batches:
        for row in inputs:
            for seg in segments(row):
                assert seg == list(range(seg[0], seg[0] + len(seg))) if seg else True


def _segment_texts(tok, inputs, min_chars):
    out = []
    for row in inputs:
        ids = row.tolist()
        starts = [i for i, t in enumerate(ids) if t == tok.bos_id] + [len(ids)]
        for a, b in zip(starts, starts[1:], strict=False):
            text = tok.decode(ids[a + 1:b])[2:-2]  # trim characters a crop may have split mid-UTF-8
            if len(text) >= min_chars:
                out.append(text)
    return out


def test_real_data_rows_and_no_train_val_leakage(tiny_tokenizer, shared_data):
    source = resolve_source(str(shared_data))
    val_text = "\n".join(t for _, t in source.iter_texts("val"))
    train_text = "\n".join(t for _, t in source.iter_texts("train"))
    val_batches = validation_batches(tiny_tokenizer, source, 4, 256, 4 * 256 * 2)
    train_loader = BestFitLoader(tiny_tokenizer, source, "train", 4, 256, buffer_docs=64)
    train_batches = [next(train_loader) for _ in range(2)]
    train_loader.close()
    for inputs, targets in val_batches + train_batches:
        assert (inputs[:, 0] == tiny_tokenizer.bos_id).all() and torch.equal(inputs[:, 1:], targets[:, :-1])
        assert int(inputs.min()) >= 0 and int(targets.max()) < tiny_tokenizer.vocab_size
    val_segments = [s for x, _ in val_batches for s in _segment_texts(tiny_tokenizer, x, 300)]
    train_segments = [s for x, _ in train_batches for s in _segment_texts(tiny_tokenizer, x, 300)]
    assert val_segments and train_segments
    for seg in val_segments:
        assert seg in val_text and seg not in train_text
    for seg in train_segments:
        assert seg in train_text and seg not in val_text


def test_rank_loaders_see_disjoint_documents(tmp_path):
    docs, _ = numbered_docs([7, 12, 3, 25, 9] * 20)
    src = write_parquet_source(tmp_path / "d", {"a.parquet": docs, "b.parquet": ["1"]}, row_group_size=32)
    seen = []
    for rank in range(2):
        loader = BestFitLoader(CountingTokenizer(), resolve_source(str(src)), "train", 4, 16, rank=rank,
                               world_size=2, buffer_docs=16)
        tokens = set()
        for inputs, _ in (next(loader) for _ in range(5)):
            tokens |= set(inputs.flatten().tolist()) - {BOS}
        loader.close()
        seen.append(tokens)
    docs_of = lambda toks: {next(i for i, d in enumerate(docs) if str(t) in d.split()) for t in toks}
    assert seen[0] and seen[1] and not docs_of(seen[0]) & docs_of(seen[1])


def test_train_stream_loops_over_epochs(tmp_path):
    docs, end = numbered_docs([5, 9, 14, 3] * 5)
    src = write_parquet_source(tmp_path / "d", {"a.parquet": docs, "b.parquet": ["1"]}, row_group_size=8)
    loader = BestFitLoader(CountingTokenizer(), resolve_source(str(src)), "train", 2, 8, buffer_docs=4)
    total = end - 1
    batches = [next(loader) for _ in range(3 * total // 16 + 5)]  # about three passes over the data
    assert loader.epoch >= 2
    counts = torch.bincount(torch.cat([torch.cat([x, y[:, -1:]], 1).flatten() for x, y in batches]), minlength=end)
    assert (counts[1:] >= 1).all()  # every token was seen, several epochs in
    loader.close()


# -- exact resumption ----------------------------------------------------------------------------------------------


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (x1, y1), (x2, y2) in zip(a, b, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_exact_resume_on_real_data(tiny_tokenizer, shared_data):
    source = resolve_source(str(shared_data))
    make = lambda: BestFitLoader(tiny_tokenizer, source, "train", 4, 64, buffer_docs=64, seed=3)
    original = make()
    for _ in range(3):
        next(original)
    state = json.loads(json.dumps(original.state_dict()))  # must survive JSON
    expected = [next(original) for _ in range(4)]
    original.close()
    assert len(json.dumps(state)) < 20_000  # indices, not token buffers
    restored = make()
    restored.load_state_dict(state)
    _assert_same_batches([next(restored) for _ in range(4)], expected)
    restored.close()


def test_exact_resume_across_epoch_boundaries_and_ranks(tmp_path):
    docs, _ = numbered_docs([5, 30, 14, 3, 21, 8] * 4)
    src = write_parquet_source(tmp_path / "d", {"a.parquet": docs[:10], "b.parquet": docs[10:],
                                                "c.parquet": ["1"]}, row_group_size=4)
    source = resolve_source(str(src))
    make = lambda: BestFitLoader(CountingTokenizer(), source, "train", 2, 12, rank=1, world_size=2,
                                 buffer_docs=6, seed=7)
    reference = make()
    stream = [next(reference) for _ in range(40)]
    assert reference.epoch >= 2  # the stream went round several times
    reference.close()
    for k in (1, 9, 23):
        loader = make()
        for _ in range(k):
            next(loader)
        state = json.loads(json.dumps(loader.state_dict()))
        loader.close()
        resumed = make()
        resumed.load_state_dict(state)
        _assert_same_batches([next(resumed) for _ in range(40 - k)], stream[k:])
        resumed.close()


def test_mismatched_state_is_rejected(tmp_path):
    docs, _ = numbered_docs([5] * 10)
    src = write_parquet_source(tmp_path / "d", {"a.parquet": docs, "b.parquet": ["1"]})
    loader = BestFitLoader(CountingTokenizer(), resolve_source(str(src)), "train", 2, 8)
    next(loader)
    state = loader.state_dict()
    loader.close()
    other = BestFitLoader(CountingTokenizer(), resolve_source(str(src)), "train", 2, 16)
    with pytest.raises(ValueError, match="loader state has seq_len=8 but this loader has seq_len=16"):
        other.load_state_dict(state)


def test_bad_loader_arguments_and_producer_errors(tmp_path):
    src = write_parquet_source(tmp_path / "d", {"a.parquet": ["1 2"], "b.parquet": ["3"]})
    source = resolve_source(str(src))
    with pytest.raises(ValueError, match="seq_len must be a positive integer, got 0"):
        BestFitLoader(CountingTokenizer(), source, "train", 2, 0)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        BestFitLoader(CountingTokenizer(), source, "dev", 2, 8)
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text('{"text": "1 2"}\nnot json\n')
    (tmp_path / "j" / "b.jsonl").write_text('{"text": "3"}\n')
    loader = BestFitLoader(CountingTokenizer(), resolve_source(str(tmp_path / "j")), "train", 1, 4)
    for _ in range(2):  # raised in the background thread, surfaced here, and again (not a hang) on a retry
        with pytest.raises(ValueError, match="a.jsonl:2"):
            next(loader)
    loader.close()
    empty = write_parquet_source(tmp_path / "e", {"a.parquet": [""], "b.parquet": ["3"]})
    loader = BestFitLoader(CountingTokenizer(), resolve_source(str(empty)), "train", 1, 4)
    with pytest.raises(ValueError, match="gets no .*documents from the train split"):
        next(loader)
    loader.close()


def test_validation_batches_are_fixed(tiny_tokenizer, shared_data):
    source = resolve_source(str(shared_data))
    first = validation_batches(tiny_tokenizer, source, 2, 64, 2 * 64 * 3)
    second = validation_batches(tiny_tokenizer, source, 2, 64, 2 * 64 * 3)
    assert len(first) == 3
    _assert_same_batches(first, second)
    rank1 = validation_batches(tiny_tokenizer, source, 2, 64, 2 * 64 * 3 * 2, rank=1, world_size=2)
    assert len(rank1) == 3 and not torch.equal(rank1[0][0], first[0][0])


def test_a_spread_validation_set_spans_the_block_instead_of_its_first_documents(tiny_tokenizer, shared_data):
    """The shared val shard is consecutive chunks of books: its first 16k tokens are a handful of neighbouring
    documents. Spread, the same number of tokens comes from documents all over the first block, the same ones in
    every run."""
    source = resolve_source(str(shared_data))
    texts = source.read_block(source.shards("val")[0], 0)

    def documents(batches) -> list[int]:
        found = []
        for x, _ in batches:
            for row in x:
                ids = row.tolist()
                starts = [i for i, t in enumerate(ids) if t == tiny_tokenizer.bos_id]
                for a, b in zip(starts, starts[1:] + [len(ids)]):
                    piece = tiny_tokenizer.decode(ids[a + 1:b])[:40]
                    if len(piece) >= 40:
                        found.append(next(j for j, t in enumerate(texts) if piece in t))
        return found

    head = documents(validation_batches(tiny_tokenizer, source, 4, 256, 16384))
    spread = validation_batches(tiny_tokenizer, source, 4, 256, 16384, spread=True)
    again = validation_batches(tiny_tokenizer, source, 4, 256, 16384, spread=True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(spread, again))
    where = documents(spread)
    assert max(head) < 0.05 * len(texts)
    assert max(where) - min(where) > 0.5 * len(texts) and len(set(where)) > len(set(head))


def test_validation_batches_when_the_split_is_short(tmp_path, capsys):
    docs, _ = numbered_docs([10] * 3)
    src = write_parquet_source(tmp_path / "d", {"a.parquet": ["1"], "b.parquet": docs})
    batches = validation_batches(CountingTokenizer(), resolve_source(str(src)), 1, 10, 10 * 100)
    assert len(batches) == 3 and "fewer than the 100 asked for" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has less than one batch"):
        validation_batches(CountingTokenizer(), resolve_source(str(src)), 8, 10, 1000)


def test_bench_cli_prints_throughput(tiny_tokenizer, shared_data, capsys):
    assert datamod.main(["bench", "--data", str(shared_data), "--vocab-size", "1024", "--max-chars", "2500000",
                         "--batch-size", "2", "--seq-len", "32", "--batches", "20"]) == 0
    assert "tokens/s" in capsys.readouterr().out


# -- downloading ---------------------------------------------------------------------------------------------------


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; the first request for each file fails with HTTP 503 to exercise the retry."""

    failed: set
    requests: list

    def do_GET(self):
        self.requests.append(self.path)
        if self.path not in self.failed:
            self.failed.add(self.path)
            self.send_error(503, "try again")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def shard_server(tmp_path):
    served = write_parquet_source(tmp_path / "served", {
        "shard_00000.parquet": ["train zero"], "shard_00001.parquet": ["train one"],
        "shard_01822.parquet": ["validation"]})
    handler = functools.partial(type("H", (FlakyHandler,), {"failed": set(), "requests": []}), directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.func.requests
    server.shutdown()


def test_download_retries_and_always_fetches_validation(shard_server, tmp_path, monkeypatch):
    url, requests = shard_server
    out = download("fineweb-edu", 2, tmp_path / "out", base_url=url, backoff_s=0.01, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet",
                                                      "shard_01822.parquet"]
    assert pq.read_table(out / "shard_01822.parquet").column("text").to_pylist() == ["validation"]
    assert len(requests) == 6  # each file failed once, then succeeded
    # Everything present: nothing is requested again. The env var overrides the URL like the flag does.
    monkeypatch.setenv("NANORESEARCH_DOWNLOAD_URL", url)
    download("fineweb-edu", 2, out, backoff_s=0.01, progress=False)
    assert len(requests) == 6
    # The downloaded directory works as a source with the pinned validation shard.
    assert [t for _, t in resolve_source(str(out)).iter_texts("val")] == ["validation"]


def test_download_gives_up_cleanly(shard_server, tmp_path):
    url, _ = shard_server
    with pytest.raises(RuntimeError, match=r"failed to download .*shard_00000.parquet after 1 attempts"):
        download("fineweb-edu", 1, tmp_path / "out", base_url=url, retries=1, backoff_s=0.01, progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # no partial file left behind
    with pytest.raises(ValueError, match="unknown download source 'c4'"):
        download("c4", 1, tmp_path / "out")
    with pytest.raises(ValueError, match="-n 0 is out of range"):
        download("climbmix", 0, tmp_path / "out")


def test_download_cli(shard_server, tmp_path, capsys):
    url, _ = shard_server
    assert datamod.main(["download", "--source", "fineweb-edu", "-n", "1", "--out", str(tmp_path / "o"),
                         "--base-url", url, "--backoff", "0.01"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["shard_00000.parquet", "shard_01822.parquet"]
    capsys.readouterr()
    assert datamod.main(["download", "--source", "fineweb-edu", "-n", "0", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: -n 0 is out of range")


def test_rows_are_full_for_every_batch_shape(tmp_path):
    docs, _ = numbered_docs([1, 2, 50, 7, 19, 33, 4] * 8)
    src = write_parquet_source(tmp_path / "d", {"a.parquet": docs, "b.parquet": ["1"]}, row_group_size=10)
    for batch_size, seq_len in ((1, 1), (3, 5), (2, 64)):
        loader = BestFitLoader(CountingTokenizer(), resolve_source(str(src)), "train", batch_size, seq_len,
                               buffer_docs=5)
        for _ in range(math.ceil(200 / (batch_size * seq_len)) + 3):
            inputs, targets = next(loader)
            assert inputs.shape == (batch_size, seq_len) and (inputs[:, 0] == BOS).all()
            assert (inputs >= 0).all() and (targets >= 0).all()
        loader.close()
