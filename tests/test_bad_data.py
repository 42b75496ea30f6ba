"""Bad pretraining data is one line, exit code 2, and nothing written or recorded, for every command that reads it:
a parquet without a 'text' column, a corrupt one, a truncated one, a single file too small to hold out a
validation split, an empty directory. So is an output directory on a read-only file system."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]

# Every test here starts training subprocesses (model.train, harness.search, harness.speedrun): deselect with -m "not slow" for a quick loop.
pytestmark = pytest.mark.slow


def write_shards(directory: Path, columns: dict, count: int = 3) -> None:
    directory.mkdir(parents=True)
    for i in range(count):
        pq.write_table(pa.table(columns), directory / f"shard_{i:05d}.parquet")


def bad_data(tmp_path: Path, case: str) -> tuple[Path, str]:
    """(data dir, what the error must name) for one kind of bad data."""
    texts = [f"document {j} " * 40 for j in range(100)]
    d = tmp_path / case
    if case == "no-text-column":
        write_shards(d, {"content": texts})
        return d, "has no 'text' column (columns: content)"
    if case == "corrupt":
        d.mkdir()
        for i in range(3):
            (d / f"shard_{i:05d}.parquet").write_bytes(b"PAR1" + os.urandom(2000))
        return d, "cannot read parquet file"
    if case == "truncated":
        write_shards(d, {"text": texts})
        last = d / "shard_00002.parquet"
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        return d, f"cannot read parquet file {last}"
    if case == "empty":
        d.mkdir()
        return d, f"data directory {d} has no"
    if case == "single-block":
        write_shards(d, {"text": texts}, count=1)
        return d, "is a single file with a single block"
    raise ValueError(case)


CASES = ["no-text-column", "corrupt", "truncated", "single-block", "empty"]


def command_args(command: str, out: Path, db: Path) -> list[str]:
    return {"model.train": ["--depth", "1", "--tier", "cpu", "--num-iterations", "2", "--out", str(out)],
            "harness.search": ["--tier", "cpu", "--trials", "1", "--db", f"sqlite:///{db}", "--runs-dir", str(out)],
            "harness.speedrun": ["--track", "cpu", "--seeds", "1", "--db", f"sqlite:///{db}", "--runs-dir", str(out)]}[command]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", ["model.train", "harness.search", "harness.speedrun"])
def test_bad_data_is_one_line_and_leaves_nothing(tmp_path, case, command):
    data, needle = bad_data(tmp_path, case)
    out, db = tmp_path / "out", tmp_path / "lb.db"
    proc = subprocess.run([sys.executable, "-m", command, *command_args(command, out, db), "--data", str(data)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "NANORESEARCH_HOME": str(tmp_path / "home")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    assert needle in lines[0], lines[0]
    assert not out.exists() and not db.exists()  # no run dir, no lock file, no database rows


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only file system (a tmpfs mounted ro; needs root, as CI has)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("command", ["model.train", "harness.search", "harness.speedrun"])
def test_an_output_dir_on_a_read_only_file_system_is_one_line(tmp_path, read_only_dir, shared_data, command):
    out, db = read_only_dir / "runs", tmp_path / "lb.db"
    proc = subprocess.run([sys.executable, "-m", command, *command_args(command, out, db), "--data", str(shared_data)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NANORESEARCH_HOME": str(tmp_path / "home")})
    lines = proc.stderr.strip().splitlines()
    flag = "--out" if command == "model.train" else "--runs-dir"
    assert proc.returncode == 2 and lines and lines[-1].startswith(f"error: {flag} {out}"), proc.stderr[-3000:]
    assert "read-only file system" in lines[-1].lower() and "expected a writable directory" in lines[-1]
    assert not db.exists()  # nothing recorded: no search or track row stuck in the database
