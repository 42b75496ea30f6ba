"""The Optuna proposer: TPE over the search space (or, as a control for it, uniform random sampling), with the study
in the leaderboard's own database.

Trials are asked for with the define-by-run API (one suggest per knob), so their params are the full knob
vector; the proposal is the part that differs from the baseline. Proposals from elsewhere (a file, the agent)
go in with `enqueue_trial`, so TPE learns from every proposal whatever its source. A trial is told the
candidate's mean paired difference to the baseline at the first rung (lower is better), or FAIL when its runs
failed. Each trial carries the experiment id it became as a user attribute, which is how a resumed search
finds the trials it still owes an answer.
"""

from __future__ import annotations

import optuna

from harness.proposers import Proposal, Proposer
from search_spaces import Space


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
        self._asked: dict[int, optuna.Trial] = {}

    def enqueue(self, proposal: Proposal) -> None:
        """Put an outside proposal into the study: the next ask() returns it with exactly these params."""
        attrs = {"proposer": proposal.proposer, "rationale": proposal.rationale or "", "extra": proposal.extra,
                 "tweaks": proposal.tweaks}
        self.study.enqueue_trial(self.space.params(proposal.tweaks), user_attrs=attrs, skip_if_exists=False)

    def propose(self, n: int, remaining: int | None = None) -> list[Proposal]:
        out = []
        for _ in range(n):
            trial = self.study.ask()
            self._asked[trial.number] = trial
            tweaks = self.space.suggest(trial)
            attrs = trial.user_attrs
            if "tweaks" in attrs:  # an enqueued proposal: exactly what was proposed, whatever its size
                tweaks = self.space.validate(attrs["tweaks"])
            proposer = attrs.get("proposer", self.name)
            sampled = "TPE sample" if self.name == "optuna" else "random sample"
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
