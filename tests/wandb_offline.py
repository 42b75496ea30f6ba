"""Reads the runs W&B wrote offline (`<dir>/wandb/offline-run-*/run-<id>.wandb`), so tests assert on what `wandb sync`
would upload rather than on the flags we passed.

The file is W&B's transaction log: a 7-byte header (":W&B", a 2-byte magic, a version byte), then LevelDB-style log
records in 32 KiB blocks, each with a 7-byte header (CRC-32, little-endian length, type: 1 full, 2 first, 3 middle,
4 last) around a serialized `wandb_internal_pb2.Record`. The `wandb` package has no Python reader for it (its Go core
writes it), so this is the one here."""

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log (starts {data[:7]!r})"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the tail of a block too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0:  # zero padding up to the block's end
            pos += left - HEADER
            continue
        pending += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def offline_runs(root: Path) -> list[dict]:
    """Every offline W&B run under `root`: id, group, job type, name, tags, config and logged history rows. A log
    with nothing after its header (a process SIGKILLed before W&B's core flushed a record) is left out."""
    runs = []
    for path in sorted(Path(root).rglob("offline-run-*/run-*.wandb")):
        run, history, summary = None, [], {}
        logged = records(path)
        if not logged:
            continue
        for record in logged:
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run = {"id": r.run_id, "group": r.run_group, "job_type": r.job_type, "name": r.display_name,
                       "tags": list(r.tags), "config": {i.key: json.loads(i.value_json) for i in r.config.update}}
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        assert run is not None, f"{path}: no run record"
        runs.append({**run, "history": history, "summary": summary, "path": path})
    return runs
