"""The Optuna proposer: TPE over the search space (or, as a control for it, uniform random sampling), with the study
in the leaderboard's own database.

Trials are asked for with the define-by-run API (one suggest per knob), so their params are the full knob
vector; the proposal is the part that differs from the baseline. Proposals from elsewhere (a file, the agent)
go in with `enqueue_trial`, so TPE learns from every proposal whatever its source. A trial is told the
candidate's mean paired difference to the baseline at the first rung (lower is better), or FAIL when its runs
failed. Each trial carries the experiment id it became as a user attribute, which is how a resumed search
finds the trials it still owes an answer.

Steering (harness/steering.py): on a plateau, trials are sampled uniformly at random (TPE's exploitation is what
stalled) until a promotion; a sample that turns a knob of a paused category is told PRUNED (TPE learns to avoid it)
and its other knobs, if any, are entered as a trial of their own.
"""

from __future__ import annotations

import optuna

from harness.proposers import Proposal, Proposer
from search_spaces import KNOBS, Space

PAUSED_DRAWS = 50  # samples drawn before giving up on one that avoids the paused categories


def storage_for(db_url: str) -> optuna.storages.RDBStorage:
    url = db_url
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}


class OptunaProposer(Proposer):
    name = "optuna"

    def __init__(self, space: Space, db_url: str, study_name: str, seed: int = 0, sampler: str = "tpe"):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        if sampler != "tpe":
            self.name = sampler  # what the experiments it proposes record as their proposer
        make_sampler = SAMPLERS[sampler]
        self.study = optuna.create_study(study_name=study_name, storage=storage_for(db_url), direction="minimize",
                                         sampler=make_sampler(seed=seed), load_if_exists=True)
        # A resumed study draws on from where it stopped: a sampler seeded as before would restart its random
        # start-up sequence and propose trial 0 again. A new study is seeded with `seed` exactly.
        if self.study.trials:
            self.study.sampler = make_sampler(seed=seed + len(self.study.trials))
        self.sampler, self.seed = self.study.sampler, seed  # the sampler a plateau interrupts
        self.paused: set[str] = set()  # categories of change not to propose (steer)
        self._asked: dict[int, optuna.Trial] = {}

    def enqueue(self, proposal: Proposal) -> None:
        """Put an outside proposal into the study: the next ask() returns it with exactly these params."""
        attrs = {"proposer": proposal.proposer, "rationale": proposal.rationale or "", "extra": proposal.extra,
                 "tweaks": proposal.tweaks}
        self.study.enqueue_trial(self.space.params(proposal.tweaks), user_attrs=attrs, skip_if_exists=False)

    @property
    def exploring(self) -> bool:
        """Sampling at random because of a plateau (steer), where the study's own sampler would be TPE."""
        return self.study.sampler is not self.sampler

    def steer(self, course) -> None:
        self.paused = set(course.paused)
        if course.stalled_for and not isinstance(self.study.sampler, optuna.samplers.RandomSampler):
            self.study.sampler = optuna.samplers.RandomSampler(seed=self.seed + len(self.study.trials))
        elif not course.stalled_for:
            self.study.sampler = self.sampler

    def ask(self) -> tuple[optuna.Trial, dict] | None:
        """A trial and its tweaks that turn no knob of a paused category (None: none found in PAUSED_DRAWS draws)."""
        for _ in range(PAUSED_DRAWS):
            trial = self.study.ask()
            tweaks = self.space.suggest(trial)
            if "tweaks" in trial.user_attrs or not self.paused:
                return trial, tweaks
            kept = {k: v for k, v in tweaks.items() if KNOBS[k].category not in self.paused}
            if len(kept) == len(tweaks):
                return trial, tweaks
            trial.set_user_attr("paused", sorted({KNOBS[k].category for k in tweaks} & self.paused))
            self.study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
            if kept:
                self.study.enqueue_trial(self.space.params(kept), user_attrs={"tweaks": kept}, skip_if_exists=False)
        return None

    def propose(self, n: int, remaining: int | None = None) -> list[Proposal]:
        out = []
        for _ in range(n):
            asked = self.ask()
            if asked is None:
                break
            trial, tweaks = asked
            self._asked[trial.number] = trial
            attrs = trial.user_attrs
            if "tweaks" in attrs:  # an enqueued proposal: exactly what was proposed, whatever its size
                tweaks = self.space.validate(attrs["tweaks"])
            proposer = attrs.get("proposer", self.name)
            sampled = "TPE sample" if self.name == "optuna" else "random sample"
            if self.exploring:
                sampled = "random sample, exploring after a plateau"
            rationale = attrs.get("rationale") or f"{sampled} (Optuna trial {trial.number})"
            out.append(Proposal(tweaks=tweaks, proposer=proposer, rationale=rationale, extra=dict(attrs.get("extra") or {}),
                                trial=trial.number))
        return out

    def link(self, trial: int, experiment_id: str) -> None:
        self._asked[trial].set_user_attr("experiment_id", experiment_id)

    def observe(self, experiment_id: str, value: float | None) -> None:
        """Tell every still-running trial that became this experiment how it did."""
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("experiment_id") == experiment_id:
                if value is None:
                    self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                else:
                    self.study.tell(t.number, value)

    def resume(self, proposed) -> None:
        self.abandon_unlinked()

    def abandon_unlinked(self) -> int:
        """On resume: fail trials that were asked but never became an experiment (killed in between)."""
        stale = [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                 if "experiment_id" not in t.user_attrs]
        for t in stale:
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        return len(stale)
