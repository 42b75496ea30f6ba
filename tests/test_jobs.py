"""A local job's training never outlives what started it: the job stops it when its owner (the search) dies, the
training process is signalled when its job's process dies, and a pid file never gets an unrelated process killed."""

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness.jobs import (
    Owner,
    TrainingJob,
    left_running,
    pid_file,
    process_start,
    stop_training,
    training_pid,
    write_pid_file,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process lifetimes are checked through /proc")

# A stand-in for model.train: on SIGTERM it records that it was asked to stop (where model.train saves a
# checkpoint) and exits 143; otherwise it sleeps far past any test's patience. MARKER.ready says it listens.
TRAINER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    def stop(*_):
        Path(sys.argv[1]).write_text("terminated")
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    Path(sys.argv[1] + ".ready").touch()
    time.sleep(600)
""")


def ready(marker: Path) -> bool:
    return Path(str(marker) + ".ready").exists()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_a_job_stops_its_training_when_its_owner_dies(tmp_path):
    owner_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    owner = Owner(owner_proc.pid, process_start(owner_proc.pid))
    assert owner.alive()
    marker, run_dir = tmp_path / "stopped", tmp_path / "run"
    t0 = time.time()
    returned = TrainingJob([sys.executable, "-c", TRAINER, str(marker)], str(run_dir), timeout_s=120, owner=owner)()
    # The owner exits after 5 s and is never reaped here: a zombie counts as dead.
    assert not owner.alive() and time.time() - t0 < 20 and ready(marker)
    assert returned["orphaned"] and not returned["timed_out"] and returned["returncode"] == 143
    assert marker.read_text() == "terminated"  # stopped with SIGTERM: model.train saves its checkpoint there
    assert "is gone: stopping the training" in (run_dir / "train.log").read_text()
    owner_proc.wait()


def test_an_owner_is_told_apart_from_a_process_reusing_its_pid():
    me = Owner.this_process()
    assert me.alive()
    assert not Owner(me.pid, str(int(me.started) + 1)).alive()  # same pid, another start time: another process


def test_training_is_signalled_when_its_job_process_is_killed(tmp_path):
    """SIGKILL of the process running TrainingJob (e.g. the whole process group of a search) leaves no trainer:
    the trainer runs in its own session, so only the parent-death signal reaches it."""
    run_dir = tmp_path / "run"
    marker = run_dir / "stopped"  # in the run dir, as model.train's --out is: the trainer's command line names it
    runner = textwrap.dedent(f"""
        from harness.jobs import TrainingJob
        TrainingJob([{sys.executable!r}, "-c", {TRAINER!r}, {str(marker)!r}], {str(run_dir)!r}, timeout_s=600)()
    """)
    job = subprocess.Popen([sys.executable, "-c", runner], cwd=Path(__file__).resolve().parents[1])
    assert wait_for(lambda: training_pid(run_dir) is not None and ready(marker), 60), "the trainer never started"
    trainer = training_pid(run_dir)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert wait_for(lambda: not alive(trainer), 10), "the trainer outlived its job"
    assert marker.read_text() == "terminated"


def test_a_trainer_left_by_an_earlier_session_is_stopped_with_sigterm(tmp_path):
    """What Executor.submit does before relaunching a local job: the trainer named by the run dir's pid file is
    stopped the way model.train saves a checkpoint (SIGTERM), and reported."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = run_dir / "stopped"
    stale = subprocess.Popen([sys.executable, "-c", TRAINER, str(marker)], start_new_session=True)
    try:
        pid_file(run_dir).write_text(str(stale.pid))
        assert wait_for(lambda: training_pid(run_dir) == stale.pid and ready(marker), 30)
        reaper = threading.Thread(target=stale.wait, daemon=True)  # as init reaps an orphan
        reaper.start()
        t0 = time.time()
        assert stop_training(run_dir, grace_s=30) is True
        assert time.time() - t0 < 10 and stale.wait(timeout=10) == 143 and marker.read_text() == "terminated"
        assert stop_training(run_dir, grace_s=1) is False  # nothing left to stop
    finally:
        stale.kill()
        stale.wait()


def test_a_pid_file_naming_another_program_is_never_signalled(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)  # a stranger that got the trainer's old pid
    try:
        pid_file(run_dir).write_text(str(other.pid))
        assert training_pid(run_dir) is None
        assert stop_training(run_dir, grace_s=1) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_trainer_whose_session_is_alive_is_left_alone(tmp_path):
    """The same command in two terminals: the second must not stop the first's training (it waits for the run dir's
    lock instead). A trainer whose session is gone, or that recorded none, is stopped as before."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "marker"
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(marker), str(run_dir)], start_new_session=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_owner = Owner(gone.pid, process_start(gone.pid))
    gone.wait()
    try:
        assert wait_for(lambda: ready(marker), 30)
        write_pid_file(run_dir, trainer.pid, Owner.this_process())
        assert training_pid(run_dir) == trainer.pid and not left_running(run_dir)
        write_pid_file(run_dir, trainer.pid, gone_owner)
        assert left_running(run_dir)
        write_pid_file(run_dir, trainer.pid, None)  # a pid file from before owners were recorded
        assert left_running(run_dir)
    finally:
        trainer.kill()
        trainer.wait()
    assert not left_running(run_dir)  # nothing running at all
