"""`python -m model.train` end to end: it learns, resumes exactly after a kill, runs under torchrun, and rejects
bad input with one line and nothing written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.wandb_offline import offline_runs

REPO = Path(__file__).resolve().parents[1]
# Small enough to run in seconds on 2 cores, big enough to learn something in a few dozen steps.
TINY = ["--depth", "1", "--set", "vocab_size=1024", "--set", "sequence_len=64", "--set", "head_dim=32",
        "--set", "device_batch_size=4", "--set", "total_batch_size=256", "--set", "eval_tokens=2048",
        "--set", "log_every=5", "--set", "warmup_steps=2"]


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    tiny_tokenizer.save(path)
    return path


def train_cmd(out, data, tokenizer_dir, *extra, module=("-m", "model.train")):
    return [sys.executable, *module, *TINY, "--data", str(data), "--tokenizer", str(tokenizer_dir), "--out", str(out),
            *extra]


def run(cmd, timeout=240, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_run_learns_and_writes_the_contract(tmp_path, shared_data, tokenizer_dir):
    out = tmp_path / "run"
    # nanochat's LRs shrink by sqrt(256 / 2^19) at this tiny batch; 16x brings them back to where 40 steps
    # learn (measured: x4 -> -0.46 bpb, x16 -> -0.66, x32 -> -0.67).
    lrs = ["matrix_lr=0.32", "embedding_lr=4.8", "unembedding_lr=0.128", "scalar_lr=8"]
    proc = run(train_cmd(out, shared_data, tokenizer_dir, "--num-iterations", "40", "--eval-every", "20",
                         *[a for lr in lrs for a in ("--set", lr)], "--target", "val_bpb<=100"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 40/40" in proc.stderr and "tok/s" in proc.stderr  # progress lines
    config = json.loads((out / "config.json").read_text())
    assert config["depth"] == 1 and config["overrides"]["matrix_lr"] == "0.32" and config["code_version"]
    assert config["model"]["vocab_size"] == 1024 and config["budget"] == {"num_iterations": 40}
    # The cpu tier trains in fp32 even where bf16 is native (its parametric test needs it), and says so.
    assert config["model"]["dtype"] == config["compute_dtype"] == "float32"
    points = metrics(out)
    assert [p["step"] for p in points] == [0, 20, 40]
    assert points[-1]["val_bpb"] < points[0]["val_bpb"] - 0.4, points
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["steps"] == 40 and result["val_bpb"] == points[-1]["val_bpb"]
    assert result["tokens"] == 40 * 256 and result["flops"] > 0
    # total_training_time excludes the first 10 steps and evaluation; the trivially-met target is met at the
    # first evaluation, before any timed step.
    assert 0 < result["total_training_time"] and result["time_to_target"] == 0.0
    assert (out / "checkpoints" / "LATEST").exists() and (out / "tokenizer" / "tokenizer.json").exists()
    # The live progress a search's heartbeat and the dashboard read: the last progress line's step, the val_bpb of
    # the evaluation before it, the throughput.
    progress = json.loads((out / "progress.json").read_text())
    assert (progress["step"], progress["of"]) == (40, 40) and progress["val_bpb"] == points[1]["val_bpb"]
    assert progress["tok_per_s"] > 0 and progress["train_loss"] > 0 and progress["updated_at"] > 0


@pytest.mark.slow
def test_time_budget_stops_on_training_time(tmp_path, shared_data, tokenizer_dir):
    out = tmp_path / "run"
    proc = run(train_cmd(out, shared_data, tokenizer_dir, "--time-budget", "2", "--eval-every", "0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert 2.0 <= result["total_training_time"] < 4.0 and result["steps"] > 10
    assert [p["step"] for p in metrics(out)] == [result["steps"]]  # eval-every 0: only the final evaluation


def cpu_hog(processes: int = 2) -> list[subprocess.Popen]:
    """Busy loops on every core: a loaded machine."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]


@pytest.mark.slow
def test_a_compute_budget_trains_the_same_tokens_and_result_on_a_loaded_machine(tmp_path, shared_data, tokenizer_dir):
    """The same config and seed give the same val_bpb on CPU, and a FLOPs budget gives the same steps and tokens
    whatever the load (a time budget would not); only the measured throughput drops."""
    budget = ["--flops-budget", "3e9", "--eval-every", "10", "--seed", "3"]
    quiet = run(train_cmd(tmp_path / "quiet", shared_data, tokenizer_dir, *budget))
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    hogs = cpu_hog()
    try:
        loaded = run(train_cmd(tmp_path / "loaded", shared_data, tokenizer_dir, *budget))
    finally:
        for h in hogs:
            h.kill()
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("quiet", "loaded"))
    config = json.loads((tmp_path / "quiet" / "config.json").read_text())
    steps = round(3e9 / (config["flops_per_token"] * 256))
    assert a["steps"] == b["steps"] == steps and a["tokens"] == b["tokens"] == steps * 256
    assert config["budget"] == {"flops_budget": 3e9, "num_iterations": steps}
    assert a["val_bpb"] == b["val_bpb"]  # bit-identical: the load changed the speed, not the result
    assert [p["val_bpb"] for p in metrics(tmp_path / "quiet")] == [p["val_bpb"] for p in metrics(tmp_path / "loaded")]
    assert a["tok_per_s"] > 0 and b["tok_per_s"] > 0 and a["step_time_s"] > 0


@pytest.mark.slow
def test_a_flops_budget_buys_more_tokens_for_a_cheaper_model(tmp_path, shared_data, tokenizer_dir):
    runs = {}
    for name, extra in (("mlp4", []), ("mlp2", ["--set", "mlp_ratio=2"])):
        out = tmp_path / name
        proc = run(train_cmd(out, shared_data, tokenizer_dir, "--flops-budget", "2e9", "--eval-every", "0", *extra))
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = json.loads((out / "result.json").read_text())
    assert runs["mlp2"]["tokens"] > runs["mlp4"]["tokens"]
    for r in runs.values():  # each spends the budget to within a step
        per_step = r["flops"] / r["steps"]
        assert abs(r["flops"] - 2e9) <= per_step / 2 + 1
    token = run(train_cmd(tmp_path / "tokens", shared_data, tokenizer_dir, "--token-budget", "2600", "--eval-every", "0"))
    assert token.returncode == 0 and json.loads((tmp_path / "tokens" / "result.json").read_text())["tokens"] == 11 * 256


@pytest.mark.slow
def test_kill_then_resume_matches_an_uninterrupted_run(tmp_path, shared_data, tokenizer_dir):
    args = ("--num-iterations", "30", "--eval-every", "10", "--save-every", "5")
    straight = tmp_path / "straight"
    assert run(train_cmd(straight, shared_data, tokenizer_dir, *args)).returncode == 0

    # The killed run logs to W&B (offline): resumed, it continues the same W&B run rather than starting another.
    killed = tmp_path / "killed"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline"}
    wandb = ("--wandb", "--wandb-group", "kill-resume", "--wandb-tag", "seed:0")
    proc = subprocess.Popen(train_cmd(killed, shared_data, tokenizer_dir, *args, *wandb), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step_000010.pt").exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(train_cmd(killed, shared_data, tokenizer_dir, *args, *wandb, "--resume"), cwd=REPO,
                             capture_output=True, text=True, timeout=240, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at step" in resumed.stderr
    # Two processes, one W&B run id (the SIGKILLed one's log is empty: W&B's core had not flushed it yet).
    attempts = sorted((killed / "wandb").glob("offline-run-*"))
    [logged] = offline_runs(killed)
    assert len(attempts) == 2 and {a.name.rsplit("-", 1)[1] for a in attempts} == {logged["id"]}
    assert logged["group"] == "kill-resume" and logged["tags"] == ["seed:0"]
    assert [h["step"] for h in logged["history"]] == [10, 20, 30] and logged["summary"]["steps"] == 30
    a, b = metrics(straight), metrics(killed)
    assert [p["step"] for p in b] == [0, 10, 20, 30]  # no duplicated or missing evaluations
    assert [p["val_bpb"] for p in a] == [p["val_bpb"] for p in b]
    assert [p["train_loss"] for p in a] == [p["train_loss"] for p in b]
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (straight, killed))
    assert ra["val_bpb"] == rb["val_bpb"] and rb["steps"] == 30

    again = run(train_cmd(killed, shared_data, tokenizer_dir, *args, "--resume"))
    assert again.returncode == 0 and "nothing to do" in again.stderr


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, shared_data, tokenizer_dir):
    out = tmp_path / "ddp"
    cmd = train_cmd(out, shared_data, tokenizer_dir, "--num-iterations", "6", "--eval-every", "3",
                    "--set", "device_batch_size=2",
                    module=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "model.train"))
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["command"].startswith("torchrun")
    assert config["grad_accum"] == 1  # 256 tokens = 2 x 64 x 1 accum x 2 ranks
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["steps"] == 6
    assert [p["step"] for p in metrics(out)] == [0, 3, 6]  # rank 0 alone writes


@pytest.mark.slow
def test_divergence_is_its_own_status(tmp_path, shared_data, tokenizer_dir):
    out = tmp_path / "boom"
    proc = run(train_cmd(out, shared_data, tokenizer_dir, "--num-iterations", "30", "--set", "embedding_lr=1e30",
                         "--set", "unembedding_lr=1e30", "--set", "warmup_steps=0"))
    assert proc.returncode == 3, proc.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "diverged" and "loss became" in result["reason"]


@pytest.mark.parametrize("extra,needle", [
    (["--set", "smeer=false"], "unknown config field 'smeer'"),
    (["--set", "matrix_lr=fast"], "matrix_lr='fast': expected a number"),
    (["--set", "n_kv_head=3"], "n_kv_head=3"),
    (["--target", "loss<1"], "--target 'loss<1'"),
    (["--time-budget", "-5"], "--time-budget -5.0"),
    (["--set", "total_batch_size=100"], "total_batch_size=100"),
    (["--stop-at-target"], "--stop-at-target needs --target"),
    (["--time-budget", "5", "--num-iterations", "3"], "not allowed with argument"),
    (["--flops-budget", "0"], "--flops-budget 0.0: expected a positive number of FLOPs"),
    (["--token-budget", "-1"], "--token-budget -1: expected a positive number of tokens"),
])
@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, shared_data, tokenizer_dir, extra, needle):
    out = tmp_path / "never"
    horizon = [] if any(flag in extra for flag in ("--time-budget", "--flops-budget", "--token-budget")) else ["--num-iterations", "2"]
    proc = run(train_cmd(out, shared_data, tokenizer_dir, *horizon, *extra))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not out.exists()


@pytest.mark.slow
def test_missing_data_and_existing_run_dir(tmp_path, shared_data, tokenizer_dir):
    proc = run(train_cmd(tmp_path / "x", tmp_path / "no-such-dir", tokenizer_dir, "--num-iterations", "2"))
    assert proc.returncode == 2 and "no-such-dir" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    out = tmp_path / "done"
    assert run(train_cmd(out, shared_data, tokenizer_dir, "--num-iterations", "2", "--eval-every", "0")).returncode == 0
    before = (out / "result.json").read_text()
    proc = run(train_cmd(out, shared_data, tokenizer_dir, "--num-iterations", "2"))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (out / "result.json").read_text() == before  # nothing recorded is lost


@pytest.mark.slow
def test_a_crash_is_recorded_as_failed_with_its_reason(tmp_path, shared_data, tokenizer_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "shard_00001.parquet").write_bytes((shared_data / "shard_00003.parquet").read_bytes())  # val: fine
    # Damaged pages behind an intact footer: the file passes the up-front check, training fails reading it.
    raw = bytearray((shared_data / "shard_00000.parquet").read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    raw[4:len(raw) - footer] = bytes(len(raw) - footer - 4)
    (data / "shard_00000.parquet").write_bytes(bytes(raw))
    out = tmp_path / "crash"
    proc = run(train_cmd(out, data, tokenizer_dir, "--num-iterations", "5"))
    assert proc.returncode == 1
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "shard_00000.parquet" in result["reason"] and "\n" not in result["reason"]
    assert "error: training failed" in proc.stderr


@pytest.mark.slow
def test_a_second_process_on_the_same_run_dir_waits_for_the_first(tmp_path, shared_data, tokenizer_dir):
    out = tmp_path / "shared-dir"
    cmd = train_cmd(out, shared_data, tokenizer_dir, "--num-iterations", "800", "--eval-every", "400", "--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "config.json").exists() and time.time() < deadline:  # the first holds the lock by now
        time.sleep(0.01)
    second = run(cmd)
    assert first.wait(timeout=120) == 0
    assert second.returncode == 0, second.stderr[-2000:]
    assert "waiting for it to finish" in second.stderr and "nothing to do" in second.stderr
    assert [p["step"] for p in metrics(out)] == [0, 400, 800]


def test_checkpoint_writes_leave_no_temp_files(tmp_path):
    """A write that fails part-way (a full disk) removes its temp file, and a save sweeps away the temp files of a
    process killed mid-write."""
    from model.checkpoint import CHECKPOINT_DIR, atomic_write_bytes, latest_checkpoint, save_checkpoint
    directory = tmp_path / CHECKPOINT_DIR
    directory.mkdir()
    stale = directory / ".step_000010.pt.tmp-999999"  # from a process that died while writing
    stale.write_bytes(b"half a checkpoint")

    def full_disk(f):
        f.write(b"some bytes")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write_bytes(directory / "step_000020.pt", full_disk)
    assert not list(directory.glob(f".*.tmp-{os.getpid()}")) and not (directory / "step_000020.pt").exists()
    path = save_checkpoint(tmp_path, 30, {"step": 30})
    assert not stale.exists() and latest_checkpoint(tmp_path) == path
    assert sorted(p.name for p in directory.iterdir()) == ["LATEST", "step_000030.pt"]


# --- the device batch that fits -----------------------------------------------------------------------------------

def test_the_device_batch_halves_on_out_of_memory_and_keeps_the_total_batch():
    import torch

    from model.train import BadInput, fit_device_batch
    tried = []

    def fits(batch):  # a GPU where 8 sequences of this model fit and 16 do not
        tried.append(batch)
        if batch > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return True
    assert fit_device_batch(fits, 32, rows_per_step=64) == 8 and tried == [32, 16, 8]
    assert 64 // 8 == 8  # 8 accumulation steps of 8 sequences: the same 64 sequences a step per rank
    # A step that fits but leaves no room for the optimizer's state counts as not fitting.
    assert fit_device_batch(lambda b: b <= 4, 32, rows_per_step=64) == 4
    with pytest.raises(BadInput, match="device_batch_size=1: a training step does not fit in memory"):
        fit_device_batch(lambda b: False, 4, rows_per_step=64)
    with pytest.raises(BadInput, match="cannot keep 6 sequences a step per rank"):
        fit_device_batch(lambda b: False, 6, rows_per_step=6)


def test_a_fitted_device_batch_trains_with_more_accumulation_and_is_recorded(tmp_path, shared_data, tokenizer_dir,
                                                                               monkeypatch):
    import model.train as train
    chosen = []

    real = train.chosen_device_batch

    def fitted(setup, model, resuming_config, rank, world):
        chosen.append(setup.train.device_batch_size)
        return 2 if resuming_config is None else real(setup, model, resuming_config, rank, world)
    monkeypatch.setattr(train, "chosen_device_batch", fitted)
    out = tmp_path / "run"
    argv = [*TINY, "--data", str(shared_data), "--tokenizer", str(tokenizer_dir), "--out", str(out),
            "--num-iterations", "3", "--seed", "0"]
    assert train.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert chosen == [4] and config["train"]["device_batch_size"] == 2 and config["grad_accum"] == 2
    assert config["train"]["total_batch_size"] == 256  # the total batch is kept
    assert json.loads((out / "result.json").read_text())["tokens"] == 3 * 256
    # Resumed, a run keeps the device batch it started with; on a CPU the configured one is used as is.
    import torch
    setup = train.resolve_setup(train.build_parser().parse_args(argv), torch.device("cpu"))
    assert real(setup, None, config, 0, 1) == 2 and real(setup, None, None, 0, 1) == 4
