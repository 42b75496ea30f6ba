"""model.run_dir: the run-dir contract's readers and writers (torch-free)."""

import json
import subprocess
import sys

import pytest

from model import run_dir as rd


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_result_round_trip_keeps_every_key_and_null(tmp_path):
    result = rd.Result(status="ok", val_bpb=1.25, core=None, total_training_time=12.5, time_to_target=None,
                       tokens=4096, flops=1.5e12, steps=16, peak_memory_bytes=0, tok_per_s=None, min_val_bpb=1.2,
                       step_time_s=None, keys=rd.TRAIN_KEYS)
    rd.write_result(tmp_path, result)
    on_disk = json.loads((tmp_path / rd.RESULT).read_text())
    # model.train's keys, null where unknown; no reason (ok) and none of model.sft's keys
    assert set(on_disk) == set(rd.TRAIN_KEYS) and on_disk["tok_per_s"] is None and on_disk["core"] is None
    assert rd.load_result(tmp_path) == rd.Result.from_dict(on_disk)
    assert rd.load_result(tmp_path).to_dict() == on_disk
    again = rd.read_result(tmp_path)
    assert again.val_bpb == 1.25 and again.tokens == 4096 and again.ok and again.get("reason") is None


def test_result_writes_reason_only_when_set_and_chat_keys_for_sft(tmp_path):
    rd.write_result(tmp_path, rd.Result(status="failed", reason="RuntimeError: boom", keys=rd.CHAT_KEYS))
    on_disk = json.loads((tmp_path / rd.RESULT).read_text())
    assert set(on_disk) == set(rd.CHAT_KEYS) | {"reason"} and on_disk["chatcore"] is None
    assert on_disk["reason"] == "RuntimeError: boom" and not rd.load_result(tmp_path).ok


def test_unknown_keys_survive_an_update(tmp_path):
    original = {"status": "ok", "val_bpb": 1.5, "core": None, "tok_per_s": None, "cost": 0.25,
                "nested": {"a": [1, 2]}, "keys": "not the field", "extra": 3}
    (tmp_path / rd.RESULT).write_text(json.dumps(original))
    updated = rd.update_result(tmp_path, core=0.125, finished_at="2026-01-01T00:00:00+00:00")
    assert updated.core == 0.125 and updated.get("cost") == 0.25
    assert json.loads((tmp_path / rd.RESULT).read_text()) == {**original, "core": 0.125,
                                                               "finished_at": "2026-01-01T00:00:00+00:00"}
    # a file with only some keys gets no others, and a missing one is created with just the update
    (tmp_path / rd.RESULT).write_text(json.dumps({"status": "ok"}))
    rd.update_result(tmp_path, core=0.5)
    assert json.loads((tmp_path / rd.RESULT).read_text()) == {"status": "ok", "core": 0.5}
    (tmp_path / rd.RESULT).unlink()
    rd.update_result(tmp_path, core=0.25)
    assert json.loads((tmp_path / rd.RESULT).read_text()) == {"core": 0.25}


def test_atomic_write_failure_keeps_old_content_and_leaves_no_temp_file(tmp_path):
    rd.write_config(tmp_path, {"depth": 2})
    before = (tmp_path / rd.CONFIG).read_text()
    with pytest.raises(TypeError):
        rd.write_config(tmp_path, {"depth": object()})  # not JSON-serialisable
    with pytest.raises(TypeError):
        rd.write_result(tmp_path, rd.Result(status="ok", extra={"bad": {1, 2}}))
    assert (tmp_path / rd.CONFIG).read_text() == before and not (tmp_path / rd.RESULT).exists()

    def half_then_fail(f):
        f.write(b'{"depth": ')
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        rd.atomic_write_bytes(tmp_path / rd.CONFIG, half_then_fail)
    assert (tmp_path / rd.CONFIG).read_text() == before
    assert _files(tmp_path) == [rd.CONFIG]  # no .config.json.tmp-PID left behind
    rd.write_config(tmp_path, {"depth": 3})
    assert rd.load_config(tmp_path) == {"depth": 3} and _files(tmp_path) == [rd.CONFIG]


@pytest.mark.parametrize("text, expected", [
    ("{truncated", "malformed JSON at line 1 column 2"),
    ("[1, 2]", "expected a JSON object, got list"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_malformed_result_is_a_one_line_error(tmp_path, text, expected):
    path = tmp_path / rd.RESULT
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(rd.RunDirError) as error:
        rd.load_result(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
    assert rd.read_result(tmp_path) is None  # the lenient reader
    with pytest.raises(rd.RunDirError, match="refusing|malformed|expected|UTF-8"):
        rd.update_result(tmp_path, core=0.5)
    assert path.read_bytes() == (text if isinstance(text, bytes) else text.encode())  # left as it was


def test_missing_files(tmp_path):
    assert rd.read_points(tmp_path) == [] and rd.load_points(tmp_path) == []
    assert rd.read_config(tmp_path) is None and rd.read_result(tmp_path) is None and not rd.is_chat(tmp_path)
    with pytest.raises(rd.RunDirError, match=r"config\.json: cannot read \(No such file or directory\)"):
        rd.load_config(tmp_path)


def test_points_append_read_and_resume(tmp_path):
    for step in (0, 10, 20):
        rd.append_point(tmp_path, {"step": step, "val_bpb": 2.0 - step / 100})
    assert [p["step"] for p in rd.load_points(tmp_path)] == [0, 10, 20] == [p["step"] for p in rd.read_points(tmp_path)]
    rd.keep_points_before(tmp_path, 20)
    assert [p["step"] for p in rd.load_points(tmp_path)] == [0, 10]
    with open(tmp_path / rd.METRICS, "a") as f:
        f.write('\n{"step": 30, "val_')  # a blank line, then a line cut by a kill
    assert [p["step"] for p in rd.read_points(tmp_path)] == [0, 10]
    with pytest.raises(rd.RunDirError, match=rf"{rd.METRICS}:4: malformed JSON"):
        rd.load_points(tmp_path)
    rd.keep_points_before(tmp_path, 10)  # a resume from step 10: the cut line goes, the blank line too
    assert (tmp_path / rd.METRICS).read_text() == '{"step": 0, "val_bpb": 2.0}\n'
    seen = []
    rd.keep_points_before(tmp_path, 0)
    rd.append_point(tmp_path, {"step": 5})
    assert rd.load_points(tmp_path, check=lambda value, where: seen.append(where) or {"checked": value}) == \
        [{"checked": {"step": 5}}]
    assert seen == [f"{tmp_path / rd.METRICS}:1"]
    rd.clear_points(tmp_path)
    assert not (tmp_path / rd.METRICS).exists()


def test_is_chat(tmp_path):
    rd.write_config(tmp_path, {"chat": True})
    assert rd.is_chat(tmp_path)
    (tmp_path / rd.CONFIG).write_text('["chat"]')
    assert not rd.is_chat(tmp_path)


def test_imports_no_torch():
    code = "import sys, model.run_dir, leaderboard.ingest; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
