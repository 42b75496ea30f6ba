"""`python -m harness.search` end to end on tiny models: planted changes are promoted or rejected as they should,
a failed job never stops the search, kill -9 then rerun resumes without repeating or losing runs, A/A mode
reports its false-promotion rate, and bad input is one line."""

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leaderboard import Store
from tests.conftest import tiny_tier

REPO = Path(__file__).resolve().parents[1]

# Every test here starts training subprocesses (harness.search): deselect with -m "not slow" for a quick loop.
pytestmark = pytest.mark.slow

# The ladder's part of the tier; the [baseline] (with the unembedding LR a test cripples) comes from tiny_tier.
TINY_RUNGS = """
[statistics]
alpha = 0.05
min_effect = 0.0
max_seeds = 3
[[rungs]]
name = "d1"
depth = 1
num_iterations = {iterations}
seeds = 2
[[rungs]]
name = "d2"
depth = 2
num_iterations = {iterations}
seeds = 2
target = "val_bpb<=4.5"
"""


@pytest.fixture
def workdir(tmp_path, tiny_tokenizer):  # tiny_tokenizer: the cached tokenizer the tier's settings resolve to
    return tmp_path


def write_tier(dirpath: Path, unembedding_lr=0.1, iterations=30, eval_every=0) -> Path:
    path = dirpath / "tiny.toml"
    path.write_text(tiny_tier("test tier: depth 1 then 2, a few dozen steps", TINY_RUNGS.format(iterations=iterations),
                              unembedding_lr=unembedding_lr, eval_every=eval_every))
    return path


def search_cmd(workdir, shared_data, *extra):
    return [sys.executable, "-m", "harness.search", "--db", f"sqlite:///{workdir / 'lb.db'}",
            "--runs-dir", str(workdir / "runs"), "--data", str(shared_data), *extra]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_search(workdir, shared_data, *extra, timeout=600):
    return subprocess.run(search_cmd(workdir, shared_data, *extra), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env())


def test_planted_changes_are_promoted_or_rejected_and_failures_do_not_stop_the_search(workdir, shared_data, monkeypatch):
    # The baseline's lm_head LR is crippled (0.004): restoring it is a real improvement (measured: -0.34 bpb at
    # 30 steps, seed spread ~0.02), starving it further a real regression (+0.09), and n_kv_head=2 cannot
    # build with one attention head (a crash).
    tier = write_tier(workdir, unembedding_lr=0.004, eval_every=10)  # evaluations make learning curves
    planted = workdir / "planted.json"
    planted.write_text(json.dumps([
        {"tweaks": {"unembedding_lr": 0.1}, "rationale": "undo the crippled lm_head LR"},
        {"tweaks": {"unembedding_lr": 0.001}, "rationale": "starve lm_head"},
        {"tweaks": {"n_kv_head": 2}, "rationale": "more kv heads than query heads"},
    ]))
    proc = run_search(workdir, shared_data, "--tier", str(tier), "--trials", "3", "--proposer", "optuna",
                      "--enqueue", str(planted), "--name", "planted", timeout=900)  # 19 runs: ~3 min alone, 10+ loaded
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "structural null spread at d1" in out and "parametric null spread at d1" in out
    assert "search 'planted' finished" in out
    store = Store(f"sqlite:///{workdir / 'lb.db'}")
    search = store.find_search("planted")
    exps = {e["rationale"]: e for e in store.experiments(search_id=search["id"])}
    good, bad, broken = (exps[r]["id"] for r in ("undo the crippled lm_head LR", "starve lm_head", "more kv heads than query heads"))
    decisions = store.decisions(search_id=search["id"])
    first = {d["experiment_id"]: d for d in sorted(decisions, key=lambda d: d["id"]) if d["from_rung"] == "d1" and d["verdict"] != "more_seeds"}
    assert first[good]["verdict"] == "promote" and first[good]["to_rung"] == "d2"
    assert first[good]["mean_delta"] < 0 and first[good]["p_value"] < 0.05 and first[good]["n"] >= 2
    # Each decision is made against its kind's noise and says what it could detect and what it is worth in compute.
    assert first[good]["kind"] == "parametric" and first[broken]["kind"] == "structural"
    assert 0 < first[good]["mde"] < abs(first[good]["mean_delta"]) and first[good]["df"] >= 1
    assert first[good]["compute_multiplier"] > 1  # the baseline needs more compute to get where the fix got
    parametric = store.null_spread("planted", "d1", "parametric")
    assert first[good]["noise_floor"] == pytest.approx(parametric["std"])
    assert first[bad]["verdict"] == "reject" and first[bad]["mean_delta"] > 0
    # Why, in words: the sentence the terminal printed is the one the database keeps (and the dashboard shows).
    for d in (first[good], first[bad]):
        assert d["reason"] and f": {d['reason']}" in out and f"{d['mean_delta']:+.4f} bpb vs the baseline" in d["reason"]
    assert first[broken]["verdict"] == "reject"
    assert any(d["experiment_id"] == good and d["from_rung"] == "d2" for d in decisions)  # tested on the next rung
    # The summary sets the estimate that promoted it beside the next rung's fresh one (the winner's curse, measured).
    again = [d for d in decisions if d["experiment_id"] == good and d["from_rung"] == "d2"][-1]
    assert (f"replication of {good}: promoted at d1 on {first[good]['mean_delta']:+.4f} ± "
            f"{first[good]['std_error']:.4f} (n={first[good]['n']}); at d2 {again['mean_delta']:+.4f}") in out
    crashed = store.runs(experiment_id=broken, details=True)
    assert crashed and all(r["status"] == "crash" for r in crashed)
    assert any("n_kv_head=2" in (r.get("log_tail") or "") for r in crashed)  # why it failed is recorded
    noise = store.null_spread("planted", "d1", "structural")
    assert noise and noise["n"] == 2 and noise["std"] > 0  # two null pairs: the baseline and itself, other init
    assert parametric["n"] == 2 and 0 < parametric["std"]  # the baseline and itself with matrix_lr x 1.001
    null_runs = [r for r in store.runs(search_id=search["id"]) if r["seed"] >= 999000]
    assert {(r["rung"], r["seed"]) for r in null_runs} >= {("d1", 999000), ("d1", 999001)}
    null_config = json.loads((Path(null_runs[0]["run_dir"]) / "config.json").read_text())
    assert null_config["data_seed"] == null_config["seed"] - 999000  # same data order as the baseline's slot
    base_runs = [r for r in store.runs(search_id=search["id"]) if r["experiment_id"] not in (good, bad, broken)
                 and r["seed"] < 999000]
    assert {(r["rung"], r["seed"]) for r in base_runs} >= {("d1", 0), ("d1", 1), ("d2", 0), ("d2", 1)}
    assert all(r["status"] != "running" for r in store.runs(search_id=search["id"]))
    assert "promotions: 1 of 3" in out and f"  best: {good} " in out  # the promoted change is the best
    summary_line = next(line for line in out.splitlines() if line.strip().startswith(good))
    top = [d for d in sorted(decisions, key=lambda d: d["id"]) if d["experiment_id"] == good and d["from_rung"] == "d2"][-1]
    assert "parametric" in summary_line and f"{top['mde']:.4f}" in summary_line and " x" in summary_line
    # The Optuna study learned from the planted proposals (they went in with enqueue_trial).
    import optuna
    study = optuna.load_study(study_name="nanoresearch:planted", storage=f"sqlite:///{workdir / 'lb.db'}")
    told = {t.user_attrs.get("experiment_id"): t for t in study.trials}
    assert told[good].value < 0 < told[bad].value and told[broken].state == optuna.trial.TrialState.FAIL
    # The terminal and the dashboard count the same compute for the search.
    terminal = re.search(r"search 'planted' finished: .*compute ([0-9.]+) device-hours", out).group(1)
    from tests.test_dashboard import metrics, render
    page = render(monkeypatch, f"sqlite:///{workdir / 'lb.db'}", page="search", query={"search": "planted"})
    assert metrics(page)["device-hours"] == terminal and float(terminal) > 0
    check_export(workdir, store, decisions, good, bad, broken, out)


def check_export(workdir, store, decisions, good, bad, broken, out):
    """`python -m leaderboard export`: results.tsv holds the decisions' own numbers; report.md parses as Markdown
    whose tables have the rows they should; the summary the terminal printed is the one kept for the report."""
    import csv

    from markdown_it import MarkdownIt
    db = f"sqlite:///{workdir / 'lb.db'}"
    proc = subprocess.run([sys.executable, "-m", "leaderboard", "export", "planted", "--db", db, "--out",
                           str(workdir / "card")], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["wrote", str(workdir / "card" / "results.tsv"), "wrote", str(workdir / "card" / "report.md")]
    assert "report card and results.tsv: python -m leaderboard export planted --db " in out
    search = store.find_search("planted")
    assert search["summary"] and search["summary"].strip() in out

    rows = list(csv.DictReader((workdir / "card" / "results.tsv").open(), delimiter="\t"))
    at = {(r["experiment"], r["rung"]): r for r in rows}
    last = {(d["experiment_id"], d["from_rung"]): d for d in decisions}
    for key in ((good, "d1"), (good, "d2"), (bad, "d1")):
        assert float(at[key]["mean_d"]) == pytest.approx(last[key]["mean_delta"], rel=1e-12)
        assert at[key]["verdict"] == last[key]["verdict"] and at[key]["reason"] == last[key]["reason"]
        assert int(at[key]["n"]) == last[key]["n"] and at[key]["role"] == "candidate"
    assert at[(broken, "d1")]["ok"] == "0" and int(at[(broken, "d1")]["runs"]) > 0 and at[(broken, "d1")]["val_bpb_mean"] == ""
    ok_good = [r["val_bpb"] for r in store.runs(experiment_id=good, rung="d1") if r["status"] == "ok"]
    assert float(at[(good, "d1")]["val_bpb_mean"]) == pytest.approx(sum(ok_good) / len(ok_good))
    roles = [r["role"] for r in rows]
    assert roles[0] == "baseline" and roles == sorted(roles, key=["baseline", "null", "candidate"].index)
    assert {r["rung"] for r in rows if r["role"] == "baseline"} == {"d1", "d2"} and roles.count("null") >= 2

    text = (workdir / "card" / "report.md").read_text()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables, current = [], None
    for t in tokens:
        if t.type == "table_open":
            current = []
        elif t.type == "tr_open" and current is not None:
            current.append([])
        elif t.type == "inline" and current is not None and current:
            current[-1].append(t.content)
        elif t.type == "table_close":
            tables.append(current)
            current = None
    experiments_table = next(x for x in tables if x[0][:3] == ["experiment", "role", "change"])
    assert len(experiments_table) == 1 + len(rows) and all(len(r) == 10 for r in experiments_table)
    funnel = next(x for x in tables if x[0][0] == "rung")
    assert funnel[1][:2] == ["d1", "3"] and funnel[1][3] == "1"  # 3 proposed at d1, 1 promoted
    decided = next(x for x in tables if x[0] == ["change", "rung", "decision", "why"])
    assert [r[2] for r in decided[1:]].count("promoted to d2") == 1
    assert f"Best: `unembedding_lr=0.1` (`{good}`)" in text and "## What the search printed at its end" in text


def count_launches(run_dir: Path) -> int:
    log = run_dir / "train.log"
    return log.read_text().count("\n$ ") if log.exists() else 0


def processes_naming(path: Path) -> list[str]:
    """The command lines of live processes that mention `path` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(path) in cmdline and state != "Z":
            out.append(f"{entry.name}: {cmdline}")
    return out


def test_kill_and_resume_leaves_no_duplicates_and_no_holes(workdir, shared_data):
    tier = write_tier(workdir, iterations=60)
    cmd = search_cmd(workdir, shared_data, "--tier", str(tier), "--trials", "2", "--rungs", "1", "--seed", "3",
                     "--name", "resumable")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db = f"sqlite:///{workdir / 'lb.db'}"
    deadline = time.time() + 300
    finished_before = []
    while time.time() < deadline:
        time.sleep(0.5)
        if (workdir / "lb.db").exists():
            runs = Store(db).runs()
            finished_before = [r for r in runs if r["status"] != "running"]
            if len(finished_before) >= 3 and any(r["status"] == "running" for r in runs):
                break
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the search dies mid-job
    proc.wait()
    assert len(finished_before) >= 3, "the search did not get far enough to be killed mid-way"
    # Its jobs notice within seconds: each stops its training (which saves a checkpoint) and exits. Nothing that
    # works in the search's runs dir is left: no submitit worker, no model.train.
    deadline = time.time() + 30
    while processes_naming(workdir / "runs") and time.time() < deadline:
        time.sleep(0.2)
    assert not processes_naming(workdir / "runs"), processes_naming(workdir / "runs")
    first_start = {r["id"]: r["started_at"] for r in Store(db).runs() if r["status"] == "running"}
    logs = [Path(r["run_dir"]) / "train.log" for r in Store(db).runs() if r["status"] == "running"]
    stopped = [log for log in logs if log.exists() and "is gone: stopping the training" in log.read_text()]
    assert stopped, "no job said it stopped its training"

    again = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming search 'resumable'" in again.stdout
    store = Store(db)
    runs = store.runs()
    keys = [(r["experiment_id"], r["rung"], r["seed"]) for r in runs]
    assert len(keys) == len(set(keys))  # no duplicates
    assert all(r["status"] == "ok" for r in runs)  # no holes: everything ran to the end
    for r in runs:  # a run the rerun finished keeps its first start (its compute is not under-counted)
        if r["id"] in first_start:
            assert r["started_at"] == first_start[r["id"]]
    search = store.find_search("resumable")
    candidates = [e for e in store.experiments(search_id=search["id"]) if e["proposer"] != "baseline"]
    assert len(candidates) == 2
    decided = {d["experiment_id"] for d in store.decisions(search_id=search["id"]) if d["verdict"] != "more_seeds"}
    assert {c["id"] for c in candidates} <= decided
    for r in finished_before:  # a run finished before the kill was never launched again
        assert count_launches(Path(r["run_dir"])) == 1, r["run_dir"]
    for c in candidates:  # the summary knows every decision, including those made before the kill
        line = next(line for line in again.stdout.splitlines() if line.strip().startswith(c["id"]))
        mean, p, mde = line.split()[4:7]
        assert mean[0] in "+-" and float(mean) == float(mean) and float(p) >= 0 and float(mde) > 0, line


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its file system is full; returns the file."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """`path` on a tmpfs of `size` for the block (mounting needs root, as CI has; skipped otherwise)."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def start_until_a_run_is_ok(cmd: list[str], db: str) -> subprocess.Popen:
    """Start a search and return once it has finished a run (or ended, or 300 s passed)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = Path(db.removeprefix("sqlite:///"))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if path.exists() and any(r["status"] == "ok" for r in Store(db).runs()):
            break
    return proc


def test_a_full_disk_fails_the_search_with_the_reason_and_a_rerun_after_freeing_space_finishes(workdir, shared_data):
    with small_tmpfs(workdir / "runs", "96m") as runs:
        tier = write_tier(workdir, iterations=60)
        cmd = search_cmd(workdir, shared_data, "--tier", str(tier), "--trials", "2", "--rungs", "1", "--seed", "3",
                         "--name", "fulldisk")
        db = f"sqlite:///{workdir / 'lb.db'}"
        proc = start_until_a_run_is_ok(cmd, db)
        filler = fill(runs)  # the runs' disk fills up while jobs train
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, out[-3000:] + err[-3000:]
        search = Store(db).find_search("fulldisk")
        assert search["status"] == "failed" and "No space left on device" in search["reason"], search
        assert "Traceback" not in err, err[-3000:]
        deadline = time.time() + 30
        while processes_naming(runs) and time.time() < deadline:
            time.sleep(0.2)
        assert not processes_naming(runs), processes_naming(runs)
        # No decision was made from a run the disk broke: the failure is the machine's, not the change's.
        broken = [r for r in Store(db).runs() if r["status"] != "ok"]
        decided = {d["experiment_id"] for d in Store(db).decisions(search_id=search["id"])}
        assert not any(r["experiment_id"] in decided and r["status"] == "crash" for r in broken)

        filler.unlink()
        again = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        store = Store(db)
        runs_rows = store.runs()
        keys = [(r["experiment_id"], r["rung"], r["seed"]) for r in runs_rows]
        assert len(keys) == len(set(keys)), keys
        assert all(r["status"] == "ok" for r in runs_rows), [(r["seed"], r["status"], r["reason"]) for r in runs_rows]
        final = store.find_search("fulldisk")
        assert final["status"] == "finished" and final["reason"] is None


def test_a_database_on_a_full_disk_is_one_line_and_a_rerun_after_freeing_space_records_every_run(workdir, shared_data):
    """The database's disk fills mid-search: the search cannot record anything more (not even that it failed), so
    it says so in one line, exits 1 and stops its jobs; every run that finished is still on disk, and the rerun
    after freeing space records them without training them again."""
    with small_tmpfs(workdir / "db", "16m") as dbdir:
        tier = write_tier(workdir, iterations=60)
        db = f"sqlite:///{dbdir / 'lb.db'}"
        cmd = [sys.executable, "-m", "harness.search", "--db", db, "--runs-dir", str(workdir / "runs"), "--data",
               str(shared_data), "--tier", str(tier), "--trials", "2", "--rungs", "1", "--seed", "3", "--name", "dbfull"]
        proc = start_until_a_run_is_ok(cmd, db)
        filler = fill(dbdir)
        out, err = proc.communicate(timeout=600)
        lines = err.strip().splitlines()
        assert proc.returncode == 1 and lines and lines[-1].startswith("error: search 'dbfull' failed:"), err[-3000:]
        assert "Traceback" not in err and "disk is full" in lines[-1], lines[-1]
        deadline = time.time() + 30
        while processes_naming(workdir / "runs") and time.time() < deadline:
            time.sleep(0.2)
        assert not processes_naming(workdir / "runs")
        finished_on_disk = {p.parent for p in (workdir / "runs").rglob("result.json")
                            if json.loads(p.read_text())["status"] == "ok"}

        filler.unlink()
        again = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        rows = Store(db).runs()
        keys = [(r["experiment_id"], r["rung"], r["seed"]) for r in rows]
        assert len(keys) == len(set(keys)) and all(r["status"] == "ok" for r in rows)
        for run_dir in finished_on_disk:  # recorded already, or by the rerun without training it again
            log = (run_dir / "train.log").read_text()
            assert count_launches(run_dir) == 1 or (count_launches(run_dir) == 2 and "nothing to do" in log), run_dir
        assert Store(db).find_search("dbfull")["status"] == "finished"


def test_aa_mode_reports_the_false_promotion_rate_of_each_kind(workdir, shared_data):
    """`--aa 3 --aa-controls 2`: two searches, each with a control of its own on disjoint seeds (the first with two
    nulls of each kind, the second with one); each null is judged against its own search's control, each search
    reports its rates, and the report over both counts every null with two bounds."""
    from scipy import stats
    tier = write_tier(workdir)
    # Two controls of tiny runs, one at a time: 10 min beside a benchmark's two training jobs on a 2-core machine,
    # and past the former 10-min limit in a CI run beside them. A hang guard, not a speed test.
    proc = run_search(workdir, shared_data, "--tier", str(tier), "--aa", "3", "--aa-controls", "2", "--seed-base", "10",
                      timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "A/A calibration at d1" in proc.stdout
    for kind in ("structural", "parametric"):
        assert re.search(rf"{kind} +\d of 2 null proposals promoted: false-promotion rate [\d.]+ \(95% upper bound", proc.stdout)
    # The structural nulls of the first search share one control: its report says how far it sits from their own
    # inits' mean.
    offset = re.search(r"structural control sits ([+-][\d.]+) bpb from the mean of the structural nulls' own inits on "
                       r"its first (\d) slots \(z = ([+-][\d.]+)\)", proc.stdout)
    assert offset and int(offset.group(2)) == 2, proc.stdout[-2000:]
    store = Store(f"sqlite:///{workdir / 'lb.db'}")
    assert not [r for r in store.runs() if r["rung"] == "d2"]  # nulls are judged at the first rung only
    # The seed base names the searches; the second starts max_seeds (3) above the first: disjoint seeds.
    searches = [store.find_search(f"tiny-aa-seeds10-{i}of2") for i in (1, 2)]
    assert [s["config"]["seed_base"] for s in searches] == [10, 13]
    promoted, replicas_seen = {"structural": [], "parametric": []}, []
    for search, base, count in zip(searches, (10, 13), (2, 1)):
        runs = [r for r in store.runs(search_id=search["id"])]
        val = {(r["experiment_id"], r["seed"]): r["val_bpb"] for r in runs}
        baseline_id = search["config"]["baseline_experiment_id"]
        baseline_seeds = {s for e, s in val if e == baseline_id}
        assert baseline_seeds >= {base, base + 1} and baseline_seeds <= set(range(base, base + 3))
        (null_id,) = {e for (e, s) in val if s >= 999000}  # the search's structural null
        replicas = [e for e in store.experiments(search_id=search["id"]) if e["proposer"] == "aa"]
        assert sorted(bool(e["tweaks"]) for e in replicas) == [False] * count + [True] * count
        replicas_seen += [e["extra"]["replica"] for e in replicas if not e["tweaks"]]
        for e in replicas:
            replica = e["extra"]["replica"]
            seeds = sorted(s for x, s in val if x == e["id"])
            if e["tweaks"]:  # parametric: one setting moved by a factor too small to matter, on the baseline's seeds
                (knob, value), = e["tweaks"].items()
                assert seeds[:2] == [base, base + 1]
            else:  # structural: its own initialisation, the baseline's data order
                assert seeds[:2] == [1000 * replica + base, 1000 * replica + base + 1] and all(s // 1000 == replica for s in seeds)
        for r in runs:  # every run of a search sees that search's data orders
            assert json.loads((Path(r["run_dir"]) / "config.json").read_text())["data_seed"] == r["seed"] % 1000
            assert r["seed"] % 1000 in range(base, base + 3)
        # Each null is judged against its kind's control: a parametric one against the baseline at its seed, a
        # structural one against the mean of the baseline and the structural null (two inits) on its slot, with
        # the structural null spread scaled to that control as its floor.
        spreads = {k: store.null_spread(search["name"], "d1", k)["std"] for k in ("structural", "parametric")}
        by_id = {e["id"]: e for e in replicas}
        decided = [d for d in store.decisions(search_id=search["id"]) if d["experiment_id"] in by_id]
        assert len({d["experiment_id"] for d in decided}) == 2 * count
        for d in decided:
            for seed, delta in d["deltas"].items():
                slot = int(seed) % 1000 - base
                control = val[(baseline_id, base + slot)]
                if d["kind"] == "structural":
                    control = (control + val[(null_id, 999000 + base + slot)]) / 2
                assert delta == pytest.approx(val[(d["experiment_id"], int(seed))] - control, abs=1e-12)
            floor = spreads["structural"] * math.sqrt(0.75) if d["kind"] == "structural" else spreads["parametric"]
            assert d["noise_floor"] == pytest.approx(floor)
            if d["verdict"] != "more_seeds":
                promoted[d["kind"]].append((base, d["verdict"] != "reject"))
        if count == 2:  # the offset: the control's mean over its first slots minus the mean of the nulls' runs
            nulls = [e["id"] for e in replicas if not e["tweaks"]]
            expected = sum((val[(baseline_id, base + s)] + val[(null_id, 999000 + base + s)]) / 2
                           - sum(val[(n, 1000 * by_id[n]["extra"]["replica"] + base + s)] for n in nulls) / 2
                           for s in (0, 1)) / 2
            assert float(offset.group(1)) == pytest.approx(expected, abs=1e-4)
    assert sorted(replicas_seen) == [1, 2, 3]  # numbered on across the controls: every null is another one
    assert "A/A calibration over 2 independent controls at d1 (seed bases 10, 13" in proc.stdout
    for kind, outcomes in promoted.items():
        k = sum(p for _, p in outcomes)
        per = [sum(p for b, p in outcomes if b == base) for base in (10, 13)]
        hit = sum(1 for x in per if x)
        line = re.search(rf"{kind} +(\d) of 3 null proposals promoted \(per control: {per[0]}/2 {per[1]}/1\): "
                         rf"false-promotion rate [\d.]+; 95% upper bound ([\d.]+) taking the nulls as independent, "
                         rf"([\d.]+) from the controls alone \({hit} of 2 promoted any\)", proc.stdout)
        assert line and int(line.group(1)) == k, proc.stdout[-2000:]
        assert float(line.group(2)) == pytest.approx(1.0 if k == 3 else stats.beta.ppf(0.95, k + 1, 3 - k), abs=0.006)
        assert float(line.group(3)) == pytest.approx(1.0 if hit == 2 else stats.beta.ppf(0.95, hit + 1, 2 - hit), abs=0.006)


@pytest.mark.parametrize("extra,needle", [
    (["--tier", "tpu"], "unknown tier 'tpu'"),
    (["--trials", "0"], "--trials 0"),
    (["--space", "everything"], "invalid choice"),
    (["--rungs", "a,b"], "--rungs 'a,b'"),
    (["--aa", "2", "--aa-controls", "3"], "--aa-controls 3: expected 1 to 2"),
    (["--aa-controls", "2"], "--aa-controls 2: only with --aa"),
])
def test_bad_input_is_one_line(workdir, shared_data, extra, needle):
    proc = run_search(workdir, shared_data, *extra, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


@pytest.mark.parametrize("command,needle", [
    (["harness.search", "--tier", "gpu"], "--tier gpu: tier 'gpu' trains on GPUs and this machine has no CUDA device"),
    (["harness.speedrun", "--track", "gpt2-8xh100", "--recipe", "nanochat"], "--track gpt2-8xh100: tier 'gpu' trains on GPUs"),
])
def test_the_gpu_tier_without_cuda_stops_before_fetching_its_corpus(tmp_path, command, needle):
    # No --data and no NANORESEARCH_DATA: the gpu tier's corpus (ClimbMix, 170 shards) would be fetched next.
    environment = {**{k: v for k, v in env().items() if k != "NANORESEARCH_DATA"}, "CUDA_VISIBLE_DEVICES": "",
                   "NANORESEARCH_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", *command, "--db", f"sqlite:///{tmp_path / 'lb.db'}",
                           "--runs-dir", str(tmp_path / "runs")], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=environment)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert "fetching" not in proc.stdout and not (tmp_path / "lb.db").exists() and not (tmp_path / "runs").exists()


def test_a_search_resumes_only_with_its_seed_base_and_thread_count(workdir, shared_data):
    tier = write_tier(workdir)
    Store(f"sqlite:///{workdir / 'lb.db'}").start_search("kept", tier="tiny", space="all", proposer="optuna",
                                                        config={"seed_base": 0, "parallel": 1})
    for extra, needle in [(["--seed-base", "5"], "--seed-base 5: search 'kept' was started with seed base 0"),
                          (["--parallel", "2"], "--parallel 2: search 'kept' was started with --parallel 1")]:
        proc = run_search(workdir, shared_data, "--tier", str(tier), "--name", "kept", *extra, timeout=120)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert not Store(f"sqlite:///{workdir / 'lb.db'}").runs()  # nothing was trained


ONE_RUNG = """
[statistics]
alpha = 0.05
min_effect = 0.0
max_seeds = 2
[[rungs]]
name = "d1"
depth = 1
num_iterations = 8
seeds = 2
"""


def test_a_search_takes_the_runs_another_search_made_the_same_way_and_trains_the_rest(workdir, shared_data):
    tier = workdir / "one.toml"
    tier.write_text(tiny_tier("test tier: one rung of 8 steps", ONE_RUNG))
    change = workdir / "change.json"
    change.write_text(json.dumps([{"tweaks": {"unembedding_lr": 0.05}, "rationale": "a change"}]))
    common = ["--tier", str(tier), "--trials", "1", "--proposer", "optuna", "--enqueue", str(change), "--parallel", "2"]
    first = run_search(workdir, shared_data, *common, "--name", "first")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    store = Store(f"sqlite:///{workdir / 'lb.db'}")
    made = {(r["experiment_id"], r["rung"], r["seed"]): r["val_bpb"] for r in store.runs()}
    assert len(made) == 8  # the baseline, its two nulls and the change, 2 seeds each
    # Halving the lm_head LR at 8 steps is worse (measured +0.071 +- 0.008): the summary says what would help, and
    # how to look at it.
    assert "  what next: none of the 1 changes passed d1.\n    No change improved on the baseline even on average" in first.stdout
    assert f"  dashboard: python -m leaderboard serve --db sqlite:///{workdir / 'lb.db'}" in first.stdout

    again = run_search(workdir, shared_data, *common, "--name", "again")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("] reuse d1 seed ") == 8 and "] start " not in again.stdout
    assert "8 runs taken from other searches, untrained" in again.stdout
    assert not (workdir / "runs" / "again").exists() or not list((workdir / "runs" / "again").glob("*/d1/seed*"))
    # The same runs, so the same decision.
    decided = {s: [(d["experiment_id"], d["verdict"], d["mean_delta"]) for d in store.decisions(
        search_id=store.find_search(s)["id"])] for s in ("first", "again")}
    assert decided["again"] == decided["first"] and decided["first"]
    assert {(r["experiment_id"], r["rung"], r["seed"]): r["val_bpb"] for r in store.runs()} == made

    # Another horizon, or a tier file of the same name with another baseline, is another run: trained, not taken
    # (the run key cannot hold both, so the first one stays in the database).
    longer = run_search(workdir, shared_data, *common, "--name", "longer", "--flops-budget", "3e9")
    assert longer.returncode == 0, longer.stdout[-3000:] + longer.stderr[-3000:]
    assert "] reuse " not in longer.stdout and longer.stdout.count("] start d1 seed ") == 8
    tier.write_text(tier.read_text().replace("embedding_lr = 3.0", "embedding_lr = 2.0"))
    edited = run_search(workdir, shared_data, *common, "--name", "edited")
    assert edited.returncode == 0, edited.stdout[-3000:] + edited.stderr[-3000:]
    assert "] reuse " not in edited.stdout and edited.stdout.count("] start d1 seed ") == 8


def test_a_wandb_search_leaves_one_offline_wandb_run_per_training_run_grouped_and_tagged(workdir, shared_data):
    from tests.wandb_offline import offline_runs
    tier = workdir / "one.toml"
    tier.write_text(tiny_tier("test tier: one rung of 8 steps", ONE_RUNG))
    change = workdir / "change.json"
    change.write_text(json.dumps([{"tweaks": {"unembedding_lr": 0.05}, "rationale": "a change"}]))
    wandb_env = {**{k: v for k, v in env().items() if not k.startswith("WANDB_")}, "WANDB_MODE": "offline"}
    proc = subprocess.run(search_cmd(workdir, shared_data, "--tier", str(tier), "--trials", "1", "--proposer", "optuna",
                                     "--enqueue", str(change), "--parallel", "2", "--name", "wb", "--wandb"),
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=wandb_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    store = Store(f"sqlite:///{workdir / 'lb.db'}")
    search = store.find_search("wb")
    runs = store.runs(search_id=search["id"])
    experiments = {e["id"]: e for e in store.experiments_by_id({r["experiment_id"] for r in runs})}
    baseline_id = search["config"]["baseline_experiment_id"]
    logged = offline_runs(workdir / "runs")
    assert len(runs) == 8 and len(logged) == len(runs)  # the baseline, two nulls and the change, 2 seeds each
    by_run = {(w["job_type"], w["config"]["rung"], w["config"]["seed"]): w for w in logged}
    assert len(by_run) == len(logged)
    roles = []
    for run in runs:
        w = by_run[(run["experiment_id"], run["rung"], run["seed"])]
        role = ("baseline" if run["experiment_id"] == baseline_id else
                "null" if experiments[run["experiment_id"]]["proposer"] == "noise-floor" else "candidate")
        roles.append(role)
        assert w["group"] == "wb" and w["config"]["experiment_id"] == run["experiment_id"]
        assert set(w["tags"]) == {"rung:d1", f"seed:{run['seed']}", role}
        # Its curve and end are W&B's: the last val_bpb logged is the one the leaderboard recorded.
        assert [h["step"] for h in w["history"]][-1] == 8 and w["summary"]["status"] == "ok"
        assert w["summary"]["final_val_bpb"] == pytest.approx(run["val_bpb"], abs=1e-6)
    assert sorted(roles) == ["baseline"] * 2 + ["candidate"] * 2 + ["null"] * 4


def test_enqueue_file_is_validated_against_the_space(workdir, shared_data):
    bad = workdir / "bad.json"
    bad.write_text(json.dumps([{"tweaks": {"qk_scale": 99}}]))
    proc = run_search(workdir, shared_data, "--enqueue", str(bad), "--space", "architecture", timeout=120)
    assert proc.returncode == 2 and "item 0: knob 'qk_scale'=99" in proc.stderr
    assert not (workdir / "lb.db").exists() or not Store(f"sqlite:///{workdir / 'lb.db'}").runs()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and `kill PID` or a scheduler
def test_ctrl_c_or_kill_stops_the_training_cleanly(workdir, shared_data, stop):
    tier = write_tier(workdir, iterations=5000)  # long enough to be interrupted mid-run
    cmd = search_cmd(workdir, shared_data, "--tier", str(tier), "--rungs", "1", "--trials", "1", "--name", "ctrlc")
    # As from a terminal: a test run started in the background (nohup, &) ignores SIGINT, and its children inherit that.
    proc = subprocess.Popen(cmd, cwd=REPO, env={**env(), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_dirs = lambda: list((workdir / "runs" / "ctrlc").glob("*/d1/seed*"))  # noqa: E731
    deadline = time.time() + 120
    def training() -> bool:  # past setup: model.train prints its header just before the loop
        return any("train: cpu" in (d / "train.log").read_text() for d in run_dirs() if (d / "train.log").exists())
    while time.time() < deadline and not training():
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(stop)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "interrupted" in out and "Traceback" not in out, out[-2000:]
    running = subprocess.run(["pgrep", "-f", str(workdir / "runs")], capture_output=True, text=True).stdout
    assert not running.strip(), f"training processes left behind: {running}"
    statuses = [json.loads((d / "result.json").read_text())["status"] for d in run_dirs()]
    assert statuses == ["timeout"]  # the one job running was stopped by SIGTERM and checkpointed
    assert (run_dirs()[0] / "checkpoints" / "LATEST").exists()
    store = Store(f"sqlite:///{workdir / 'lb.db'}")
    assert store.find_search("ctrlc")["status"] == "interrupted"
