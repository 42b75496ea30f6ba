"""`python -m harness.search`'s command line, resolved once into a typed `SearchConfig`: every flag checked, the tier
and its ladder as this search runs them, the recipe, the space, the proposer and its settings, the outside proposals.
Bad input is one line (`SearchError`, exit code 2) before anything is recorded."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from experiments.catalog import Recipe, Rung, Tier, load_recipe, load_tier
from harness import sandbox
from harness.executors import EXECUTORS, SlurmOptions
from harness.preparation import BadInput
from harness.proposers import Proposal
from harness.steering import SteeringConfig
from model.cli import ArgumentParser
from search_spaces import SPACES, SearchSpaceError, Space


class SearchError(BadInput):
    """Bad input or an unrecoverable search state; one line for the user, exit code 2."""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m harness.search", description="Search for changes that beat the baseline on a depth ladder.")
    p.add_argument("--tier", default=None, help="cpu | gpu | path/to/tier.toml (default: gpu when CUDA is available, else cpu)")
    p.add_argument("--space", default="all", choices=sorted(SPACES), help="which knobs proposals may turn")
    p.add_argument("--proposer", default="auto", choices=["optuna", "random", "agent", "auto"],
                   help="auto = agent when ANTHROPIC_API_KEY is set, else optuna (TPE); random = uniform sampling "
                        "of the space (TPE's control)")
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
    p.add_argument("--plateau", type=int, default=6, metavar="N",
                   help="after N decisions in a row without a promotion, the proposer must leave the category it circled "
                        "in (the agent) or samples at random (Optuna) until a promotion; 0: never")
    p.add_argument("--failure-window", type=int, default=6, metavar="M",
                   help="the last M finished runs of a category of change looked at for failures")
    p.add_argument("--failure-share", type=float, default=0.5, metavar="F",
                   help="pause proposals of a category when more than this share of its last M runs failed; 1: never")
    p.add_argument("--pause-for", type=int, default=6, metavar="P",
                   help="a paused category opens again, on probation, after P more decisions on other kinds of change "
                        "(a new burst pauses it again); 0: paused for the rest of the search")
    p.add_argument("--insights-every", type=int, default=4, metavar="K",
                   help="the agent distils the evidence into insights after every K decisions and at the end (kept per "
                        "tier and space for the next search); 0: only at the end")
    p.add_argument("--dry-run", action="store_true",
                   help="print each rung's job command (and sbatch script on SLURM) with its batch, LRs, weight decay "
                        "and horizon, then exit: nothing is run, downloaded or recorded")
    p.add_argument("--allow-patches", action="store_true",
                   help="the agent may also propose code patches to the model's architecture and optimizer files "
                        "(tried in git worktrees, never in your tree; run in a sandbox, scored by the sealed evaluator)")
    p.add_argument("--unsafe-patches", action="store_true",
                   help="with --allow-patches on a machine without a sandbox (bubblewrap): run patched code without "
                        "one (it can then read your files and reach the network; its score is still sealed)")
    p.add_argument("--wandb", action="store_true",
                   help="log every training run to Weights & Biases (offline files in each run dir unless WANDB_API_KEY "
                        "or WANDB_MODE=online is set), grouped by this search, job type the experiment, tagged with "
                        "rung, seed and role")
    SlurmOptions.add_arguments(p, "rung")
    return p


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


def check_steering_args(args) -> SteeringConfig:
    """--plateau, --failure-window, --failure-share, --pause-for and --insights-every, checked."""
    plateau, window, share, every = args.plateau, args.failure_window, args.failure_share, args.insights_every
    if args.pause_for < 0:
        raise SearchError(f"--pause-for {args.pause_for}: expected a non-negative number of decisions "
                          "(0: paused for the rest of the search)")
    if plateau < 0:
        raise SearchError(f"--plateau {plateau}: expected a non-negative number of decisions (0: never)")
    if window < 1:
        raise SearchError(f"--failure-window {window}: expected a positive number of runs")
    if not 0 < share <= 1:
        raise SearchError(f"--failure-share {share}: expected a share in (0, 1] (1: never pause)")
    if every < 0:
        raise SearchError(f"--insights-every {every}: expected a non-negative number of decisions (0: only at the end)")
    return SteeringConfig(plateau=plateau, failure_window=window, failure_share=share, pause_for=args.pause_for)


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
    if args.allow_patches and not args.unsafe_patches and (why := sandbox.unavailable()):
        raise SearchError(f"--allow-patches: patched runs need a sandbox and there is none here: {why}. Install "
                          "bubblewrap, or pass --unsafe-patches to run the agent's code without one (it could then "
                          "read your files and reach the network)")
    if args.allow_patches:
        from model.provenance import code_version
        if code_version() == "unknown":
            raise SearchError("--allow-patches: this checkout is not a git repository (patches apply to a git worktree)")
        if "-dirty-" in code_version():
            raise SearchError("--allow-patches: model/ has uncommitted changes; commit them first (patches are applied "
                              "to a worktree of HEAD, and the baseline must run the same code)")


def search_name(args, tier: Tier, calibrate: bool = False) -> str:
    """--name, or TIER-SPACE (TIER-aa for A/A, TIER-calibration), with -seedsK for a seed base K."""
    kind = "calibration" if calibrate else "aa" if args.aa else args.space
    return args.name or f"{tier.name}-{kind}" + (f"-seeds{args.seed_base}" if args.seed_base else "")


@dataclass
class SearchConfig:
    """One search as its flags describe it, checked."""
    name: str
    tier: Tier                         # the ladder as this search runs it (--rungs, --seeds, budgets; A/A: first rung)
    recipe: Recipe
    space_name: str
    space: Space
    proposer: str                      # optuna | random | agent | aa | calibration
    trials: int                        # proposals to test (A/A: two nulls per replica)
    budget_hours: float | None
    parallel: int
    executor: str
    slurm: SlurmOptions
    db: str | None
    data: str | None                   # --data as given (None: $NANORESEARCH_DATA, else the default corpus)
    runs_dir: str | None
    seed_base: int = 0
    seed: int = 0                      # the proposer's random seed
    enqueued: list[Proposal] = field(default_factory=list)
    aa: int = 0                        # A/A: null proposals of each kind (0: not an A/A search)
    aa_controls: int = 1               # A/A: independent controls the nulls are split over (see harness.search.run_aa)
    first_replica: int = 1             # A/A: the number of this search's first null
    agent: Any = None                  # harness.proposers.agent.AgentConfig for --proposer agent
    sandbox: bool = True               # patched runs in the sandbox (False: --unsafe-patches)
    dry_run: bool = False              # --dry-run: print what would run, run nothing
    wandb: bool = False                # --wandb: every training run logs to Weights & Biases
    steering: SteeringConfig = field(default_factory=SteeringConfig)  # plateau and failure control
    insights_every: int = 4            # the agent distils insights after every K decisions (0: only at the end)
    flags: dict = field(default_factory=dict)  # the command line's values, recorded with the search

    def control(self, index: int, share: int, first_replica: int) -> SearchConfig:
        """The `index`-th of an A/A's independent controls: a search of its own with `share` nulls of each kind, on
        seed base max_seeds above the previous control's, its nulls numbered from `first_replica`."""
        name = f"{self.name}-{index + 1}of{self.aa_controls}"
        seed_base = self.seed_base + index * self.tier.statistics.max_seeds
        return replace(self, name=name, seed_base=seed_base, aa=share, aa_controls=1, trials=2 * share,
                       first_replica=first_replica,
                       flags={**self.flags, "name": name, "seed_base": seed_base, "aa": share, "aa_controls": 1})


def resolve(args, calibrate: bool = False) -> SearchConfig:
    """The search the flags describe. With `calibrate` (harness/calibrate.py): only the baseline and its nulls."""
    for flag in ("trials", "parallel"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SearchError(f"--{flag} {getattr(args, flag)}: expected a positive integer")
    if args.aa is not None and args.aa < 1:
        raise SearchError(f"--aa {args.aa}: expected a positive number of null proposals")
    if args.aa_controls is not None and not args.aa:
        raise SearchError(f"--aa-controls {args.aa_controls}: only with --aa N (it splits the A/A nulls over controls)")
    controls = 1
    if args.aa:
        controls = args.aa_controls if args.aa_controls is not None else math.ceil(args.aa / 2)
        if not 1 <= controls <= args.aa:
            raise SearchError(f"--aa-controls {controls}: expected 1 to {args.aa} (the --aa nulls of each kind are "
                              "split over the controls)")
    if args.budget_hours is not None and not args.budget_hours > 0:
        raise SearchError(f"--budget-hours {args.budget_hours}: expected a positive number")
    if args.seed_base < 0:
        raise SearchError(f"--seed-base {args.seed_base}: expected a non-negative integer")
    steering = check_steering_args(args)
    tier = resolve_tier(args)
    parallel = args.parallel if args.parallel is not None else tier.parallel
    if args.aa:  # a null is falsely promoted the moment it passes the first rung: no need to train it deeper
        tier = replace(tier, rungs=tier.rungs[:1])
    recipe = load_recipe(args.recipe)
    space = Space.named(args.space, {**tier.baseline, **recipe.overrides})
    enqueued = read_enqueue_file(args.enqueue, space) if args.enqueue else []
    proposer = args.proposer
    if proposer == "auto":
        proposer = "agent" if os.environ.get("ANTHROPIC_API_KEY") else "optuna"
    if args.aa:
        proposer = "aa"
    if calibrate:
        proposer = "calibration"
    agent = None
    if proposer == "agent":
        check_agent_args(args)
        from harness.proposers.agent import DEFAULT_MODEL, AgentConfig
        agent = AgentConfig(model=args.agent_model or DEFAULT_MODEL, max_tokens=args.agent_max_tokens,
                            temperature=args.agent_temperature, batch=args.agent_batch,
                            budget_usd=args.agent_budget_usd, allow_patches=args.allow_patches)
    elif args.allow_patches:
        raise SearchError(f"--allow-patches: only the agent proposes patches (got --proposer {args.proposer}"
                          f"{' with --aa' if args.aa else ''}); use --proposer agent")
    unsafe = getattr(args, "unsafe_patches", False)
    if unsafe and not args.allow_patches:
        raise SearchError("--unsafe-patches: only with --allow-patches (it runs the agent's patches without a sandbox)")
    if enqueued and proposer in ("aa", "calibration"):
        raise SearchError(f"--enqueue {args.enqueue}: only a search with a proposer (optuna, agent) takes outside "
                          "proposals; an A/A or calibration search proposes only nulls")
    try:
        slurm = SlurmOptions.from_args(args)
    except ValueError as e:
        raise SearchError(str(e)) from None
    flags = {**{k: v for k, v in vars(args).items() if k != "slurm_setup"}, "parallel": parallel}
    return SearchConfig(name=search_name(args, tier, calibrate), tier=tier, recipe=recipe, space_name=args.space,
                        space=space, proposer=proposer, trials=2 * (args.aa or 0) if args.aa or calibrate else args.trials,
                        budget_hours=args.budget_hours, parallel=parallel, executor=args.executor, slurm=slurm,
                        db=args.db, data=args.data, runs_dir=args.runs_dir, seed_base=args.seed_base, seed=args.seed,
                        enqueued=enqueued, aa=args.aa or 0, aa_controls=controls, agent=agent, sandbox=not unsafe,
                        dry_run=bool(getattr(args, "dry_run", False)), wandb=bool(getattr(args, "wandb", False)),
                        steering=steering, insights_every=args.insights_every, flags=flags)
