"""The jobs a search or a speedrun has running, over an executor: submit, collect what finished, stop them all.

submitit's own API one level up (submit a job, ask whether it is done, take its result, cancel it), with what both
callers need around it:
- each run is recorded in the leaderboard as 'running' when it starts and with its outcome (and learning curve)
  when it ends; a run finished in a later session keeps its first start;
- jobs ignore Ctrl-C: the caller alone handles it and stops each job's training cleanly (`stop_all`: the training
  saves a checkpoint), instead of every worker process dying with a traceback of its own;
- an outcome is flagged as loaded when its throughput fell below `loaded_fraction` of the rung's calibrated one
  (times this job's share of the machine);
- a running job's live progress (step, tok/s, val_bpb so far) is read from its run dir and put on its running row
  (`progress`), for the search's heartbeat and the dashboard's running jobs.

The caller decides what to run next and what a result means; the pool only runs and records.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from harness.executors import Executor
from harness.jobs import Job, stop_training
from harness.runs import Outcome, is_loaded, read_outcome, run_row
from model.run_dir import read_progress

Key = tuple[str, str, int]  # (experiment id, rung name, seed slot)


def slot_key(job: Job) -> Key:
    return (job.experiment_id, job.rung.name, job.slot)


@dataclass
class Running:
    job: Job
    handle: object                     # the submitit job
    started_at: datetime
    t0: float                          # time.monotonic() at submission

    def age_s(self) -> float:
        return time.monotonic() - self.t0


@dataclass
class Finished:
    job: Job
    outcome: Outcome
    started_at: datetime               # when this session started it
    wall_s: float                      # the job's own wall time, else the time since it was submitted
    expected_tok_per_s: float | None   # the throughput it was expected to reach (None: not calibrated)


class JobPool:
    def __init__(self, executor: Executor, store, *, search_id: int | None = None, throughput_share: float = 1.0,
                 loaded_fraction: float = 0.5):
        self.executor, self.store, self.search_id = executor, store, search_id
        self.throughput_share, self.loaded_fraction = throughput_share, loaded_fraction
        self.running: dict[Key, Running] = {}

    def __len__(self) -> int:
        return len(self.running)

    def __contains__(self, key: Key) -> bool:
        return key in self.running

    def __iter__(self) -> Iterator[Running]:
        return iter(list(self.running.values()))

    def submit(self, job: Job, *, reopen: bool = False) -> Running:
        """Record the run as running and start it. `reopen`: the run is recorded as failed for the machine by an
        earlier session, and trains again (from its checkpoint)."""
        started = datetime.now(UTC)
        if reopen:
            self.store.reopen_run(*job.key, started_at=started)
        self.store.record_run(run_row(job, None, self.search_id, started))
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # an ignored signal stays ignored across exec
        try:
            handle = self.executor.submit(job)
        finally:
            signal.signal(signal.SIGINT, previous)
        running = self.running[slot_key(job)] = Running(job, handle, started, time.monotonic())
        return running

    def collect(self) -> list[Finished]:
        """The jobs that finished since the last call, each read from its run dir and recorded with its outcome."""
        finished = []
        for key in [k for k, r in self.running.items() if r.handle.done()]:
            r = self.running.pop(key)
            returned, error = None, None
            try:
                returned = r.handle.result()
            except Exception as e:  # noqa: BLE001 - a job that blew up is a crash result, never the caller's end
                error = e
            outcome = read_outcome(r.job, returned, error)
            rung = r.job.rung
            expected = rung.tok_per_s * self.throughput_share if rung.tok_per_s else None
            outcome.loaded = is_loaded(outcome.tok_per_s, expected, self.loaded_fraction)
            # started_at None: the row keeps the run's first start (a run resumed by a later session counts from there).
            self.store.record_run(run_row(r.job, outcome, self.search_id, None), points=outcome.points)
            finished.append(Finished(r.job, outcome, r.started_at, outcome.wall_s or r.age_s(), expected))
        return finished

    def progress(self) -> list[tuple[Job, dict]]:
        """Each running job's live progress from its run dir (progress.json, written by model.train at each progress
        line), recorded on its running row for the dashboard; jobs that have not written one yet are left out."""
        live = []
        for r in self.running.values():
            progress = read_progress(r.job.run_dir)
            if not progress:
                continue
            self.store.record_progress(*r.job.key, steps=progress.get("step"), tok_per_s=progress.get("tok_per_s"),
                                       val_bpb=progress.get("val_bpb"))
            live.append((r.job, progress))
        return live

    def stop_all(self) -> None:
        """Stop every running job: its training saves a checkpoint and exits (a rerun resumes it from there)."""
        for r in self.running.values():
            if self.executor.kind == "slurm":
                r.handle.cancel()  # SLURM signals the job's processes; model.train checkpoints on SIGTERM
            else:
                stop_training(r.job.run_dir)
                r.handle.cancel(check=False)
        self.running.clear()
