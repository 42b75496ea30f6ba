"""
`python -m harness.search`: propose changes, test them on a depth ladder, promote only beyond noise, record it all.

    python -m harness.search                                  # the cpu tier, Optuna, SQLite nanoresearch.db
    python -m harness.search --trials 3 --time-budget 20 --seeds 2
    python -m harness.search --tier gpu --executor slurm --slurm-partition h100 --parallel 8
    python -m harness.search --aa 10                          # calibrate: how often is a null change promoted?
    python -m harness.search --aa 10 --aa-controls 10         # ... each null against a control of its own
    python -m harness.search --seed-base 100 --name again     # the same question on disjoint seeds
    ANTHROPIC_API_KEY=... python -m harness.search --proposer agent --trials 3 --agent-budget-usd 2

The data flow: proposer -> Experiment (content-hash id) -> jobs (experiment, rung, seed) -> executor ->
`python -m model.train` -> run dir -> leaderboard rows -> ladder decision -> next rung / proposer told.

Everything lives in the database (SQLite file by default; PostgreSQL by URL): proposals (and the ones refused,
with why), runs, decisions, null spreads per kind of change, and the Optuna study. A search is identified by --name; running the same command again resumes
it: finished runs are never repeated, unfinished ones continue from their checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from argparse import Namespace
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from experiments.catalog import CatalogError, Rung, Tier, load_recipe, load_tier
from harness.compute_multiplier import ComputeMultiplier, compute_multiplier
from harness.executors import EXECUTORS, Executor, SlurmOptions
from harness.experiment import NOISE_FLOOR_REPLICA, Experiment, parametric_null_tweaks
from harness.jobs import Job, terminate_as_interrupt
from harness.ladder import Verdict, decide
from harness.noise import CONTROL_INITS, Spread, control_spread, fit_prior, mde, per_look_alpha
from harness.pool import Finished, JobPool
from harness.preparation import (
    BadInput,
    job_timeout,
    local_threads,
    patch_worktree,
    prepare_data,
    prepare_runs_dir,
    prepare_tokenizer,
    threads_per_job,
)
from harness.proposers import Proposal
from harness.runs import Outcome, failed_for_the_machine
from leaderboard import ranking
from leaderboard.ranking import Standing
from leaderboard.schema import NOISE_FLOOR_PROPOSER
from model.cli import ArgumentParser
from search_spaces import KINDS, SPACES, SearchSpaceError, Space

POLL_S = 0.5
MAX_DUPLICATES_IN_A_ROW = 20


class SearchError(BadInput):
    """Bad input or an unrecoverable search state; one line for the user, exit code 2."""


class SearchFailed(RuntimeError):
    """The search broke after it was recorded (a database or file system that stopped working...): one line for the
    user, exit code 1; the search is marked failed with the reason."""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m harness.search", description="Search for changes that beat the baseline on a depth ladder.")
    p.add_argument("--tier", default=None, help="cpu | gpu | path/to/tier.toml (default: gpu when CUDA is available, else cpu)")
    p.add_argument("--space", default="all", choices=sorted(SPACES), help="which knobs proposals may turn")
    p.add_argument("--proposer", default="auto", choices=["optuna", "agent", "auto"],
                   help="auto = agent when ANTHROPIC_API_KEY is set, else optuna")
    p.add_argument("--trials", type=int, default=8, help="proposals to test (not counting the baseline)")
    p.add_argument("--budget-hours", type=float, default=None, help="stop proposing after this many compute hours")
    p.add_argument("--parallel", type=int, default=None, help="jobs running at once (default: the tier's, cpu 2)")
    p.add_argument("--db", default=None, help="database URL (env NANORESEARCH_DB; default sqlite:///nanoresearch.db)")
    p.add_argument("--executor", default="local", choices=EXECUTORS)
    p.add_argument("--data", default=None, help="pretraining data: a local dir or a source name (env NANORESEARCH_DATA)")
    p.add_argument("--name", default=None, help="search name; rerunning the same name resumes it (default: TIER-SPACE)")
    p.add_argument("--recipe", default="baseline", help="the baseline recipe (experiments/recipes)")
    p.add_argument("--runs-dir", default=None, help="where run dirs go (default: $NANORESEARCH_HOME/runs)")
    p.add_argument("--flops-budget", type=float, default=None, help="override every rung's budget with FLOPS of training")
    p.add_argument("--time-budget", type=float, default=None,
                   help="override every rung's budget with SECONDS of training (wall-clock: load becomes noise)")
    p.add_argument("--seeds", type=int, default=None, help="override every rung's seed count")
    p.add_argument("--rungs", default=None, help="override the ladder's depths, e.g. 1,2")
    p.add_argument("--aa", type=int, default=None, metavar="N",
                   help="A/A calibration: N null proposals of each kind (structural, parametric), decided at the first rung")
    p.add_argument("--aa-controls", type=int, default=None, metavar="G",
                   help="split the A/A nulls over G independent controls, each a search of its own on disjoint seeds "
                        "with its own baseline and nulls (default: one control per 2 nulls of each kind)")
    p.add_argument("--seed-base", type=int, default=0, metavar="K",
                   help="first seed of the seed slots (slot s runs seed K+s): repeated searches with bases at least "
                        "max_seeds apart use disjoint seeds")
    p.add_argument("--enqueue", default=None, metavar="FILE",
                   help="JSON list of proposals ({tweaks, rationale}) to test before the proposer's own")
    p.add_argument("--seed", type=int, default=0, help="the proposer's random seed")
    p.add_argument("--agent-model", default=None, help="the agent's Claude model (default: harness.proposers.agent.DEFAULT_MODEL)")
    p.add_argument("--agent-max-tokens", type=int, default=16000, help="the agent's max output tokens per call (thinking included)")
    p.add_argument("--agent-temperature", type=float, default=None,
                   help="sampling temperature (default: the model's own; the newest models accept no other)")
    p.add_argument("--agent-budget-usd", type=float, default=None, help="stop asking the agent once it cost this much in the search")
    p.add_argument("--agent-batch", type=int, default=2, metavar="K", help="proposals asked of the agent per call")
    p.add_argument("--allow-patches", action="store_true",
                   help="the agent may also propose code patches to model/*.py (tried in git worktrees, never in your tree)")
    SlurmOptions.add_arguments(p, "rung")
    return p


# -----------------------------------------------------------------------------------------------------------
# Configuration of one search, resolved from flags and data files.

def resolve_tier(args) -> Tier:
    name = args.tier
    if name is None:
        import torch
        name = "gpu" if torch.cuda.is_available() else "cpu"
    tier = load_tier(name)
    rungs = list(tier.rungs)
    if args.rungs:
        try:
            depths = [int(d) for d in args.rungs.split(",") if d.strip()]
        except ValueError:
            raise SearchError(f"--rungs {args.rungs!r}: expected comma-separated depths, e.g. 1,2") from None
        if not depths or any(d < 1 for d in depths):
            raise SearchError(f"--rungs {args.rungs!r}: expected positive depths")
        template = [rungs[min(i, len(rungs) - 1)] for i in range(len(depths))]
        rungs = [replace(t, name=f"d{d}", depth=d) for t, d in zip(template, depths)]
        rungs[-1] = replace(rungs[-1], target=tier.rungs[-1].target)
    if args.time_budget is not None and args.flops_budget is not None:
        raise SearchError("--time-budget and --flops-budget: expected at most one budget override")
    for flag, value, unit in (("time_budget", args.time_budget, "seconds"), ("flops_budget", args.flops_budget, "FLOPs")):
        if value is None:
            continue
        if not value > 0:
            raise SearchError(f"--{flag.replace('_', '-')} {value}: expected a positive number of {unit}")
        cleared = {h: None for h in Rung.HORIZONS}
        rungs = [replace(r, **{**cleared, flag: value}, timeout_s=None) for r in rungs]
    if args.seeds is not None:
        if args.seeds < 1:
            raise SearchError(f"--seeds {args.seeds}: expected a positive integer")
        rungs = [replace(r, seeds=args.seeds) for r in rungs]
    statistics = tier.statistics
    if args.seeds is not None and statistics.max_seeds < args.seeds:
        statistics = replace(statistics, max_seeds=args.seeds)
    return replace(tier, rungs=tuple(rungs), statistics=statistics)


def read_enqueue_file(path: str, space: Space) -> list[Proposal]:
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SearchError(f"--enqueue {path}: cannot read a JSON list of proposals ({e})") from None
    if not isinstance(items, list):
        raise SearchError(f"--enqueue {path}: expected a JSON list of {{tweaks, rationale}} objects")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "tweaks" not in item:
            raise SearchError(f"--enqueue {path}: item {i}: expected an object with 'tweaks'")
        try:
            tweaks = space.validate(item["tweaks"])
        except SearchSpaceError as e:
            raise SearchError(f"--enqueue {path}: item {i}: {e}") from None
        out.append(Proposal(tweaks=tweaks, proposer=item.get("proposer", "manual"), rationale=item.get("rationale"),
                            extra={k: v for k, v in item.items() if k not in ("tweaks", "rationale", "proposer")}))
    return out


# -----------------------------------------------------------------------------------------------------------
# The search state and loop.

@dataclass
class Candidate:
    experiment: Experiment
    order: int
    rung: int = 0                      # index of the rung it is being tested at
    slots: int = 0                     # seed slots needed at that rung
    state: str = "active"              # active | rejected | passed
    trial: int | None = None
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # rung name -> last verdict
    told: bool = False


class Search:
    def __init__(self, *, store, search_id: int, name: str, tier: Tier, recipe, space: Space, proposer, executor: Executor,
                 runs_root: Path, data: str | None, tokenizer: str | None, trials: int, budget_hours: float | None,
                 parallel: int, code_version: str, seed_base: int = 0, throughput_share: float = 1.0,
                 every_rung: bool = False, out=sys.stdout):
        self.store, self.search_id, self.name, self.tier, self.recipe = store, search_id, name, tier, recipe
        self.space, self.proposer, self.runs_root = space, proposer, runs_root
        self.data, self.tokenizer, self.trials, self.budget_hours = data, tokenizer, trials, budget_hours
        self.parallel, self.code_version, self.out = parallel, code_version, out
        self.seed_base = seed_base
        self.threads_per_job = 1  # CPU threads each job trains with (for CPU-minute costs)
        self.every_rung = every_rung  # measure the baseline and nulls at every rung, not only the ones in use
        # A job's share of a rung's calibrated throughput (local CPU jobs running side by side share the cores).
        self.throughput_share = throughput_share
        self.baseline = Experiment(tweaks={}, tier=tier.name, recipe=recipe.name, code_version=code_version,
                                   proposer="baseline", name=f"baseline ({recipe.name})")
        # The search's own nulls, one per kind of change, on every rung in use: their paired differences with the
        # baseline are the noise a change of that kind that does nothing produces (harness/noise.py).
        null_tweaks = {"structural": {},  # another initialisation
                       "parametric": parametric_null_tweaks(NOISE_FLOOR_REPLICA, {**tier.baseline, **recipe.overrides})}
        self.nulls = {kind: Experiment(tweaks=null_tweaks[kind], tier=tier.name, recipe=recipe.name,
                                       code_version=code_version, proposer=NOISE_FLOOR_PROPOSER, replica=NOISE_FLOOR_REPLICA)
                      for kind in KINDS}
        self.candidates: dict[str, Candidate] = {}
        self.results: dict[tuple[str, str, int], Outcome | dict] = {}  # (experiment, rung, slot) -> outcome
        self.pool = JobPool(executor, store, search_id=search_id, throughput_share=throughput_share,
                            loaded_fraction=tier.loaded_fraction)
        self.spreads: dict[tuple[str, str], Spread] = {}  # (rung name, kind) -> null spread
        self.curves: dict[tuple[str, str, int], list[tuple[float, float]]] = {}  # learning curves read from the store
        self.compute_s = 0.0
        self.retrying: set[tuple[str, str, int]] = set()  # run keys that failed for the machine, to train again
        self.duplicates_in_a_row = 0
        self.proposals_exhausted = False
        self.failed: str | None = None

    # --- small helpers ---------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=self.out, flush=True)

    def experiment_of(self, experiment_id: str) -> Experiment:
        if experiment_id == self.baseline.id:
            return self.baseline
        for null in self.nulls.values():
            if experiment_id == null.id:
                return null
        return self.candidates[experiment_id].experiment

    def is_own(self, experiment_id: str) -> bool:
        """The baseline or one of the search's own nulls (not a proposal)."""
        return experiment_id == self.baseline.id or any(experiment_id == n.id for n in self.nulls.values())

    def result(self, experiment: Experiment, rung: Rung, slot: int):
        return self.results.get((experiment.id, rung.name, slot))

    def val(self, r) -> float | None:
        if r is None:
            return None
        return r.val_bpb if isinstance(r, Outcome) else r.get("val_bpb")

    def status(self, r) -> str | None:
        if r is None:
            return None
        return r.status if isinstance(r, Outcome) else r.get("status")

    def seed(self, exp: Experiment, slot: int) -> int:
        return exp.seed(slot, self.seed_base)

    @property
    def proposals_made(self) -> int:
        return len(self.candidates)

    # --- restore a previous session's state from the database --------------------------------------------------
    def restore(self) -> None:
        self.store.record_experiment(self.baseline.record(), search_id=self.search_id)
        for null in self.nulls.values():
            self.store.record_experiment(null.record())  # not a proposal of the search: no search link
        rows = sorted(self.store.experiments(search_id=self.search_id), key=lambda r: str(r.get("created_at") or ""))
        for row in rows:
            if self.is_own(row["id"]):
                continue
            extra = dict(row.get("extra") or {})
            exp = Experiment(tweaks=row["tweaks"] or {}, tier=extra.pop("tier", self.tier.name),
                             recipe=extra.pop("recipe", self.recipe.name), code_version=row.get("code_version") or "unknown",
                             proposer=row.get("proposer") or "manual", rationale=row.get("rationale"), name=row.get("name"),
                             parent_id=row.get("parent_id"), patch=row.get("patch"), replica=extra.pop("replica", 0) or 0,
                             extra=extra)
            if exp.id != row["id"]:
                continue  # made by other code (another code version): not part of this search's comparisons
            self.candidates[exp.id] = Candidate(exp, order=len(self.candidates), slots=self.tier.rungs[0].seeds)
        for d in sorted(self.store.decisions(search_id=self.search_id), key=lambda d: d["id"]):
            cand = self.candidates.get(d["experiment_id"])
            if cand is None or d["from_rung"] not in {r.name for r in self.tier.rungs}:
                continue
            cand.verdicts[d["from_rung"]] = restored_verdict(d, cand.experiment, self.seed_base)
            self.apply_verdict(cand, d["from_rung"], d["verdict"], d.get("n") or 0)
        for run in self.store.runs(search_id=self.search_id):
            known = run["experiment_id"] in self.candidates or self.is_own(run["experiment_id"])
            if run["status"] == "running" or not known:
                continue
            if failed_for_the_machine(run["status"], run.get("reason")):
                self.retrying.add((run["experiment_id"], run["rung"], run["seed"]))  # trained again: see submit
                continue
            exp = self.experiment_of(run["experiment_id"])
            self.results[(exp.id, run["rung"], exp.slot(run["seed"], self.seed_base))] = run
            if run.get("started_at") and run.get("finished_at"):
                self.compute_s += (run["finished_at"] - run["started_at"]).total_seconds() * (run.get("world_size") or 1)
        for rung in self.tier.rungs:
            self.update_null_spreads(rung, quiet=True)
        for cand in self.candidates.values():
            if cand.rung > 0 or cand.state != "active":
                cand.told = True
                self.tell(cand)
        if self.candidates or self.results:
            done = sum(1 for c in self.candidates.values() if c.state != "active")
            self.say(f"resuming search {self.name!r}: {len(self.candidates)} proposals ({done} decided), "
                     f"{len(self.results)} finished runs")

    def apply_verdict(self, cand: Candidate, rung_name: str, verdict: str, n: int) -> None:
        index = next(i for i, r in enumerate(self.tier.rungs) if r.name == rung_name)
        if verdict == "more_seeds":
            cand.rung, cand.slots = index, max(cand.slots, n + 1)
        elif verdict == "reject":
            cand.rung, cand.state = index, "rejected"
        elif index + 1 < len(self.tier.rungs):
            cand.rung, cand.slots = index + 1, self.tier.rungs[index + 1].seeds
        else:
            cand.rung, cand.state = index, "passed"

    # --- what needs running -------------------------------------------------------------------------------
    def baseline_slots(self, index: int) -> int:
        # Rung 0's baseline also measures the nulls (every rung's, when calibrating a tier).
        need = self.tier.rungs[index].seeds if (index == 0 or self.every_rung) else 0
        for c in self.candidates.values():
            if c.rung == index and c.state == "active":
                need = max(need, c.slots)
        return need

    def null_slots(self, index: int, null: Experiment) -> int:
        """A rung's nulls run on its first seed slots; a null that is part of a control (the structural one) also
        on every slot a candidate judged against that control uses there."""
        need = self.tier.rungs[index].seeds
        for c in self.candidates.values():
            if c.rung == index and c.state == "active" and null in self.control(c.experiment):
                need = max(need, c.slots)
        return need

    def needed(self) -> list[tuple[Experiment, int, int]]:
        """(experiment, rung index, slot) still to run, most urgent first: the baseline and its nulls, then the
        highest rungs."""
        out = []
        for index in range(len(self.tier.rungs)):
            for slot in range(self.baseline_slots(index)):
                out.append((self.baseline, index, slot))
            if self.baseline_slots(index):  # the nulls of every rung in use
                for slot in range(max(self.null_slots(index, null) for null in self.nulls.values())):
                    for null in self.nulls.values():
                        if slot < self.null_slots(index, null):
                            out.append((null, index, slot))
        for cand in sorted(self.candidates.values(), key=lambda c: (-c.rung, c.order)):
            if cand.state == "active":
                for slot in range(cand.slots):
                    out.append((cand.experiment, cand.rung, slot))
        return [(e, i, s) for e, i, s in out
                if (e.id, self.tier.rungs[i].name, s) not in self.results and (e.id, self.tier.rungs[i].name, s) not in self.pool]

    def make_job(self, exp: Experiment, index: int, slot: int) -> Job:
        rung = self.tier.rungs[index]
        seed = self.seed(exp, slot)
        return Job(experiment_id=exp.id, rung=rung, slot=slot, seed=seed,
                   run_dir=self.runs_root / self.name / exp.id / rung.name / f"seed{seed}",
                   train_tier=self.tier.train_tier, overrides=exp.overrides(self.tier.baseline, self.recipe.overrides),
                   data=self.data, tokenizer=self.tokenizer, timeout_s=job_timeout(rung),
                   workdir=patch_worktree(exp), data_seed=exp.data_seed(slot, self.seed_base))

    def submit(self, exp: Experiment, index: int, slot: int) -> None:
        job = self.make_job(exp, index, slot)
        self.pool.submit(job, reopen=job.key in self.retrying)
        self.retrying.discard(job.key)
        self.say(f"start {job.rung.name} seed {job.seed} of {self.label(exp)}")

    def label(self, exp: Experiment) -> str:
        return f"{exp.id[:8]} ({exp.describe()})"

    # --- proposals -------------------------------------------------------------------------------------------
    def out_of_budget(self) -> bool:
        return self.budget_hours is not None and self.compute_s / 3600 >= self.budget_hours

    def want_proposal(self) -> bool:
        if self.failed or self.proposals_exhausted or self.proposals_made >= self.trials or self.out_of_budget():
            return False
        return len(self.pool) + len(self.needed()) < self.parallel

    def propose(self) -> None:
        for proposal in self.proposer.propose(1):
            exp = Experiment(tweaks=proposal.tweaks, tier=self.tier.name, recipe=self.recipe.name,
                             code_version=self.code_version, proposer=proposal.proposer, rationale=proposal.rationale,
                             patch=proposal.patch, replica=proposal.replica, extra=dict(proposal.extra))
            if proposal.trial is not None and hasattr(self.proposer, "link"):
                self.proposer.link(proposal.trial, exp.id)
            if self.is_own(exp.id) or exp.id in self.candidates:
                self.duplicates_in_a_row += 1
                self.say(f"proposal {exp.describe()} duplicates {exp.id[:8]}: dropped")
                self.record_rejected(proposal, f"duplicate of experiment {exp.id} (already in this search)")
                existing = self.candidates.get(exp.id)
                if existing is not None and existing.told:
                    self.tell(existing)
                elif exp.id == self.baseline.id:
                    self.proposer.observe(exp.id, 0.0)
                if self.duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
                    self.proposals_exhausted = True
                    self.say(f"the proposer returned {MAX_DUPLICATES_IN_A_ROW} duplicates in a row: no more proposals")
                continue
            self.duplicates_in_a_row = 0
            self.store.record_experiment(exp.record(), search_id=self.search_id)
            cand = Candidate(exp, order=len(self.candidates), slots=self.tier.rungs[0].seeds, trial=proposal.trial)
            self.candidates[exp.id] = cand
            why = f": {proposal.rationale}" if proposal.rationale else ""
            self.say(f"trial {self.proposals_made}/{self.trials} from {proposal.proposer} ({exp.kind}): {self.label(exp)}{why}")
        if not self.proposals_made and not self.proposer_can_continue():
            self.proposals_exhausted = True

    def record_rejected(self, proposal: Proposal, reason: str) -> None:
        from leaderboard import RejectedProposal
        payload = {"tweaks": proposal.tweaks, "rationale": proposal.rationale, **proposal.extra}
        if proposal.patch:
            payload["patch"] = proposal.patch
        self.store.record_rejected_proposal(RejectedProposal(search_id=self.search_id, proposer=proposal.proposer,
                                                             reason=reason, payload=payload))

    def proposer_can_continue(self) -> bool:
        return not getattr(self.proposer, "exhausted", False)

    def tell(self, cand: Candidate) -> None:
        """Tell the proposer how the candidate did at the first rung (mean paired difference; None = failed)."""
        first = self.tier.rungs[0].name
        v = cand.verdicts.get(first)
        if v is None:
            decisions = self.store.decisions(experiment_id=cand.experiment.id)
            rows = [d for d in decisions if d["from_rung"] == first and d["verdict"] != "more_seeds"]
            value = rows[-1]["mean_delta"] if rows else None
        else:
            value = v.mean_delta if not v.reason.startswith("a candidate run failed") else None
        self.proposer.observe(cand.experiment.id, value)

    # --- results and decisions ---------------------------------------------------------------------------------
    def collect(self) -> int:
        finished = self.pool.collect()
        for f in finished:
            self.take(f)
        return len(finished)

    def take(self, f: Finished) -> None:
        """A finished run into the search's state (or, failed for the machine, the reason to stop)."""
        job, outcome = f.job, f.outcome
        exp = self.experiment_of(job.experiment_id)
        if failed_for_the_machine(outcome.status, outcome.reason):
            # A full or read-only disk fails every run after it too, whatever its change: stop, decide nothing on
            # it, and let a rerun (after the disk is fixed) train it again from its checkpoint.
            self.failed = (f"{job.rung.name} seed {job.seed} of {self.label(exp)} failed for the machine, not its "
                           f"change: {outcome.reason}; fix that and rerun the same command to resume")
            self.say(f"done  {job.rung.name} seed {job.seed}: {outcome.status}: {outcome.reason}")
            return
        self.results[(job.experiment_id, job.rung.name, job.slot)] = outcome
        self.compute_s += f.wall_s * job.rung.devices
        base = None if exp is self.baseline else self.val(self.result(self.baseline, job.rung, job.slot))
        delta = f" (d {outcome.val_bpb - base:+.4f} vs baseline)" if (outcome.ok and base is not None) else ""
        what = f"val_bpb {outcome.val_bpb:.4f}{delta}" if outcome.ok else f"{outcome.status}: {outcome.reason}"
        if outcome.loaded:
            stands = ("a time-budgeted result from a loaded machine is noise" if job.rung.time_budget is not None
                      else "the result stands: the rung is budgeted in compute")
            what += f" | LOADED: {outcome.tok_per_s:,.0f} tok/s against a calibrated {f.expected_tok_per_s:,.0f} ({stands})"
        self.say(f"done  {job.rung.name} seed {job.seed} of {self.label(exp)}: {what} | {self.progress()}")
        if self.is_own(exp.id):
            if exp is self.baseline and not outcome.ok:
                self.failed = (f"the baseline failed at {job.rung.name} seed {job.seed} ({outcome.status}: "
                               f"{outcome.reason}); see {job.run_dir / 'train.log'}")
            self.update_null_spreads(job.rung)

    def control(self, exp: Experiment) -> list[Experiment]:
        """The baseline-recipe runs a change is compared with on its slot (harness/noise.py, CONTROL_INITS): the
        baseline alone for a parametric change and for the search's own nulls (whose differences with it are the
        null spreads); the baseline and the structural null, two inits, for a structural change."""
        if self.is_own(exp.id) or CONTROL_INITS[exp.kind] == 1:
            return [self.baseline]
        return [self.baseline, self.nulls["structural"]][:CONTROL_INITS[exp.kind]]

    def control_values(self, exp: Experiment, rung: Rung, slots) -> dict[int, float]:
        """slot -> the control's val_bpb for `exp`: the mean of its control runs there that finished ok, on the
        slots where the baseline did and none of them is still to finish (a failed structural null leaves the
        baseline alone)."""
        out = {}
        for slot in slots:
            runs = [self.result(c, rung, slot) for c in self.control(exp)]
            if any(r is None for r in runs) or self.status(runs[0]) != "ok":
                continue
            out[slot] = statistics.fmean(self.val(r) for r in runs if self.status(r) == "ok")
        return out

    def paired_deltas(self, exp: Experiment, rung: Rung, slots=None) -> dict[int, float]:
        """slot -> val_bpb(exp) - val_bpb(its control), over the slots where both are known."""
        mine = {slot: self.val(r) for (eid, rname, slot), r in self.results.items()
                if eid == exp.id and rname == rung.name and (slots is None or slot in slots) and self.status(r) == "ok"}
        control = self.control_values(exp, rung, sorted(mine))
        return {slot: mine[slot] - control[slot] for slot in sorted(mine) if slot in control}

    def null_spread(self, rung: Rung, kind: str) -> Spread | None:
        """The spread of a change of `kind` that does nothing against its control at the rung: the floor of its
        decisions (harness/noise.py, control_spread)."""
        return control_spread(self.spreads.get((rung.name, kind)), kind)

    def update_null_spreads(self, rung: Rung, quiet: bool = False) -> None:
        """The rung's null spread of each kind: paired differences between that null and the baseline."""
        for kind, null in self.nulls.items():
            spread = Spread.of_null(list(self.paired_deltas(null, rung, range(rung.seeds)).values()))
            known = self.spreads.get((rung.name, kind))
            if spread is None or (known is not None and known.df == spread.df):
                continue
            self.spreads[(rung.name, kind)] = spread
            self.store.record_null_spread(self.name, rung.name, kind, spread.sd, int(spread.df), self.baseline.id)
            if not quiet:
                what = "another init" if kind == "structural" else null.describe_tweaks()
                self.say(f"{kind} null spread at {rung.name}: {spread.sd:.5f} bpb (paired differences of the baseline "
                         f"and itself with {what}, {int(spread.df)} seed{'s' if spread.df != 1 else ''})")

    def nulls_pending(self, rung: Rung) -> bool:
        """Are null runs of this rung still to finish? Decisions wait for them, so each uses its kind's spread."""
        for slot in range(rung.seeds):
            for exp in (self.baseline, *self.nulls.values()):
                if self.result(exp, rung, slot) is None:
                    return True
        return False

    def prior(self, rung: Rung, kind: str, exclude: Experiment | None = None):
        """What the rung's units of a kind say about the spread of its paired differences: its null and every other
        candidate of that kind with two or more pairs there (harness/noise.py)."""
        null = self.null_spread(rung, kind)
        units = [null] if null is not None else []
        for c in self.candidates.values():
            if c.experiment is exclude or c.experiment.kind != kind:
                continue
            spread = Spread.of_sample(list(self.paired_deltas(c.experiment, rung).values()))
            if spread is not None:
                units.append(spread)
        return fit_prior(units)

    def decide_ready(self) -> None:
        if self.failed:
            return  # nothing is decided from a search that has stopped for a failure
        for cand in sorted(self.candidates.values(), key=lambda c: c.order):
            if cand.state != "active":
                continue
            rung = self.tier.rungs[cand.rung]
            slots = range(cand.slots)
            mine = {s: self.result(cand.experiment, rung, s) for s in slots}
            failures = [f"seed {self.seed(cand.experiment, s)} {self.status(r)}" for s, r in mine.items()
                        if r is not None and self.status(r) != "ok"]
            control = [self.result(c, rung, s) for c in self.control(cand.experiment) for s in slots]
            if not failures and (any(r is None for r in [*mine.values(), *control]) or self.nulls_pending(rung)):
                continue  # still waiting for a run of the candidate, of its control, or of a null
            if not failures and any(self.status(self.result(self.baseline, rung, s)) != "ok" for s in slots):
                continue  # the baseline failed: the search stops (see collect)
            kind = cand.experiment.kind
            verdict = decide({s: self.val(r) for s, r in mine.items() if r is not None},
                             self.control_values(cand.experiment, rung, slots),
                             self.tier.statistics, first_n=rung.seeds, kind=kind, null=self.null_spread(rung, kind),
                             prior=self.prior(rung, kind, exclude=cand.experiment), failed="; ".join(failures) or None)
            if verdict.deltas:
                verdict.multiplier = self.multiplier(cand.experiment, rung, list(verdict.deltas))
            self.record_verdict(cand, rung, verdict)

    def curve(self, exp: Experiment, rung: Rung, slot: int) -> list[tuple[float, float]]:
        """A run's learning curve: (training FLOPs so far, val_bpb) at each evaluation."""
        r = self.result(exp, rung, slot)
        if isinstance(r, Outcome):
            result, points = r.result or {}, r.points
        else:
            key = (exp.id, rung.name, slot)
            if key not in self.curves:
                self.curves[key] = [(p["tokens"], p["val_bpb"]) for p in self.store.metric_points([r["id"]])
                                    if p.get("tokens") is not None and p.get("val_bpb") is not None]
            result, points = r, [{"tokens": t, "val_bpb": v} for t, v in self.curves[key]]
        per_token = (result.get("flops") or 0) / result["tokens"] if result.get("tokens") else 0
        return [(p["tokens"] * per_token, p["val_bpb"]) for p in points
                if p.get("tokens") is not None and p.get("val_bpb") is not None]

    def multiplier(self, exp: Experiment, rung: Rung, slots: list[int]) -> ComputeMultiplier:
        """The candidate's effect as a compute multiplier against its control's mean learning curve on the same
        slots (harness/compute_multiplier.py)."""
        curves = [dict(self.curve(c, rung, s)) for c in self.control(exp) for s in slots
                  if self.status(self.result(c, rung, s)) == "ok"]
        common = set.intersection(*(set(c) for c in curves)) if curves else set()
        if not common:  # the seeds' evaluations fall at different compute: average by evaluation index instead
            lists = [sorted(c.items()) for c in curves]
            size = min((len(x) for x in lists), default=0)
            mean_curve = [(statistics.fmean(x[i][0] for x in lists), statistics.fmean(x[i][1] for x in lists)) for i in range(size)]
        else:
            mean_curve = [(c, statistics.fmean(x[c] for x in curves)) for c in sorted(common)]
        finals = [self.result(exp, rung, s) for s in slots]
        flops = [(self.status(r) == "ok" and ((r.result or {}) if isinstance(r, Outcome) else r).get("flops")) for r in finals]
        vals = [self.val(r) for r in finals]
        if not all(flops) or any(v is None for v in vals):
            return ComputeMultiplier(None, False)
        return compute_multiplier(mean_curve, statistics.fmean(vals), statistics.fmean(flops))

    def record_verdict(self, cand: Candidate, rung: Rung, v: Verdict) -> None:
        from leaderboard import Decision
        index = self.tier.rungs.index(rung)
        to_rung = self.tier.rungs[index + 1].name if (v.verdict == "promote" and index + 1 < len(self.tier.rungs)) else None
        null = self.null_spread(rung, v.kind) if v.kind else None
        stats = self.tier.statistics
        self.store.record_decision(Decision(
            experiment_id=cand.experiment.id, from_rung=rung.name, to_rung=to_rung, verdict=v.verdict,
            search_id=self.search_id, baseline_experiment_id=self.baseline.id,
            deltas={str(self.seed(cand.experiment, s)): d for s, d in v.deltas.items()}, mean_delta=v.mean_delta,
            std_error=v.std_error, p_value=v.p_value, n=v.n, alpha=v.alpha, min_effect=stats.min_effect,
            noise_floor=null.sd if null else None, kind=v.kind, spread=v.test.sd if v.test else None,
            df=v.test.df if v.test else None, mde=v.mde,
            compute_multiplier=v.multiplier.value if v.multiplier else None,
            multiplier_extrapolated=v.multiplier.extrapolated if v.multiplier and v.multiplier.value is not None else None))
        cand.verdicts[rung.name] = v
        self.apply_verdict(cand, rung.name, v.verdict, v.n)
        mean = f"mean d {v.mean_delta:+.4f}" if v.mean_delta is not None else "no paired result"
        se = f" +- {v.std_error:.4f}" if v.std_error else ""
        power = f", {v.kind} MDE {v.mde:.4f}" if v.mde is not None and math.isfinite(v.mde) else (f", {v.kind}" if v.kind else "")
        mult = f", compute {v.multiplier.describe()}" if v.multiplier and v.multiplier.value is not None else ""
        where = {"promote": f"PROMOTED to {to_rung}" if to_rung else ("PASSED the top rung" if index else "PASSED (the ladder's only rung)"), "reject": "rejected",
                 "more_seeds": "borderline, one more seed"}[v.verdict]
        self.say(f"decide {rung.name} {self.label(cand.experiment)}: {where} ({mean}{se}, n={v.n}{power}{mult}; {v.reason})")
        if index == 0 and v.verdict != "more_seeds" and not cand.told:
            cand.told = True
            self.tell(cand)

    def progress(self) -> str:
        decided = sum(1 for c in self.candidates.values() if c.state != "active")
        promoted = sum(1 for c in self.candidates.values() if c.rung > 0 or c.state == "passed")
        best = self.best()
        best_text = f" | best {best.experiment_id[:8]} d {best.mean_delta:+.4f} at {best.rung}" if best and best.beats_baseline() else ""
        return (f"trials {self.proposals_made}/{self.trials} ({decided} decided, {promoted} promoted) | running "
                f"{len(self.pool)}, queued {len(self.needed())}{best_text} | compute {self.compute_s / 3600:.2f} h")

    def best(self) -> Standing | None:
        """The search's best experiment so far, by the one definition of best (leaderboard/ranking.py): furthest up
        the ladder, then the lowest mean paired difference there. Nulls are never the best."""
        decisions = [{"experiment_id": c.experiment.id, "from_rung": rung, "mean_delta": v.mean_delta}
                     for c in self.candidates.values() if not c.experiment.replica for rung, v in c.verdicts.items()]
        return ranking.best(decisions, [r.name for r in self.tier.rungs])

    # --- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> str:
        try:
            with terminate_as_interrupt():
                return self.loop()
        except KeyboardInterrupt:
            self.say("interrupted: stopping the running jobs (each saves a checkpoint first)")
            self.stop_running()
            self.say("stopped; rerun the same command to resume")
            return "interrupted"

    def loop(self) -> str:
        """Propose, run and decide until the trials, the budget or the proposals run out."""
        while True:
            self.decide_ready()
            while self.want_proposal():
                before = self.proposals_made
                self.propose()
                if self.proposals_made == before and (self.proposals_exhausted or not self.proposer_can_continue()):
                    self.proposals_exhausted = True
                    break
                self.decide_ready()
            if self.failed:
                break
            for exp, index, slot in self.needed()[: max(0, self.parallel - len(self.pool))]:
                self.submit(exp, index, slot)
            if not self.pool:
                if not self.needed() and not self.want_proposal():
                    break
                continue
            while not self.collect():
                time.sleep(POLL_S)
        if self.failed:
            self.stop_running()
            self.say(f"search stopped: {self.failed}")
            return "failed"
        return "finished"

    def stop_running(self) -> None:
        self.pool.stop_all()

    # --- the end -----------------------------------------------------------------------------------------------
    def rung_mde(self, rung: Rung, kind: str, n: int) -> float | None:
        """The minimum detectable effect at a rung for a change of `kind` with n seeds, from what the rung has
        measured: the spread the test would use for a candidate as noisy as the kind's typical unit."""
        null = self.null_spread(rung, kind)
        prior = self.prior(rung, kind)
        stats = self.tier.statistics
        if prior is not None:
            sd, df = math.sqrt(prior.var), min(prior.df + n - 1, prior.pooled_df + n - 1)
        elif null is not None:
            sd, df = null.sd, n - 1
        else:
            return None
        if null is not None and null.sd > sd:
            sd, df = null.sd, max(df, null.df)
        alpha = per_look_alpha(stats.alpha, rung.seeds, stats.max_seeds, stats.futility)
        return mde(sd, n, df, alpha, stats.power, stats.min_effect)

    def summary(self, status: str) -> str:
        stats = self.tier.statistics
        lines = [f"\nsearch {self.name!r} {status}: {self.proposals_made} proposals, "
                 f"compute {self.compute_s / 3600:.2f} h, database {self.store.url_text}"]
        for rung in self.tier.rungs:
            base = [self.val(r) for (e, n, _), r in self.results.items() if e == self.baseline.id and n == rung.name and self.status(r) == "ok"]
            if not base:
                continue
            lines.append(f"  baseline at {rung.name}: val_bpb {sum(base) / len(base):.4f} over {len(base)} seeds")
            for kind in KINDS:
                null = self.spreads.get((rung.name, kind))
                if null is None:
                    continue
                mdes = ", ".join(f"{n} seeds {m:.4f}" for n in sorted({rung.seeds, stats.max_seeds})
                                 if (m := self.rung_mde(rung, kind, n)) is not None)
                lines.append(f"    {kind:10} null spread {null.sd:.5f} ({int(null.df)} pairs); MDE at {stats.power:.0%} power: {mdes}")
        lines.append(f"  {'experiment':10} {'kind':10} {'furthest':8} {'state':8} {'mean d':>8} {'p':>6} {'MDE':>7} "
                     f"{'compute':>9}  change")
        for c in sorted(self.candidates.values(), key=lambda c: c.order):
            rung = self.tier.rungs[c.rung].name
            v = c.verdicts.get(rung) or next((c.verdicts[r.name] for r in reversed(self.tier.rungs) if r.name in c.verdicts), None)
            mean = f"{v.mean_delta:+.4f}" if v and v.mean_delta is not None else "-"
            p = f"{v.p_value:.2g}" if v and v.p_value is not None else "-"
            m = f"{v.mde:.4f}" if v and v.mde is not None and math.isfinite(v.mde) else "-"
            mult = (f"x{v.multiplier.value:.3g}" + ("*" if v.multiplier.extrapolated else "")
                    if v and v.multiplier and v.multiplier.value is not None else "-")
            lines.append(f"  {c.experiment.id[:10]} {c.experiment.kind:10} {rung:8} {c.state:8} {mean:>8} {p:>6} {m:>7} "
                         f"{mult:>9}  {c.experiment.describe()}")
        lines.append("  (mean d: candidate - control val_bpb, negative is better; the control is the baseline at the same seed, "
                     "for a structural change the mean of the baseline and the structural null, two inits; MDE: the improvement the test promotes "
                     f"with {stats.power:.0%} power at the seeds it used; compute: baseline compute to reach the candidate's "
                     "val_bpb over the candidate's, * = extrapolated past the baseline's curve)")
        real = [c for c in self.candidates.values() if not c.experiment.replica]
        promoted = [c for c in real if c.rung > 0 or c.state == "passed"]
        lines.append(f"  promotions: {len(promoted)} of {len(real)}")
        best = self.best()
        if best:
            what = self.experiment_of(best.experiment_id).describe()
            if best.beats_baseline():
                lines.append(f"  best: {best.experiment_id} ({what}), mean d {best.mean_delta:+.4f} at {best.rung}")
            else:
                lines.append(f"  best: none beat the baseline (closest: {best.experiment_id[:12]}, {what}, mean d "
                             f"{best.mean_delta:+.4f} at {best.rung})")
        for c in real:
            if c.state == "passed" and len(self.tier.rungs) > 1:
                lines.append(f"  passed the ladder: {c.experiment.id}. Submit it as a speedrun:\n"
                             f"    python -m harness.speedrun --track {self.tier.track or self.tier.name} --experiment {c.experiment.id} --seeds 3")
        if any(c.experiment.replica for c in self.candidates.values()):
            lines.extend(self.aa_report())
        return "\n".join(lines)

    def aa_outcome(self, kind: str) -> tuple[int, int]:
        """(promoted, decided): how many of the search's A/A nulls of `kind` the first rung promoted, of those it
        decided."""
        nulls = [c for c in self.candidates.values() if c.experiment.null_kind == kind]
        decided = [c for c in nulls if c.state != "active" or c.rung > 0]
        return sum(1 for c in decided if c.rung > 0 or c.state == "passed"), len(decided)

    def aa_report(self) -> list[str]:
        """The false-promotion rate per kind of null, with its one-sided 95% upper confidence bound."""
        first = self.tier.rungs[0].name
        lines = [f"  A/A calibration at {first} (alpha {self.tier.statistics.alpha}, min effect "
                 f"{self.tier.statistics.min_effect}, up to {self.tier.statistics.max_seeds} seeds, seeds from {self.seed_base}):"]
        for kind in KINDS:
            if not any(c.experiment.null_kind == kind for c in self.candidates.values()):
                continue
            k, n = self.aa_outcome(kind)
            rate = k / n if n else float("nan")
            lines.append(f"    {kind:10} {k} of {n} null proposals promoted: false-promotion rate {rate:.2f} "
                         f"(95% upper bound {upper_bound(k, n):.2f})")
        offset = self.control_offset(self.tier.rungs[0])
        if offset is not None:
            value, z, slots = offset
            lines.append(f"    the structural control sits {value:+.4f} bpb from the mean of the structural nulls' own inits on "
                         f"its first {slots} slots (z = {z:+.1f}). Every structural null here is judged against that one "
                         "control, so their outcomes are not independent and the bound above, which assumes they are, is "
                         "too narrow; a control drawn high (z > 0) promotes more of them. --aa-controls spreads the nulls "
                         "over independent controls.")
        return lines

    def control_offset(self, rung: Rung) -> tuple[float, float, int] | None:
        """(offset, z, slots): how far the structural control of the rung's first slots sits from the mean of the A/A
        structural nulls' runs there (each null is another init of the baseline recipe), in bpb and in standard
        errors of that difference (the control's k inits and the nulls' m inits per slot, from the nulls' spread).
        None without two nulls' runs on a slot."""
        nulls = [c.experiment for c in self.candidates.values() if c.experiment.null_kind == "structural"]
        if not nulls:
            return None
        k = CONTROL_INITS["structural"]
        offsets, variances = [], []
        for slot in range(rung.seeds):
            inits = [self.val(r) for null in nulls if self.status(r := self.result(null, rung, slot)) == "ok"]
            control = self.control_values(nulls[0], rung, [slot])
            if len(inits) < 2 or slot not in control:
                continue
            offsets.append(control[slot] - statistics.fmean(inits))
            variances.append(statistics.variance(inits) * (1 / k + 1 / len(inits)))
        if not offsets or not any(variances):
            return None
        value = statistics.fmean(offsets)
        return value, value / math.sqrt(sum(variances) / len(offsets) ** 2), len(offsets)


def upper_bound(k: int, n: int) -> float:
    """The one-sided 95% upper confidence bound on a rate seen k times in n independent trials (Clopper-Pearson)."""
    from scipy import stats as scipy_stats
    if not n:
        return float("nan")
    return 1.0 if k >= n else float(scipy_stats.beta.ppf(0.95, k + 1, n - k))


def aa_report_over_controls(searches: list[Search]) -> str:
    """The false-promotion rate of each kind over A/A searches that each have a control of their own (--aa-controls).
    Two bounds: one that takes every null as independent (too narrow if nulls sharing a control move together), and
    one from the controls alone: the fraction of controls with at least one promotion is at least any one null's
    chance of promotion, and the controls are independent, so its bound holds whatever the nulls of one control do."""
    first, stats = searches[0].tier.rungs[0].name, searches[0].tier.statistics
    bases = ", ".join(str(s.seed_base) for s in searches)
    lines = [f"\nA/A calibration over {len(searches)} independent controls at {first} (seed bases {bases}; alpha "
             f"{stats.alpha}, min effect {stats.min_effect}, up to {stats.max_seeds} seeds):"]
    for kind in KINDS:
        outcomes = [s.aa_outcome(kind) for s in searches]
        k, n = sum(o[0] for o in outcomes), sum(o[1] for o in outcomes)
        if not n:
            continue
        hit, controls = sum(1 for o in outcomes if o[0]), sum(1 for o in outcomes if o[1])
        per_control = " ".join(f"{a}/{b}" for a, b in outcomes)
        lines.append(f"  {kind:10} {k} of {n} null proposals promoted (per control: {per_control}): false-promotion rate "
                     f"{k / n:.2f}; 95% upper bound {upper_bound(k, n):.2f} taking the nulls as independent, "
                     f"{upper_bound(hit, controls):.2f} from the controls alone ({hit} of {controls} promoted any)")
    return "\n".join(lines)


def restored_verdict(row: dict, exp: Experiment, seed_base: int) -> Verdict:
    """A decision recorded by an earlier session, as the verdict the summary and the proposer read."""
    from harness.noise import PairedTest
    deltas = {exp.slot(int(seed), seed_base): v for seed, v in (row.get("deltas") or {}).items()}
    test = PairedTest(row.get("mean_delta") or 0.0, row.get("spread"), row.get("df") or 0.0, row.get("std_error"),
                      row.get("p_value"), row.get("mde"), False, False) if row.get("mde") is not None else None
    multiplier = (ComputeMultiplier(row["compute_multiplier"], bool(row.get("multiplier_extrapolated")))
                  if row.get("compute_multiplier") is not None else None)
    return Verdict(row["verdict"], deltas, row.get("mean_delta"), row.get("std_error"), row.get("p_value"),
                   row.get("n") or 0, "(from the previous session)", row.get("kind"), test, multiplier)


# -----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (BadInput, CatalogError, SearchSpaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SearchFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the search's own loop, which handles it (setup, tokenizer training)
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def run(args) -> int:
    if args.aa:
        return run_aa(args)
    status, search = execute(args)
    print(search.summary(status), flush=True)
    return 0 if status == "finished" else 1


def run_aa(args) -> int:
    """`--aa N`: the nulls of each kind split over G independent controls (--aa-controls; default one per two nulls
    of each kind). Every null of one search is judged against that search's baseline (and structural null): one
    control drawn high or low moves all of them together, so one search's count is one draw of its control. Each
    control is therefore a search of its own, `NAME-iofG`, on a seed base max_seeds above the previous one (its
    own inits and data orders), with ~N/G nulls of each kind numbered on from the previous control's. A control
    costs three runs a seed slot (the baseline and the two search nulls), a null one: G = N costs ~2.5 runs a null
    per slot, G = N/2 ~1.75. Rerunning the command resumes each search in turn."""
    if args.aa < 1:
        raise SearchError(f"--aa {args.aa}: expected a positive number of null proposals")
    controls = args.aa_controls if args.aa_controls is not None else math.ceil(args.aa / 2)
    if not 1 <= controls <= args.aa:
        raise SearchError(f"--aa-controls {controls}: expected 1 to {args.aa} (the --aa nulls of each kind are split "
                          "over the controls)")
    if controls == 1:
        status, search = execute(args)
        print(search.summary(status), flush=True)
        return 0 if status == "finished" else 1
    tier = resolve_tier(args)
    name = search_name(args, tier)
    searches, first_replica = [], 1
    for i in range(controls):
        share = args.aa // controls + (1 if i < args.aa % controls else 0)
        sub = Namespace(**{**vars(args), "aa": share, "aa_controls": 1, "name": f"{name}-{i + 1}of{controls}",
                           "seed_base": args.seed_base + i * tier.statistics.max_seeds})
        status, search = execute(sub, first_replica=first_replica)
        print(search.summary(status), flush=True)
        if status != "finished":
            return 1
        searches.append(search)
        first_replica += share
    print(aa_report_over_controls(searches), flush=True)
    return 0


def search_name(args, tier: Tier, calibrate: bool = False) -> str:
    """--name, or TIER-SPACE (TIER-aa for A/A, TIER-calibration), with -seedsK for a seed base K."""
    kind = "calibration" if calibrate else "aa" if args.aa else args.space
    return args.name or f"{tier.name}-{kind}" + (f"-seeds{args.seed_base}" if args.seed_base else "")


def execute(args, calibrate: bool = False, first_replica: int = 1) -> tuple[str, Search]:
    """Run the search the flags describe, to its end; (status, the search). With `calibrate`, only the baseline and
    its nulls at every rung (harness/calibrate.py). An A/A search numbers its nulls from `first_replica`."""
    from leaderboard import LeaderboardError, Store
    from model.home import nanoresearch_home
    from model.provenance import code_version

    for flag in ("trials", "parallel"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SearchError(f"--{flag} {getattr(args, flag)}: expected a positive integer")
    if args.aa is not None and args.aa < 1:
        raise SearchError(f"--aa {args.aa}: expected a positive number of null proposals")
    if args.aa_controls is not None and not args.aa:
        raise SearchError(f"--aa-controls {args.aa_controls}: only with --aa N (it splits the A/A nulls over controls)")
    if args.budget_hours is not None and not args.budget_hours > 0:
        raise SearchError(f"--budget-hours {args.budget_hours}: expected a positive number")
    if args.seed_base < 0:
        raise SearchError(f"--seed-base {args.seed_base}: expected a non-negative integer")
    tier = resolve_tier(args)
    if args.parallel is None:
        args.parallel = tier.parallel
    if args.aa:  # a null is falsely promoted the moment it passes the first rung: no need to train it deeper
        tier = replace(tier, rungs=tier.rungs[:1])
    recipe = load_recipe(args.recipe)
    baseline_values = {**tier.baseline, **recipe.overrides}
    space = Space.named(args.space, baseline_values)
    enqueued = read_enqueue_file(args.enqueue, space) if args.enqueue else []
    proposer_kind = args.proposer
    if proposer_kind == "auto":
        proposer_kind = "agent" if os.environ.get("ANTHROPIC_API_KEY") else "optuna"
    if args.aa:
        proposer_kind = "aa"
    if calibrate:
        proposer_kind = "calibration"
    if proposer_kind == "agent":
        check_agent_args(args)
    elif args.allow_patches:
        raise SearchError(f"--allow-patches: only the agent proposes patches (got --proposer {args.proposer}"
                          f"{' with --aa' if args.aa else ''}); use --proposer agent")
    name = search_name(args, tier, calibrate)
    try:
        slurm = SlurmOptions.from_args(args)
    except ValueError as e:
        raise SearchError(str(e)) from None
    source = prepare_data(args.data, tier)  # bad data is one line before anything is recorded
    runs_root = prepare_runs_dir(Path(args.runs_dir) if args.runs_dir else nanoresearch_home() / "runs")

    try:
        store = Store(args.db)
    except LeaderboardError as e:
        raise SearchError(str(e)) from None
    existing = store.find_search(name)
    if existing and (existing.get("tier"), existing.get("space")) != (tier.name, args.space):
        raise SearchError(f"--name {name!r}: that search was started with tier {existing.get('tier')!r} and space "
                          f"{existing.get('space')!r}; use another --name for a different search")
    if existing and (existing.get("config") or {}).get("seed_base", 0) != args.seed_base:
        raise SearchError(f"--seed-base {args.seed_base}: search {name!r} was started with seed base "
                          f"{existing['config'].get('seed_base', 0)}; use that, or another --name")
    threads_fixed = tier.train_tier == "cpu" and args.executor == "local"
    if existing and threads_fixed and (existing.get("config") or {}).get("parallel", 1) != args.parallel:
        # Local CPU jobs split the cores: another --parallel is another thread count, which moves val_bpb in its
        # last digits and would pair runs computed differently.
        raise SearchError(f"--parallel {args.parallel}: search {name!r} was started with --parallel "
                          f"{existing['config'].get('parallel', 1)} (the thread count of its CPU runs); use that, or "
                          f"another --name")

    tokenizer_dir = prepare_tokenizer(source, tier.train_tier, baseline_values)

    baseline_id = Experiment(tweaks={}, tier=tier.name, recipe=recipe.name, code_version=code_version()).id
    config = {**{k: v for k, v in vars(args).items() if k not in ("slurm_setup",)}, "baseline_experiment_id": baseline_id,
              "rungs": [r.name for r in tier.rungs]}
    search_id = store.start_search(name, tier=tier.name, space=args.space, proposer=proposer_kind, config=config)
    # From here on the search is recorded as running: whatever goes wrong, it is marked failed with the reason and
    # its jobs are stopped (each saves a checkpoint); finished runs stay in their run dirs for the next start.
    search = None
    try:
        env, throughput_share = local_threads(tier.train_tier, args.executor, args.parallel)
        executor = Executor(args.executor, runs_root / name / "submitit", slurm, env)

        if proposer_kind in ("aa", "calibration"):
            from harness.proposers.aa import AAProposer
            proposer = AAProposer(args.aa or 0, baseline_values, first_replica)
            trials = 2 * (args.aa or 0)
        else:
            from harness.proposers.optuna_tpe import OptunaProposer
            proposer = OptunaProposer(space, store.url.render_as_string(hide_password=False), f"nanoresearch:{name}",
                                      seed=args.seed)
            trials = args.trials
        search = Search(store=store, search_id=search_id, name=name, tier=tier, recipe=recipe, space=space, proposer=proposer,
                        executor=executor, runs_root=runs_root, data=args.data or source.name, tokenizer=tokenizer_dir,
                        trials=trials, budget_hours=args.budget_hours, parallel=args.parallel, code_version=code_version(),
                        seed_base=args.seed_base, throughput_share=throughput_share, every_rung=calibrate)
        if proposer_kind == "agent":
            search.proposer = agent_proposer(args, search, proposer)
        rungs = " -> ".join(f"{r.name} (depth {r.depth}, {r.describe_horizon()}, {r.seeds} seeds"
                            + (f", target {r.target}" if r.target else "") + ")" for r in tier.rungs)
        who = proposer_kind + (f" ({search.proposer.config.model}, {args.agent_batch} per call"
                               + (", patches allowed" if args.allow_patches else "") + ")" if proposer_kind == "agent" else "")
        search.say(f"search {name!r}: tier {tier.name}, space {args.space} ({len(space.knobs)} knobs), proposer {who}, "
                   f"{trials} trials, ladder {rungs}, executor {args.executor} x{args.parallel}")
        search.say(f"statistics: one-sided moderated paired test per kind of change (parametric, structural), alpha "
                   f"{tier.statistics.alpha}, min effect {tier.statistics.min_effect} bpb, up to {tier.statistics.max_seeds} "
                   f"seeds from seed {args.seed_base}; results in {store.url_text}, runs in {runs_root / name}")
        if any(r.time_budget is not None for r in tier.rungs):
            search.say("warning: a rung is budgeted in seconds: on a loaded machine it trains fewer steps, and that load "
                       "becomes noise in every comparison (budget screening rungs in FLOPs, tokens or steps)")
        search.restore()
        if proposer_kind in ("aa", "calibration"):
            proposer.skip({(c.experiment.replica, c.experiment.null_kind) for c in search.candidates.values()})
        else:
            proposer.abandon_unlinked()
            for p in enqueued:  # a resumed search does not enqueue again what it already has
                exp = Experiment(tweaks=p.tweaks, tier=tier.name, recipe=recipe.name, code_version=search.code_version)
                if exp.id not in search.candidates:
                    proposer.enqueue(p)
        search.threads_per_job = threads_per_job(env)
        status = search.run()
        store.finish_search(search_id, status, search.failed if status == "failed" else None)
    except (Exception, KeyboardInterrupt) as e:
        reason = str(e).splitlines()[0] if isinstance(e, (BadInput, LeaderboardError)) and str(e) else (
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}")
        if search is not None:
            search.stop_running()
        try:
            store.finish_search(search_id, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed", reason)
        except LeaderboardError as again:
            reason += f" (and the database could not record that: {again})"
        if isinstance(e, (BadInput, KeyboardInterrupt)):
            raise
        raise SearchFailed(f"search {name!r} failed: {reason}. Finished runs are kept in {runs_root / name}; "
                           "fix the cause and rerun the same command to resume") from e
    return status, search


def check_agent_args(args) -> None:
    """Flags of the agent proposer, checked before anything is recorded."""
    from harness.proposers.prices import price
    if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        raise SearchError("--proposer agent: ANTHROPIC_API_KEY is not set (expected the Anthropic API key in the "
                          "environment); use --proposer optuna without one")
    if args.agent_batch < 1:
        raise SearchError(f"--agent-batch {args.agent_batch}: expected a positive integer")
    if args.agent_max_tokens < 1:
        raise SearchError(f"--agent-max-tokens {args.agent_max_tokens}: expected a positive integer")
    if args.agent_temperature is not None and not 0.0 <= args.agent_temperature <= 1.0:
        raise SearchError(f"--agent-temperature {args.agent_temperature}: expected a number in [0, 1]")
    if args.agent_budget_usd is not None:
        if not args.agent_budget_usd > 0:
            raise SearchError(f"--agent-budget-usd {args.agent_budget_usd}: expected a positive number of dollars")
        from harness.proposers.agent import DEFAULT_MODEL
        model = args.agent_model or DEFAULT_MODEL
        if price(model) is None:
            raise SearchError(f"--agent-budget-usd: no price for model {model!r} in harness/proposers/prices.py, "
                              "so spend cannot be capped (add its price there, or drop the budget)")
    if args.allow_patches:
        from model.provenance import code_version
        if code_version() == "unknown":
            raise SearchError("--allow-patches: this checkout is not a git repository (patches apply to a git worktree)")
        if "-dirty-" in code_version():
            raise SearchError("--allow-patches: model/ has uncommitted changes; commit them first (patches are applied "
                              "to a worktree of HEAD, and the baseline must run the same code)")


def agent_proposer(args, search: Search, optuna_proposer):
    """The agent proposer over the search's Optuna study. The API key is read by the SDK client here, then removed
    from this process's environment: no child process (submitit workers, SLURM jobs, training) inherits it."""
    from harness.jobs import SECRET_ENV
    from harness.patches import SmokeTest
    from harness.proposers.agent import DEFAULT_MODEL, AgentConfig, AgentProposer, SearchContext

    config = AgentConfig(model=args.agent_model or DEFAULT_MODEL, max_tokens=args.agent_max_tokens,
                         temperature=args.agent_temperature, batch=args.agent_batch, budget_usd=args.agent_budget_usd,
                         allow_patches=args.allow_patches)
    tier, recipe = search.tier, search.recipe

    def identity(tweaks: dict, patch: str | None) -> str:
        return Experiment(tweaks=tweaks, tier=tier.name, recipe=recipe.name, code_version=search.code_version,
                          patch=patch).id

    context = SearchContext(name=search.name, search_id=search.search_id, tier=tier, recipe=recipe,
                            baseline_id=search.baseline.id, identity=identity,
                            commit=search.code_version if args.allow_patches else None,
                            smoke=SmokeTest(data=search.data, tokenizer=search.tokenizer))
    proposer = AgentProposer(search.space, optuna_proposer, search.store, context, config, say=search.say)
    for key in SECRET_ENV:
        os.environ.pop(key, None)
    proposer.remaining = lambda: search.trials - search.proposals_made
    return proposer


if __name__ == "__main__":
    sys.exit(main())
