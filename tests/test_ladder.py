"""The ladder's statistics, the search space, the catalog of tiers, job commands and outcome classification."""

import json

import optuna
import pytest

from experiments.catalog import CatalogError, Rung, Statistics, load_recipe, load_tier, load_track
from harness.executors import Executor, SlurmOptions
from harness.experiment import Experiment
from harness.jobs import Job
from harness.ladder import decide
from harness.noise import Spread
from harness.runs import classify
from search_spaces import KNOBS, SPACES, SearchSpaceError, Space

STATS = Statistics(alpha=0.05, min_effect=0.002, max_seeds=4, futility=0.5)


# --- decisions (the statistics themselves: tests/test_noise.py) ---------------------------------------------

def test_decisions():
    base = {0: 2.50, 1: 2.52, 2: 2.49}
    null = Spread.of_null([0.004, -0.004, 0.004])
    better = decide({0: 2.47, 1: 2.49, 2: 2.46}, base, STATS, kind="structural", null=null)
    assert better.verdict == "promote" and better.p_value < 0.05 and better.deltas == pytest.approx({0: -0.03, 1: -0.03, 2: -0.03})
    assert better.kind == "structural" and better.mde is not None and better.test.floored
    worse = decide({0: 2.52, 1: 2.55, 2: 2.50}, base, STATS, null=null)
    assert worse.verdict == "reject" and worse.p_value > 0.5
    borderline = decide({0: 2.497, 1: 2.514, 2: 2.486}, base, STATS, null=null)
    assert borderline.verdict == "more_seeds" and "adding seed 4" in borderline.reason
    capped = decide({0: 2.497, 1: 2.514, 2: 2.486, 3: 2.5}, {**base, 3: 2.503}, STATS, null=null)
    assert capped.verdict == "reject" and "seed cap" in capped.reason
    failed = decide({0: 2.40, 1: None}, base, STATS, null=null, failed="seed 1 diverged")
    assert failed.verdict == "reject" and "diverged" in failed.reason
    lonely = decide({0: 2.3}, {0: 2.5}, STATS)  # one pair, no null: cannot judge yet
    assert lonely.verdict == "more_seeds" and lonely.p_value is None


def test_a_decision_uses_the_null_of_its_own_kind():
    # The same deltas: resolved against a parametric null (a tiny spread), not against a structural one.
    base = {0: 2.50, 1: 2.52, 2: 2.49}
    cand = {0: 2.4945, 1: 2.5148, 2: 2.4847}  # about -0.005 on each slot
    parametric = decide(cand, base, STATS, kind="parametric", null=Spread.of_null([0.0003, -0.0002, 0.0004]))
    structural = decide(cand, base, STATS, kind="structural", null=Spread.of_null([0.008, -0.006, 0.007]))
    assert parametric.verdict == "promote" and structural.verdict != "promote"
    assert parametric.mde < 0.003 < structural.mde


# --- the search space ----------------------------------------------------------------------------------------

def test_space_validation():
    space = Space.named("architecture", {"matrix_lr": 0.08})
    assert space.validate({"smear": False, "qk_scale": 1.2, "softcap": 15}) == {"smear": False}  # baseline values drop
    assert space.validate({"n_kv_head": 1, "rope_base": 10000}) == {"n_kv_head": 1, "rope_base": 10000.0}
    for bad, needle in [({"qk_scale": 9.0}, "'qk_scale'=9.0: expected a value in [0.8, 2]"),
                        ({"matrix_lr": 0.01}, "not in the 'architecture' space"),
                        ({"bogus": 1}, "unknown knob 'bogus'"),
                        ({"smear": 1}, "expected true or false"),
                        ({"window_pattern": "SXL"}, "expected one of"),
                        ({"ns_steps": 4.5}, "not in the 'architecture' space")]:
        with pytest.raises(SearchSpaceError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            space.validate(bad)
    with pytest.raises(SearchSpaceError, match="an integer"):
        Space.named("optimizer").validate({"ns_steps": 4.5})
    with pytest.raises(SearchSpaceError, match="unknown search space"):
        Space.named("everything")


def test_every_knob_sets_a_config_field_and_spaces_cover_them():
    assert set(SPACES["all"]) == set(KNOBS) == set(SPACES["architecture"]) | set(SPACES["optimizer"])
    from model.config import field_owner
    for knob in KNOBS.values():
        field_owner(knob.name)
        assert knob.config in ("model", "optim", "train") and knob.doc
        if knob.type in ("float", "logfloat", "int") and knob.default is not None:
            assert knob.low <= knob.default <= knob.high, knob.name  # nanochat's value is inside the range


def test_a_knob_takes_its_doc_from_its_config_field_and_searches_only_legal_values():
    from model.config import config_field
    from search_spaces.knobs import Knob, _check
    assert KNOBS["qk_scale"].doc == config_field("qk_scale").metadata["doc"] != ""
    assert KNOBS["n_kv_head"].doc.startswith("key/value heads: null")  # its own: null is a value of the knob only
    for knob, needle in [(Knob("qk_scale", "float", "parametric", -1.0, 2.0), r"\[-1.0\] outside .*\(a positive number\)"),
                         (Knob("ns_steps", "int", "structural", 0, 8), r"\[0\] outside .*an integer in \[1, 12\]"),
                         (Knob("orthogonalizer", "categorical", "structural", choices=("svd",)), "one of polar_express"),
                         (Knob("window_pattern", "categorical", "structural", choices=("SXL",)), "string of S and L")]:
        with pytest.raises(ValueError, match=needle):
            _check(knob)
    _check(Knob("qk_scale", "float", "parametric", 0.1, 5.0))  # a wider search range, still legal


def test_optuna_suggestions_are_sparse_and_enqueued_proposals_round_trip():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = Space.named("all")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for i in range(12):
        trial = study.ask()
        tweaks = space.suggest(trial)
        assert len(tweaks) <= Space.MAX_TWEAKS
        space.validate(tweaks)
        study.tell(trial, float(i))
    wanted = {"smear": False, "qk_scale": 1.5}
    study.enqueue_trial(space.params(wanted))
    assert space.suggest(study.ask()) == wanted


def test_a_resumed_optuna_study_does_not_propose_its_first_trial_again(tmp_path):
    from harness.proposers.optuna_tpe import OptunaProposer
    space, url = Space.named("all"), f"sqlite:///{tmp_path / 'study.db'}"
    first = OptunaProposer(space, url, "s", seed=0)
    proposed = [first.propose(1)[0] for _ in range(2)]
    for p in proposed:
        first.study.tell(p.trial, 0.01)
    again = OptunaProposer(space, url, "s", seed=0)  # the search restarted
    resumed = again.propose(1)[0]
    assert resumed.tweaks not in [p.tweaks for p in proposed] and resumed.trial == 2
    fresh = OptunaProposer(space, f"sqlite:///{tmp_path / 'other.db'}", "s", seed=0)
    assert fresh.propose(1)[0].tweaks == proposed[0].tweaks  # a new study with the same seed is reproducible


def test_the_random_proposer_is_tpes_control(tmp_path):
    """--proposer random: the same study machinery with Optuna's RandomSampler; its experiments say who made them."""
    import optuna

    from harness.proposers.optuna_tpe import OptunaProposer
    from harness.search import make_proposer
    from harness.search_config import build_parser, resolve
    space, url = Space.named("all"), f"sqlite:///{tmp_path / 'study.db'}"
    rnd = OptunaProposer(space, url, "r", seed=0, sampler="random")
    assert isinstance(rnd.study.sampler, optuna.samplers.RandomSampler) and rnd.name == "random"
    proposals = rnd.propose(3)
    assert all(p.proposer == "random" and p.rationale.startswith("random sample") for p in proposals)
    for p in proposals:
        space.validate(p.tweaks)
        rnd.study.tell(p.trial, 0.0)
    again = OptunaProposer(space, url, "r", seed=0, sampler="random")  # resumed: a random sampler still
    assert isinstance(again.study.sampler, optuna.samplers.RandomSampler)
    from leaderboard import Store
    config = resolve(build_parser().parse_args(["--tier", "cpu", "--proposer", "random", "--db", url]))
    with Store(url) as store:
        made = make_proposer(config, store, 0, "", "", "")
    assert config.proposer == "random" and isinstance(made.study.sampler, optuna.samplers.RandomSampler)


def test_json_schema_lists_every_knob_with_its_range():
    schema = Space.named("optimizer", {"matrix_lr": 0.08}).json_schema()
    assert schema["additionalProperties"] is False and set(schema["properties"]) == set(SPACES["optimizer"])
    lr = schema["properties"]["matrix_lr"]
    assert lr["minimum"] == 0.003 and lr["maximum"] == 0.3 and "Baseline: 0.08" in lr["description"]
    assert schema["properties"]["orthogonalizer"]["enum"] == ["polar_express", "newton_schulz"]


# --- experiments, tiers and recipes ----------------------------------------------------------------------------

def test_shipped_tiers_recipes_and_tracks_load():
    cpu, gpu = load_tier("cpu"), load_tier("gpu")
    # Screening rungs are budgeted in compute, never in seconds; the top rung has a target for time-to-target.
    assert all(r.flops_budget and r.time_budget is None for r in cpu.rungs) and cpu.rungs[-1].target.startswith("val_bpb<=")
    assert all(r.seeds <= cpu.statistics.max_seeds for r in (*cpu.rungs, *gpu.rungs))
    assert [r.name for r in gpu.rungs] == ["d12s", "d12", "d24"] and gpu.rungs[-1].devices == 8
    assert gpu.rungs[0].flops_budget and gpu.rungs[0].tok_per_s is None  # the screen: compute-budgeted, uncalibrated
    assert gpu.rungs[-1].target == "core>=0.256525" and gpu.rungs[-1].param_data_ratio == 8.0  # nanochat's Run 6
    assert gpu.data == "climbmix"
    assert (cpu.parallel, gpu.parallel) == (2, 1)  # cpu: two single-thread jobs share the cores
    assert load_recipe("baseline").overrides == {}
    assert load_recipe("plain-gpt").overrides["smear"] is False
    for name in ("gpt2-8xh100", "cpu"):
        track = load_track(name)
        assert track.metric in ("val_bpb", "core") and track.target > 0


def test_bad_catalog_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[rungs]]\nname = "a"\ndepth = 2\nseeds = 2\n')
    with pytest.raises(CatalogError, match="bad.toml.*exactly one of flops_budget"):
        load_tier(str(bad))
    bad.write_text('name = "x"\nbogus = 1\n')
    with pytest.raises(CatalogError, match="bad.toml: unknown key 'bogus'"):
        load_tier(str(bad))
    bad.write_text('name = "x"\n[baseline]\nsmeer = false\n[[rungs]]\nname="a"\ndepth=1\nseeds=1\ntime_budget=5\n')
    with pytest.raises(CatalogError, match=r"bad.toml: \[baseline\]: unknown config field 'smeer'"):
        load_tier(str(bad))
    bad.write_text('name = "x"\nparallel = 0\n[[rungs]]\nname="a"\ndepth=1\nseeds=1\nnum_iterations=5\n')
    with pytest.raises(CatalogError, match="bad.toml: parallel = 0: expected a positive integer"):
        load_tier(str(bad))
    with pytest.raises(CatalogError, match="unknown tier 'tpu'"):
        load_tier("tpu")


def test_track_data_seed_is_checked(tmp_path):
    track = tmp_path / "t.toml"
    body = 'name = "t"\ndescription = "d"\ntier = "cpu"\ndepth = 2\nmetric = "val_bpb"\ntarget = 2.5\nhardware = "cpu"\ntime_budget = 60\n'
    track.write_text(body + "data_seed = 0\n")
    assert load_track(str(track)).data_seed == 0
    track.write_text(body + 'data_seed = "0"\n')
    with pytest.raises(CatalogError, match="t.toml: data_seed '0': expected an integer >= 0"):
        load_track(str(track))


# --- jobs and executors ------------------------------------------------------------------------------------

def make_job(tmp_path, devices=1, **rung_kw):
    rung = Rung(name="d24", depth=24, seeds=1, param_data_ratio=10.5, devices=devices, target="core>=0.256525",
                core_every=2000, **rung_kw)
    exp = Experiment(tweaks={"smear": False, "matrix_lr": 0.03}, tier="gpu")
    return Job(experiment_id=exp.id, rung=rung, slot=0, seed=exp.seed(0), run_dir=tmp_path / "run", train_tier="gpu",
               overrides=exp.overrides({"total_batch_size": 524288}, {}), data="fineweb-edu", timeout_s=3 * 3600)


def test_job_command_single_process_and_torchrun(tmp_path):
    single = make_job(tmp_path).command()
    assert single[1:3] == ["-m", "model.train"] and "--resume" in single
    for a, b in [("--depth", "24"), ("--tier", "gpu"), ("--param-data-ratio", "10.5"), ("--target", "core>=0.256525"),
                 ("--core-every", "2000"), ("--data", "fineweb-edu")]:
        assert single[single.index(a) + 1] == b
    sets = [single[i + 1] for i, a in enumerate(single) if a == "--set"]
    assert sets == ["matrix_lr=0.03", "smear=false", "total_batch_size=524288"]
    multi = make_job(tmp_path, devices=8).command()
    assert multi[0].endswith("torchrun") and multi[1:5] == ["--standalone", "--nproc_per_node=8", "-m", "model.train"]
    assert multi[5:] == single[3:]


def test_sbatch_script_for_an_8_gpu_rung(tmp_path):
    slurm = SlurmOptions(partition="h100", account="lab", cpus_per_task=64, setup=["source .venv/bin/activate"],
                         extra=SlurmOptions.parse_extra(["mem=0", "exclusive"]))
    executor = Executor("slurm", tmp_path / "submitit", slurm)
    script = executor.sbatch_script(make_job(tmp_path, devices=8))
    for line in ["#SBATCH --partition=h100", "#SBATCH --account=lab", "#SBATCH --gpus-per-node=8", "#SBATCH --nodes=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=64", "#SBATCH --time=185", "#SBATCH --mem=0",
                 "#SBATCH --exclusive", "#SBATCH --signal=USR2@120", "source .venv/bin/activate"]:
        assert line in script, f"{line!r} missing from:\n{script}"
    with pytest.raises(ValueError, match="--slurm-arg '=x'"):
        SlurmOptions.parse_extra(["=x"])


def test_outcomes_are_classified():
    assert classify({"returncode": 0}, None, {"status": "ok"}, "") == ("ok", None)
    assert classify({"returncode": 3}, None, {"status": "diverged", "reason": "loss became nan"}, "")[0] == "diverged"
    assert classify({"returncode": 1, "timed_out": True, "wall_s": 99}, None, None, "")[0] == "timeout"
    assert classify({"returncode": 1}, None, {"status": "failed", "reason": "x"}, "torch.OutOfMemoryError: CUDA out of memory")[0] == "oom"
    assert classify({"returncode": -9}, None, None, "")[0] == "oom"  # killed by the kernel's OOM killer
    assert classify({"returncode": 143}, None, {"status": "timeout", "reason": "terminated"}, "")[0] == "timeout"
    status, reason = classify({"returncode": 1}, None, {"status": "failed", "reason": "ValueError: boom"}, "")
    assert status == "crash" and reason == "ValueError: boom"
    status, reason = classify(None, RuntimeError("worker died"), None, None)
    assert status == "crash" and "worker died" in reason
    status, reason = classify({"returncode": 2}, None, None, "error: --set x: unknown\n")
    assert status == "crash" and "unknown" in reason and "exit 2" in reason
    # A full disk: the wrapper only says its result file is missing; the training log says why.
    log = ("step 10/100\nTraceback (most recent call last):\n  File \"model/checkpoint.py\", line 40, in save\n"
           "OSError: [Errno 28] No space left on device: 'runs/x/step_10.pt.tmp'\n")
    status, reason = classify(None, RuntimeError("UncompletedJobError: job 12 has not produced any output (result.pkl)"),
                              None, log)
    assert status == "crash" and reason.startswith("OSError: [Errno 28] No space left on device"), reason
    status, reason = classify(None, RuntimeError("worker died"), None, "Traceback...\nValueError: bad shape\n")
    assert status == "crash" and reason == "ValueError: bad shape"


def test_experiment_ids_are_content_hashes():
    a = Experiment(tweaks={"smear": False, "qk_scale": 1.5}, tier="cpu", code_version="abc")
    b = Experiment(tweaks={"qk_scale": 1.5, "smear": False}, tier="cpu", code_version="abc", proposer="agent", rationale="x")
    assert a.id == b.id  # order, proposer and rationale do not change what is run
    assert a.id != Experiment(tweaks=a.tweaks, tier="cpu", code_version="def").id
    assert a.id != Experiment(tweaks=a.tweaks, tier="gpu", code_version="abc").id
    base = Experiment(tweaks={}, tier="cpu", code_version="abc")
    replica = Experiment(tweaks={}, tier="cpu", code_version="abc", replica=2)
    assert replica.id != base.id and replica.seed(1) == 2001 and base.seed(1) == 1
    assert json.loads(json.dumps(a.spec)) == a.spec


def test_cpu_rungs_ask_slurm_for_no_gpus(tmp_path):
    job = make_job(tmp_path)
    job.train_tier = "cpu"
    script = Executor("slurm", tmp_path / "submitit", SlurmOptions(partition="cpu")).sbatch_script(job)
    assert "--gpus-per-node" not in script and "#SBATCH --partition=cpu" in script


def test_a_run_recorded_by_an_earlier_session_reads_as_an_outcome():
    """A resumed search (and a resumed calibration's cost table) reads restored runs as Outcomes: the numbers of the
    row, its wall time from its start and finish, its curve left in the database until asked for."""
    from datetime import UTC, datetime, timedelta

    from harness.runs import Outcome
    start = datetime(2026, 1, 1, tzinfo=UTC)
    row = {"id": 7, "status": "ok", "reason": None, "val_bpb": 1.25, "flops": 3.0e12, "tokens": 5000, "tok_per_s": 900.0,
           "core": None, "loaded": False, "started_at": start, "finished_at": start + timedelta(seconds=42)}
    outcome = Outcome.from_row(row)
    assert (outcome.ok, outcome.val_bpb, outcome.tok_per_s, outcome.wall_s, outcome.run_id) == (True, 1.25, 900.0, 42.0, 7)
    assert outcome.result == {"val_bpb": 1.25, "flops": 3.0e12, "tokens": 5000, "tok_per_s": 900.0}
    assert outcome.points == [] and outcome.loaded is False
    assert Outcome.from_row({**row, "status": "crash", "reason": "boom", "started_at": None}).wall_s is None


def test_the_pool_puts_running_jobs_progress_on_their_rows_and_the_heartbeat_says_where_they_are(tmp_path):
    from harness.pool import JobPool, Running
    from harness.search import running_line
    from leaderboard import Experiment as Recorded
    from leaderboard import Run, Store
    from model.run_dir import write_progress

    job, quiet = make_job(tmp_path / "a"), make_job(tmp_path / "b")
    quiet = Job(**{**quiet.__dict__, "slot": 1, "seed": job.seed + 1})
    store = Store(f"sqlite:///{tmp_path / 'lb.db'}")
    for j in (job, quiet):
        store.record_run(Run(experiment_id=j.experiment_id, rung=j.rung.name, seed=j.seed, status="running"),
                         experiment=Recorded(id=j.experiment_id, name="x", proposer="test"))
    pool = JobPool(None, store)
    for j in (job, quiet):
        pool.running[(j.experiment_id, j.rung.name, j.slot)] = Running(j, None, None, 0.0)
    job.run_dir.mkdir(parents=True)
    write_progress(job.run_dir, {"step": 120, "of": 300, "val_bpb": 2.4133, "tok_per_s": 1712.4, "train_loss": 3.1})
    [(seen, progress)] = pool.progress()  # the other job has written no progress yet: left out
    assert seen is job and progress["step"] == 120
    row = {r["seed"]: r for r in store.runs(experiment_id=job.experiment_id)}
    assert (row[job.seed]["steps"], row[job.seed]["val_bpb"], row[job.seed]["tok_per_s"]) == (120, 2.4133, 1712.4)
    assert row[quiet.seed]["steps"] is None
    assert running_line(job, progress, "abc (smear=False)") == \
        f"d24 seed {job.seed} of abc (smear=False) step 120/300, val_bpb 2.4133, 1,712 tok/s"
