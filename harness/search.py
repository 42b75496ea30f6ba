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
it: finished runs are never repeated, unfinished ones continue from their checkpoints. A run another search already
made of the same experiment, rung and seed, trained the same way, is taken from the database instead of trained again
(`Search.made_elsewhere`).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from experiments.catalog import CatalogError, Rung, Tier
from harness import hypotheses, search_report
from harness.compute_multiplier import ComputeMultiplier, compute_multiplier
from harness.executors import Executor
from harness.experiment import NOISE_FLOOR_REPLICA, Experiment, baseline_name, format_set, parametric_null_tweaks
from harness.hypotheses import NO_OP
from harness.jobs import Job, WandbLabels, terminate_as_interrupt
from harness.ladder import CANDIDATE_FAILED, Verdict, decide
from harness.noise import CONTROL_INITS, Spread, control_spread, fit_prior
from harness.pool import Finished, JobPool
from harness.preparation import (
    BadInput,
    check_devices,
    data_name,
    job_timeout,
    local_threads,
    patch_worktree,
    prepare_data,
    prepare_runs_dir,
    prepare_tokenizer,
    threads_per_job,
)
from harness.proposers import Proposal, Proposer
from harness.runs import Outcome, failed_for_the_machine
from harness.search_config import SearchConfig, SearchError, build_parser, resolve
from harness.steering import Course, SteeringConfig, available_categories, course, n_decisions
from leaderboard import ranking
from leaderboard.ranking import Standing
from leaderboard.schema import NOISE_FLOOR_PROPOSER, RUN_STATUSES
from search_spaces import KINDS, SearchSpaceError, Space, change_categories

POLL_S = 0.5
PROGRESS_S = 10.0    # how often running jobs' progress is read into the database
HEARTBEAT_S = 60.0   # how often the terminal says where the running jobs are
MAX_WASTED_IN_A_ROW = 20  # duplicates or no-ops in a row from a proposer: it has nothing new left


def say(message: str, out=None) -> None:
    """A line of the search's log, time-stamped (to `out`, else stdout)."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=out or sys.stdout, flush=True)


class SearchFailed(RuntimeError):
    """The search broke after it was recorded (a database or file system that stopped working...): one line for the
    user, exit code 1; the search is marked failed with the reason."""


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
                 every_rung: bool = False, sandbox: bool = True, wandb: bool = False,
                 steering: SteeringConfig | None = None, insights_every: int = 0, out=sys.stdout):
        self.store, self.search_id, self.name, self.tier, self.recipe = store, search_id, name, tier, recipe
        self.space, self.proposer, self.runs_root = space, proposer, runs_root
        self.data, self.tokenizer, self.trials, self.budget_hours = data, tokenizer, trials, budget_hours
        self.parallel, self.code_version, self.out = parallel, code_version, out
        self.seed_base = seed_base
        self.sandbox = sandbox  # patched experiments' jobs run sandboxed (False: --unsafe-patches)
        self.wandb = wandb      # every training run also logs to Weights & Biases (--wandb)
        self.threads_per_job = 1  # CPU threads each job trains with (for CPU-minute costs)
        self.every_rung = every_rung  # measure the baseline and nulls at every rung, not only the ones in use
        # A job's share of a rung's calibrated throughput (local CPU jobs running side by side share the cores).
        self.throughput_share = throughput_share
        self.baseline = Experiment(tweaks={}, tier=tier.name, recipe=recipe.name, code_version=code_version,
                                   proposer="baseline", name=baseline_name(recipe.name))
        # The search's own nulls, one per kind of change, on every rung in use: their paired differences with the
        # baseline are the noise a change of that kind that does nothing produces (harness/noise.py).
        null_tweaks = {"structural": {},  # another initialisation
                       "parametric": parametric_null_tweaks(NOISE_FLOOR_REPLICA, {**tier.baseline, **recipe.overrides})}
        self.nulls = {kind: Experiment(tweaks=null_tweaks[kind], tier=tier.name, recipe=recipe.name,
                                       code_version=code_version, proposer=NOISE_FLOOR_PROPOSER, replica=NOISE_FLOOR_REPLICA)
                      for kind in KINDS}
        self.candidates: dict[str, Candidate] = {}
        self.results: dict[tuple[str, str, int], Outcome] = {}  # (experiment, rung, slot) -> outcome
        self.pool = JobPool(executor, store, search_id=search_id, throughput_share=throughput_share,
                            loaded_fraction=tier.loaded_fraction)
        self.spreads: dict[tuple[str, str], Spread] = {}  # (rung name, kind) -> null spread
        self.compute_s = 0.0
        self.progress_at = self.heartbeat_at = time.monotonic()  # the first look at running jobs waits a while
        self.retrying: set[tuple[str, str, int]] = set()  # run keys that failed for the machine, to train again
        self.wasted_in_a_row = 0
        self.proposals_exhausted = False
        self.failed: str | None = None
        self.elsewhere: dict[tuple[str, str], dict[int, dict]] = {}  # (experiment, rung) -> seed -> another search's ok run
        self.producers: dict[int, dict] = {}                          # search id -> its searches row
        self.reused = 0                                               # runs taken from other searches
        # Steering (harness/steering.py): recomputed from the records before each proposal.
        self.steering = steering or SteeringConfig()
        self.course = Course(available=available_categories(space, proposer.proposes_patches))
        # The agent distils insights after every `insights_every` decisions (0: only at the end).
        self.insights_every, self.decided_since_insights = insights_every, 0

    # --- small helpers ---------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        say(message, self.out)

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

    def val(self, r: Outcome | None) -> float | None:
        return None if r is None else r.val_bpb

    def status(self, r: Outcome | None) -> str | None:
        return None if r is None else r.status

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
        rows = self.store.experiments(search_id=self.search_id)  # in the order this search proposed them
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
            self.results[(exp.id, run["rung"], exp.slot(run["seed"], self.seed_base))] = Outcome.from_row(run)
        self.compute_s = self.compute_spent()
        for cand in self.candidates.values():  # a session stopped between a decision and its judgement heals here
            self.record_hypothesis(cand.experiment)
            self.judge(cand)
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
                   workdir=patch_worktree(exp, sandboxed=self.sandbox), data_seed=exp.data_seed(slot, self.seed_base), sandbox=self.sandbox,
                   wandb=WandbLabels(group=self.name, experiment=exp.id, name=f"{exp.id} {rung.name} seed{seed}",
                                     tags=(f"rung:{rung.name}", f"seed:{seed}", self.role(exp))) if self.wandb else None)

    def role(self, exp: Experiment) -> str:
        """baseline, null (the search's own nulls and A/A replicas) or candidate: as the dashboard colours runs."""
        if exp.id == self.baseline.id:
            return "baseline"
        return "null" if exp.replica else "candidate"

    def submit(self, exp: Experiment, index: int, slot: int) -> None:
        job = self.make_job(exp, index, slot)
        self.pool.submit(job, reopen=job.key in self.retrying)
        self.retrying.discard(job.key)
        self.say(f"start {job.rung.name} seed {job.seed} of {self.label(exp)}")

    def label(self, exp: Experiment) -> str:
        return f"{exp.id} ({exp.describe()})"

    # --- proposals -------------------------------------------------------------------------------------------
    def out_of_budget(self) -> bool:
        return self.budget_hours is not None and self.compute_s / 3600 >= self.budget_hours

    def want_proposal(self) -> bool:
        if self.failed or self.proposals_exhausted or self.proposals_made >= self.trials or self.out_of_budget():
            return False
        if not self.course.open:
            return False  # every category paused: the running experiments' decisions may lift a pause (loop)
        return len(self.pool) + len(self.needed()) < self.parallel

    def steer(self) -> None:
        """The course from the records (harness/steering.py), said when it changes, and handed to the proposer."""
        experiments = {c.experiment.id: change_categories(c.experiment.tweaks, c.experiment.patch)
                       for c in self.candidates.values() if not c.experiment.replica}
        decisions = self.store.decisions(search_id=self.search_id, columns=("experiment_id", "verdict", "created_at"))
        runs = [r for r in self.store.runs(search_id=self.search_id, columns=("experiment_id", "status", "reason", "finished_at"))
                if r["status"] != "running" and r["experiment_id"] in experiments
                and not failed_for_the_machine(r["status"], r.get("reason"))]
        runs.sort(key=lambda r: (r["finished_at"] is None, r["finished_at"] or 0))
        new = course(self.steering, decisions, experiments, runs, self.course.available,
                     failed=tuple(s for s in RUN_STATUSES if s not in ("ok", "running")))
        if new != self.course:
            for line in new.lines():
                # A plateau one decision longer is the same course: said once, when it begins or changes direction.
                if line not in self.course.lines() and not (line == new.plateau_line() and new.same_plateau(self.course)):
                    self.say(line)
            if self.course.stalled_for and not new.stalled_for:
                self.say("plateau over: a promotion; proposals from every open category again")
            for c in sorted(set(self.course.paused) - set(new.paused)):
                self.say(f"pause over: {c} proposals again after {n_decisions(self.steering.pause_for)} on other kinds "
                         f"of change, on probation (a new burst of failed runs pauses them again)")
        self.course = new
        self.proposer.steer(new)

    def propose(self) -> None:
        self.steer()
        if not self.course.open:
            return  # want_proposal says no until a pause lifts (loop)
        proposals = self.proposer.propose(1, remaining=self.trials - self.proposals_made)
        if not proposals and self.course.paused:
            self.proposals_exhausted = True
            self.say("the proposer found nothing outside the paused categories: no more proposals")
        for proposal in proposals:
            exp = Experiment(tweaks=proposal.tweaks, tier=self.tier.name, recipe=self.recipe.name,
                             code_version=self.code_version, proposer=proposal.proposer, rationale=proposal.rationale,
                             patch=proposal.patch, replica=proposal.replica, extra=dict(proposal.extra))
            if proposal.trial is not None:
                self.proposer.link(proposal.trial, exp.id)
            if self.is_own(exp.id) or exp.id in self.candidates:
                self.wasted_in_a_row += 1
                self.say(f"proposal {exp.describe()} duplicates {exp.id}: dropped")
                self.record_rejected(proposal, f"duplicate of experiment {exp.id} (already in this search)")
                existing = self.candidates.get(exp.id)
                if existing is not None and existing.told:
                    self.tell(existing)
                elif exp.id == self.baseline.id:
                    self.proposer.observe(exp.id, 0.0)
                self.check_wasted_proposals()
                continue
            if (same := self.same_model_as_baseline(exp)) is not None:
                self.wasted_in_a_row += 1
                self.say(f"proposal {exp.describe()} is a no-op: {same}: dropped")
                self.record_rejected(proposal, f"a no-op: {same}")
                self.proposer.observe(exp.id, 0.0)  # Optuna's trial: exactly the baseline, a delta of 0
                self.check_wasted_proposals()
                continue
            self.wasted_in_a_row = 0
            self.store.record_experiment(exp.record(), search_id=self.search_id)
            self.record_hypothesis(exp)
            cand = Candidate(exp, order=len(self.candidates), slots=self.tier.rungs[0].seeds, trial=proposal.trial)
            self.candidates[exp.id] = cand
            why = f": {proposal.rationale}" if proposal.rationale else ""
            self.say(f"trial {self.proposals_made}/{self.trials} from {proposal.proposer} ({exp.kind}): {self.label(exp)}{why}")
        if not self.proposals_made and not self.proposer_can_continue():
            self.proposals_exhausted = True

    def check_wasted_proposals(self) -> None:
        """A proposer that keeps returning duplicates or no-ops has nothing new left: stop asking it."""
        if self.wasted_in_a_row >= MAX_WASTED_IN_A_ROW and not self.proposals_exhausted:
            self.proposals_exhausted = True
            self.say(f"the proposer returned {MAX_WASTED_IN_A_ROW} duplicates or no-ops in a row: no more proposals")

    def same_model_as_baseline(self, exp: Experiment) -> str | None:
        """Why a proposal trains exactly the baseline's model at the first rung (None: it does not, or it has a code
        patch, or it is a null). Its settings, resolved as model.train resolves them, are compared with the
        baseline's (model.config: ModelConfig.effective_settings), so a knob set to the baseline's value, or a window
        pattern at a depth or sequence where every window is full, is caught before any run; the ladder's
        bit-for-bit check catches the no-ops this cannot see."""
        if exp.patch or exp.replica or not exp.tweaks:
            return None
        from model.config import TIERS, ConfigError, resolve_configs, to_dict
        rung = self.tier.rungs[0]

        def settings(e: Experiment) -> tuple:
            overrides = {**({"fp8": True} if rung.fp8 else {}), **e.overrides(self.tier.baseline, self.recipe.overrides)}
            model, optim, train = resolve_configs(TIERS[self.tier.train_tier], rung.depth, overrides)
            return model.effective_settings(), to_dict(optim), to_dict(train)

        try:
            if settings(exp) != settings(self.baseline):
                return None
        except (ConfigError, KeyError, TypeError, ValueError):
            return None  # a value the run itself must reject, with its own message
        return f"at {rung.name} it resolves to the baseline's model, optimizer and training settings"

    def record_hypothesis(self, exp: Experiment) -> None:
        """A proposal's claim into the ledger (harness/hypotheses.py): its rationale and falsification criterion.
        Nulls claim nothing."""
        if not exp.replica:
            self.store.record_hypothesis(self.search_id, exp.id, exp.rationale or f"{exp.describe()} lowers val_bpb",
                                         (exp.extra or {}).get("falsification"))

    def judge(self, cand: Candidate) -> None:
        """The hypothesis of a candidate judged by its decisions so far."""
        if cand.experiment.replica:
            return
        decisions = self.store.decisions(search_id=self.search_id, experiment_id=cand.experiment.id)
        status, evidence = hypotheses.judge(decisions, [r.name for r in self.tier.rungs])
        self.store.resolve_hypothesis(self.search_id, cand.experiment.id, status, evidence)

    def record_rejected(self, proposal: Proposal, reason: str) -> None:
        from leaderboard import RejectedProposal
        payload = {"tweaks": proposal.tweaks, "rationale": proposal.rationale, **proposal.extra}
        if proposal.patch:
            payload["patch"] = proposal.patch
        self.store.record_rejected_proposal(RejectedProposal(search_id=self.search_id, proposer=proposal.proposer,
                                                             reason=reason, payload=payload))

    def proposer_can_continue(self) -> bool:
        return not self.proposer.exhausted

    def tell(self, cand: Candidate) -> None:
        """Tell the proposer how the candidate did at the first rung (mean paired difference; None = failed)."""
        first = self.tier.rungs[0].name
        v = cand.verdicts.get(first)
        if v is None:
            decisions = self.store.decisions(experiment_id=cand.experiment.id)
            rows = [d for d in decisions if d["from_rung"] == first and d["verdict"] != "more_seeds"]
            value = rows[-1]["mean_delta"] if rows else None
        else:
            value = v.mean_delta if not v.reason.startswith(CANDIDATE_FAILED) else None
        self.proposer.observe(cand.experiment.id, value)

    # --- results and decisions ---------------------------------------------------------------------------------
    def collect(self) -> int:
        finished = self.pool.collect()
        for f in finished:
            self.take(f)
        return len(finished)

    def compute_spent(self) -> float:
        """Device-seconds this search's runs have used, as the dashboard counts them (`Store.device_seconds`).
        Runs taken from other searches cost it nothing."""
        return sum(self.store.device_seconds(self.search_id).values())

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
        self.compute_s = self.compute_spent()
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

    # --- runs another search made ------------------------------------------------------------------------------
    def made_elsewhere(self, exp: Experiment, rung: Rung, slot: int) -> dict | None:
        """The run of this experiment, rung and seed that another search recorded as finished ok, when it was trained
        as this search would train it: the rung's horizon in compute (a time budget depends on the machine's load),
        the same settings (a tier file edited under the same name changes them, not the experiment id), the same
        data and data order, and a producer with the same executor and thread split (the thread count moves val_bpb
        in its last digits). The run key (experiment, rung, seed) is unique in the database, and
        training is deterministic given these, so that run is this one; training it again would record nothing new.
        Failed runs are never taken: they train here."""
        if rung.time_budget is not None or exp.patch:
            return None  # wall-clock budgets are not reproducible; a patch's sealed checks belong to its own search
        key = (exp.id, rung.name)
        if key not in self.elsewhere:
            rows = self.store.runs(experiment_id=exp.id, rung=rung.name, status="ok", details=True)
            self.elsewhere[key] = {int(r["seed"]): r for r in rows
                                   if r.get("search_id") not in (None, self.search_id) and r.get("val_bpb") is not None}
        row = self.elsewhere[key].get(self.seed(exp, slot))
        if row is None:
            return None
        config = row.get("config") or {}
        horizon, value = rung.horizon()
        budget = (config.get("budget") or {}).get(horizon)
        same_horizon = isinstance(budget, int | float) and math.isclose(budget, value, rel_tol=1e-9)
        same_data = config.get("data") == self.data and config.get("data_seed") == exp.data_seed(slot, self.seed_base)
        settings = {k: format_set(k, v).partition("=")[2]
                    for k, v in exp.overrides(self.tier.baseline, self.recipe.overrides).items() if k != "fp8"}
        same_settings = {k: str(v) for k, v in (config.get("overrides") or {}).items() if k != "fp8"} == settings
        if row["search_id"] not in self.producers:
            self.producers[row["search_id"]] = self.store.search(row["search_id"]) or {}
        flags = self.producers[row["search_id"]].get("config") or {}
        same_jobs = (flags.get("executor") == self.pool.executor.kind
                     and int(flags.get("parallel") or 1) == self.parallel)
        return row if same_horizon and same_settings and same_data and same_jobs else None

    def take_made_elsewhere(self) -> int:
        """Every needed run another search already made (`made_elsewhere`), into this search's results untrained;
        how many. They cost this search no compute."""
        taken = 0
        for exp, index, slot in self.needed():
            rung = self.tier.rungs[index]
            row = self.made_elsewhere(exp, rung, slot)
            if row is None:
                continue
            outcome = Outcome.from_row(row)
            self.results[(exp.id, rung.name, slot)] = outcome
            taken += 1
            self.reused += 1
            producer = self.producers.get(row["search_id"], {}).get("name") or f"search {row['search_id']}"
            self.say(f"reuse {rung.name} seed {row['seed']} of {self.label(exp)} from {producer}: "
                     f"val_bpb {outcome.val_bpb:.4f} | {self.progress()}")
            if self.is_own(exp.id):
                self.update_null_spreads(rung)
        return taken

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
            if not failures and not cand.experiment.replica and self.same_as_baseline(cand.experiment, rung, slots):
                self.record_verdict(cand, rung, Verdict(
                    "reject", {s: 0.0 for s in slots}, 0.0, None, None, len(slots),
                    f"{NO_OP} at {rung.name}: val_bpb equal to the baseline's bit for bit on all {len(slots)} seeds, so "
                    "the change resolves to the baseline's model there (a no-op); more seeds cannot tell them apart",
                    kind))
                continue
            verdict = decide({s: self.val(r) for s, r in mine.items() if r is not None},
                             self.control_values(cand.experiment, rung, slots),
                             self.tier.statistics, first_n=rung.seeds, kind=kind, null=self.null_spread(rung, kind),
                             prior=self.prior(rung, kind, exclude=cand.experiment), failed="; ".join(failures) or None)
            if verdict.deltas:
                verdict.multiplier = self.multiplier(cand.experiment, rung, list(verdict.deltas))
            self.record_verdict(cand, rung, verdict)

    def same_as_baseline(self, exp: Experiment, rung: Rung, slots) -> bool:
        """Did every run of `exp` at the rung end with the baseline's val_bpb on the same seed, bit for bit? Training
        is deterministic given the model, data and seed, so only the baseline's own model does that: the change is a
        no-op there (window_pattern=L when the sequence fits in the short window, say). Judged against a structural
        control, the mean of two inits, it would otherwise read as half the init noise and take more seeds."""
        pairs = [(self.val(self.result(exp, rung, s)), self.val(self.result(self.baseline, rung, s))) for s in slots]
        return bool(pairs) and all(mine is not None and mine == base for mine, base in pairs)

    def curve(self, exp: Experiment, rung: Rung, slot: int) -> list[tuple[float, float]]:
        """A run's learning curve: (training FLOPs so far, val_bpb) at each evaluation."""
        r = self.result(exp, rung, slot)
        if r.run_id is not None and not r.points:  # recorded by an earlier session: its curve is in the database
            r.points = self.store.metric_points([r.run_id])
        result, points = r.result or {}, r.points
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
        flops = [(self.status(r) == "ok" and (r.result or {}).get("flops")) for r in finals]
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
            multiplier_extrapolated=v.multiplier.extrapolated if v.multiplier and v.multiplier.value is not None else None,
            reason=v.reason))
        cand.verdicts[rung.name] = v
        self.apply_verdict(cand, rung.name, v.verdict, v.n)
        if v.verdict != "more_seeds":
            self.judge(cand)
        se = f"standard error {v.std_error:.4f}" if v.std_error else ""
        power = f"{v.kind} MDE {v.mde:.4f}" if v.mde is not None and math.isfinite(v.mde) else (v.kind or "")
        mult = f"compute {v.multiplier.describe()}" if v.multiplier and v.multiplier.value is not None else ""
        where = {"promote": f"PROMOTED to {to_rung}" if to_rung else ("PASSED the top rung" if index else "PASSED (the ladder's only rung)"), "reject": "rejected",
                 "more_seeds": "one more seed"}[v.verdict]
        numbers = "; ".join(filter(None, [se, power, mult]))
        # The reason is the sentence the dashboard shows too (decisions.reason).
        self.say(f"decide {rung.name} {self.label(cand.experiment)}: {where}: {v.reason}" + (f" ({numbers})" if numbers else ""))
        if index == 0 and v.verdict != "more_seeds" and not cand.told:
            cand.told = True
            self.tell(cand)
        if v.verdict != "more_seeds" and not cand.experiment.replica:
            self.decided_since_insights += 1
            if self.insights_every and self.decided_since_insights >= self.insights_every:
                self.decided_since_insights = 0
                self.proposer.distil(final=False)

    def progress(self) -> str:
        decided = sum(1 for c in self.candidates.values() if c.state != "active")
        promoted = sum(1 for c in self.candidates.values() if c.rung > 0 or c.state == "passed")
        best = self.best()
        best_text = f" | best {best.experiment_id} d {best.mean_delta:+.4f} at {best.rung}" if best and best.beats_baseline() else ""
        return (f"trials {self.proposals_made}/{self.trials} ({decided} decided, {promoted} promoted) | running "
                f"{len(self.pool)}, queued {len(self.needed())}{best_text} | compute {self.compute_s / 3600:.3f} device-hours")

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
            self.steer()  # decisions may have paused a category or lifted a pause
            while self.want_proposal():
                before = self.proposals_made
                self.propose()
                if self.proposals_made == before and (self.proposals_exhausted or not self.proposer_can_continue()):
                    self.proposals_exhausted = True
                    break
                self.decide_ready()
            if self.failed:
                break
            if self.take_made_elsewhere():
                continue  # runs another search made are in: decide on them before starting anything
            for exp, index, slot in self.needed()[: max(0, self.parallel - len(self.pool))]:
                self.submit(exp, index, slot)
            if not self.pool:
                if not self.needed() and not self.want_proposal():
                    if not self.course.open and not self.proposals_exhausted:
                        self.proposals_exhausted = True
                        self.say("every category of change is paused for failed runs and nothing is left to decide "
                                 "that could lift a pause: no more proposals")
                    break
                continue
            while not self.collect():
                self.watch_running()
                time.sleep(POLL_S)
        if self.failed:
            self.stop_running()
            self.say(f"search stopped: {self.failed}")
            return "failed"
        self.proposer.distil(final=True)
        return "finished"

    def stop_running(self) -> None:
        self.pool.stop_all()

    def watch_running(self) -> None:
        """Every PROGRESS_S, the running jobs' live progress onto their rows (the dashboard shows it); every
        HEARTBEAT_S, a line on them in the terminal, so a long rung never looks stuck."""
        now = time.monotonic()
        if now - self.progress_at < PROGRESS_S:
            return
        self.progress_at = now
        live = self.pool.progress()
        if live and now - self.heartbeat_at >= HEARTBEAT_S:
            self.heartbeat_at = now
            self.say("running: " + "; ".join(running_line(job, p, self.label(self.experiment_of(job.experiment_id)))
                                             for job, p in live))

def running_line(job, progress: dict, label: str) -> str:
    """Where one running job is: 'd2 seed 0 of 3f2a9c1e (smear=True) step 120/300, val_bpb 2.4133, 1,712 tok/s'."""
    step = f"step {progress.get('step')}" + (f"/{progress['of']}" if progress.get("of") else "")
    val = f", val_bpb {progress['val_bpb']:.4f}" if isinstance(progress.get("val_bpb"), (int, float)) else ""
    rate = f", {progress['tok_per_s']:,.0f} tok/s" if isinstance(progress.get("tok_per_s"), (int, float)) else ""
    return f"{job.rung.name} seed {job.seed} of {label} {step}{val}{rate}"


def restored_verdict(row: dict, exp: Experiment, seed_base: int) -> Verdict:
    """A decision recorded by an earlier session, as the verdict the summary and the proposer read."""
    from harness.noise import PairedTest
    deltas = {exp.slot(int(seed), seed_base): v for seed, v in (row.get("deltas") or {}).items()}
    test = PairedTest(row.get("mean_delta") or 0.0, row.get("spread"), row.get("df") or 0.0, row.get("std_error"),
                      row.get("p_value"), row.get("mde"), False, False) if row.get("mde") is not None else None
    multiplier = (ComputeMultiplier(row["compute_multiplier"], bool(row.get("multiplier_extrapolated")))
                  if row.get("compute_multiplier") is not None else None)
    return Verdict(row["verdict"], deltas, row.get("mean_delta"), row.get("std_error"), row.get("p_value"),
                   row.get("n") or 0, row.get("reason") or "(from the previous session)", row.get("kind"), test, multiplier)


# -----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(resolve(args))
    except (BadInput, CatalogError, SearchSpaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SearchFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the search's own loop, which handles it (setup, tokenizer training)
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def run(config: SearchConfig) -> int:
    if config.dry_run:
        return dry_run(config)
    if config.aa and config.aa_controls > 1:
        return run_aa(config)
    status, search = execute(config)
    print(search_report.summary(search, status), flush=True)
    return 0 if status == "finished" else 1


def dry_run(config: SearchConfig) -> int:
    """`--dry-run`: the baseline's job at every rung, as it would run (harness/dry_run.py); nothing is recorded."""
    from harness import dry_run as plans
    from model.home import nanoresearch_home
    from model.provenance import code_version
    tier, recipe = config.tier, config.recipe
    baseline = Experiment(tweaks={}, tier=tier.name, recipe=recipe.name, code_version=code_version(),
                          proposer="baseline", name=baseline_name(recipe.name))
    runs_root = Path(config.runs_dir) if config.runs_dir else nanoresearch_home() / "runs"
    executor = Executor(config.executor, runs_root / config.name / "submitit", config.slurm)
    data = data_name(config.data, tier)
    print(f"search {config.name!r}, dry run: tier {tier.name}, recipe {recipe.name}, data {data}, executor "
          f"{config.executor}; the baseline's first job at each rung (a candidate adds its --set values):", flush=True)
    for rung in tier.rungs:
        seed = baseline.seed(0, config.seed_base)
        job = Job(experiment_id=baseline.id, rung=rung, slot=0, seed=seed,
                  run_dir=runs_root / config.name / baseline.id / rung.name / f"seed{seed}",
                  train_tier=tier.train_tier, overrides=baseline.overrides(tier.baseline, recipe.overrides), data=data,
                  timeout_s=job_timeout(rung), data_seed=baseline.data_seed(0, config.seed_base))
        plans.describe(job, executor, lambda line: print(line, flush=True))
    print("dry run: nothing was run, downloaded or recorded", flush=True)
    return 0


def run_aa(config: SearchConfig) -> int:
    """`--aa N`: the nulls of each kind split over G independent controls (--aa-controls; default one per two nulls
    of each kind). Every null of one search is judged against that search's baseline (and structural null): one
    control drawn high or low moves all of them together, so one search's count is one draw of its control. Each
    control is therefore a search of its own, `NAME-iofG`, on a seed base max_seeds above the previous one (its
    own inits and data orders), with ~N/G nulls of each kind numbered on from the previous control's. A control
    costs three runs a seed slot (the baseline and the two search nulls), a null one: G = N costs ~2.5 runs a null
    per slot, G = N/2 ~1.75. Rerunning the command resumes each search in turn."""
    searches, first_replica = [], 1
    for i in range(config.aa_controls):
        share = config.aa // config.aa_controls + (1 if i < config.aa % config.aa_controls else 0)
        status, search = execute(config.control(i, share, first_replica))
        print(search_report.summary(search, status), flush=True)
        if status != "finished":
            return 1
        searches.append(search)
        first_replica += share
    print(search_report.aa_report_over_controls(searches), flush=True)
    return 0


def execute(config: SearchConfig, proposer: Proposer | None = None) -> tuple[str, Search]:
    """Run the search the config describes, to its end; (status, the search). `proposer`: one built by the caller
    (the benchmark's pool proposers) instead of the one the config names."""
    from leaderboard import LeaderboardError, Store
    from model.home import nanoresearch_home
    from model.provenance import code_version

    tier, recipe, name = config.tier, config.recipe, config.name
    check_devices(tier, config.executor, f"--tier {tier.name}", "--tier cpu")
    source = prepare_data(config.data, tier)  # bad data is one line before anything is recorded
    runs_root = prepare_runs_dir(Path(config.runs_dir) if config.runs_dir else nanoresearch_home() / "runs")
    try:
        store = Store(config.db)
    except LeaderboardError as e:
        raise SearchError(str(e)) from None
    existing = store.find_search(name)
    if existing and (existing.get("tier"), existing.get("space")) != (tier.name, config.space_name):
        raise SearchError(f"--name {name!r}: that search was started with tier {existing.get('tier')!r} and space "
                          f"{existing.get('space')!r}; use another --name for a different search")
    if existing and (existing.get("config") or {}).get("seed_base", 0) != config.seed_base:
        raise SearchError(f"--seed-base {config.seed_base}: search {name!r} was started with seed base "
                          f"{existing['config'].get('seed_base', 0)}; use that, or another --name")
    threads_fixed = tier.train_tier == "cpu" and config.executor == "local"
    if existing and threads_fixed and (existing.get("config") or {}).get("parallel", 1) != config.parallel:
        # Local CPU jobs split the cores: another --parallel is another thread count, which moves val_bpb in its
        # last digits and would pair runs computed differently.
        raise SearchError(f"--parallel {config.parallel}: search {name!r} was started with --parallel "
                          f"{existing['config'].get('parallel', 1)} (the thread count of its CPU runs); use that, or "
                          f"another --name")
    baseline_values = {**tier.baseline, **recipe.overrides}
    tokenizer_dir = prepare_tokenizer(source, tier.train_tier, baseline_values)

    baseline_id = Experiment(tweaks={}, tier=tier.name, recipe=recipe.name, code_version=code_version()).id
    recorded = {**config.flags, "baseline_experiment_id": baseline_id, "rungs": [r.name for r in tier.rungs]}
    search_id = store.start_search(name, tier=tier.name, space=config.space_name, proposer=config.proposer, config=recorded)
    # From here on the search is recorded as running: whatever goes wrong, it is marked failed with the reason and
    # its jobs are stopped (each saves a checkpoint); finished runs stay in their run dirs for the next start.
    search = None
    try:
        env, throughput_share = local_threads(tier.train_tier, config.executor, config.parallel)
        executor = Executor(config.executor, runs_root / name / "submitit", config.slurm, env)
        data = config.data or source.name
        proposer = proposer or make_proposer(config, store, search_id, baseline_id, data, tokenizer_dir)
        search = Search(store=store, search_id=search_id, name=name, tier=tier, recipe=recipe, space=config.space,
                        proposer=proposer, executor=executor, runs_root=runs_root, data=data, tokenizer=tokenizer_dir,
                        trials=config.trials, budget_hours=config.budget_hours, parallel=config.parallel,
                        code_version=code_version(), seed_base=config.seed_base, throughput_share=throughput_share,
                        every_rung=config.proposer == "calibration", sandbox=config.sandbox, wandb=config.wandb,
                        steering=config.steering, insights_every=config.insights_every)
        rungs = " -> ".join(f"{r.name} (depth {r.depth}, {r.describe_horizon()}, {r.seeds} seeds"
                            + (f", target {r.target}" if r.target else "")
                            + (", uncalibrated" if r.tok_per_s is None else "") + ")" for r in tier.rungs)
        search.say(f"search {name!r}: tier {tier.name}, space {config.space_name} ({len(config.space.knobs)} knobs), "
                   f"proposer {proposer.describe()}, {config.trials} trials, ladder {rungs}, executor "
                   f"{config.executor} x{config.parallel}")
        stats = tier.statistics
        search.say(f"statistics: one-sided moderated paired test per kind of change (parametric, structural), alpha "
                   f"{stats.alpha}, min effect {stats.min_effect} bpb, up to {stats.max_seeds} seeds from seed "
                   f"{config.seed_base}; results in {store.url_text}, runs in {runs_root / name}")
        if any(r.time_budget is not None for r in tier.rungs):
            search.say("warning: a rung is budgeted in seconds: on a loaded machine it trains fewer steps, and that load "
                       "becomes noise in every comparison (budget screening rungs in FLOPs, tokens or steps)")
        search.restore()
        proposer.resume([c.experiment for c in search.candidates.values()])
        for p in config.enqueued:  # a resumed search does not enqueue again what it already has
            exp = Experiment(tweaks=p.tweaks, tier=tier.name, recipe=recipe.name, code_version=search.code_version)
            if exp.id not in search.candidates:
                proposer.enqueue(p)
        search.threads_per_job = threads_per_job(env)
        status = search.run()
        store.finish_search(search_id, status, search.failed if status == "failed" else None,
                            summary=search_report.summary(search, status))
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


def make_proposer(config: SearchConfig, store, search_id: int, baseline_id: str, data: str, tokenizer: str) -> Proposer:
    """The search's proposer, built before the search: A/A nulls, TPE (or random sampling) over the space (its study
    in the search's database), or the agent over that study. The agent's API key is read by the SDK client here,
    then removed from this process's environment: no child process (submitit workers, SLURM jobs, training)
    inherits it."""
    if config.proposer in ("aa", "calibration"):
        from harness.proposers.aa import AAProposer
        return AAProposer(config.aa, {**config.tier.baseline, **config.recipe.overrides}, config.first_replica)
    from harness.proposers.optuna_tpe import OptunaProposer
    study = OptunaProposer(config.space, store.url.render_as_string(hide_password=False), f"nanoresearch:{config.name}",
                           seed=config.seed, sampler="random" if config.proposer == "random" else "tpe")
    if config.proposer != "agent":
        return study
    from harness.jobs import SECRET_ENV
    from harness.patches import SmokeTest
    from harness.proposers.agent import AgentProposer, SearchContext
    from model.provenance import code_version
    tier, recipe, version = config.tier, config.recipe, code_version()

    def identity(tweaks: dict, patch: str | None) -> str:
        return Experiment(tweaks=tweaks, tier=tier.name, recipe=recipe.name, code_version=version, patch=patch).id

    context = SearchContext(name=config.name, search_id=search_id, tier=tier, recipe=recipe, baseline_id=baseline_id,
                            identity=identity, commit=version if config.agent.allow_patches else None,
                            smoke=SmokeTest(data=data, tokenizer=tokenizer), sandbox=config.sandbox)
    proposer = AgentProposer(config.space, study, store, context, config.agent, say=say)
    for key in SECRET_ENV:
        os.environ.pop(key, None)
    return proposer


if __name__ == "__main__":
    sys.exit(main())
