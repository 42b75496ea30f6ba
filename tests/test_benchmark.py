"""The search benchmark (harness/benchmark.py): scoring a search under a rule against the truth on hand-made records,
the pool proposers, and `python -m harness.benchmark` end to end on tiny models (truth runs, searches that share
their runs, the report, its plots)."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.catalog import Rung, Statistics, Tier
from harness import benchmark, replay
from harness.proposers.pool import PoolAgent, PoolProposer
from tests.conftest import tiny_tier

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# Scoring on hand-made records

def hand_made() -> tuple[replay.Recorded, dict[str, benchmark.Truth]]:
    """A search of two rungs (3 seeds each, 10 s a run at d1, 30 s at d2) that proposed, in order: a null with a lucky
    first slot, a bad change, a good change, another good change (rejected by the ladder at d1)."""
    tier = Tier("t", "", "cpu", {}, (Rung("d1", 1, 3, num_iterations=10), Rung("d2", 2, 3, num_iterations=10)),
                Statistics(alpha=0.05, max_seeds=5))
    rows = {"base": {"name": "baseline"},
            "null": {"name": "n", "extra": {"pool_change": "null"}},
            "bad": {"name": "b", "extra": {"pool_change": "bad"}},
            "good": {"name": "g", "extra": {"pool_change": "good"}},
            "good2": {"name": "g2", "extra": {"pool_change": "good2"}}}
    rec = replay.Recorded("s", tier, "base", {k: v for k, v in rows.items() if k != "base"},
                          order={k: i for i, k in enumerate(rows)})
    v = {("base", "d1"): [2.0, 2.0, 2.0], ("null", "d1"): [1.99, 2.01, 2.01], ("bad", "d1"): [2.1, 2.1, 2.1],
         ("good", "d1"): [1.9, 1.91, 1.9], ("good2", "d1"): [2.01, 1.99, 2.0],
         ("base", "d2"): [1.8, 1.8, 1.8], ("good", "d2"): [1.75, 1.74, 1.75]}
    for k, vals in v.items():
        rec.values[k] = dict(enumerate(vals))
        rec.seconds[k] = {s: 10.0 if k[1] == "d1" else 30.0 for s in range(len(vals))}
    rec.verdicts = {("null", "d1"): "reject", ("bad", "d1"): "reject", ("good", "d1"): "promote",
                    ("good2", "d1"): "reject", ("good", "d2"): "promote"}
    truth = {"null": benchmark.Truth("null", "null", {}), "bad": benchmark.Truth("bad", "bad", {}, 0.1, 0.001, 3, "bad"),
             "good": benchmark.Truth("good", "good", {}, -0.09, 0.003, 3, "good"),
             "good2": benchmark.Truth("good2", "good", {}, -0.002, 0.0005, 3, "good")}
    return rec, truth


def sample_report(out_dir: Path | None = None) -> dict:
    """A benchmark report as harness.benchmark writes it, from the hand-made search scored under every rule as if two
    proposers had made it (the dashboard tests show it); with its plots in `out_dir` when given."""
    rec, truth = hand_made()
    scores = [benchmark.score(rec, rule, truth, proposer, 0, eta=3) for proposer in ("tpe", "random")
              for rule in replay.RULES]
    report = benchmark.with_summary({
        "benchmark": "demo", "name": "demo", "description": "A hand-made pool.", "tier": "t", "recipe": "crippled",
        "db": "sqlite:///demo.db", "created_at": "2026-12-02T12:00:00+00:00", "proposers": ["tpe", "random"],
        "repeats": 1, "trials": 4, "eta": 3, "alpha": 0.05, "min_effect": 0.0, "rungs": ["d1", "d2"],
        "truth": [dataclasses.asdict(t) for t in truth.values()], "scores": [dataclasses.asdict(s) for s in scores]})
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / benchmark.REPORT_FILE).write_text(json.dumps(report))
        benchmark.plot(report, out_dir)
    return report


def test_the_ladder_scored_against_the_truth_with_its_compute_charged_in_proposal_order():
    rec, truth = hand_made()
    s = benchmark.score(rec, "ladder", truth, "tpe", 0, eta=3)
    assert s.proposed == ["null", "bad", "good", "good2"]
    assert (s.true_promotions, s.false_promotions, s.false_first, s.missed, s.untried) == (1, 0, 0, 1, 0)
    # d1 controls (baseline + two nulls on 3 slots) and null, bad, good at d1: 9*10 + 3*(3*10); then d2's controls
    # and good's d2 runs: 9*30 + 3*30. good2 comes after the first win.
    first_win = (9 * 10 + 3 * 3 * 10 + 9 * 30 + 3 * 30) / 3600
    assert s.first_win_h == pytest.approx(first_win)
    assert s.compute_h == pytest.approx(first_win + 3 * 10 / 3600)
    assert s.top_improvement == pytest.approx(-0.05 - 0.01 / 3)  # good's mean paired difference at d2
    assert [round(-y, 4) for _, y in s.curve] == [0, 0, 0.09, 0.09]


def test_greedy_is_fooled_by_a_lucky_first_slot_and_halving_promotes_whatever_ranks_first():
    rec, truth = hand_made()
    greedy = benchmark.score(rec, "greedy", truth, "tpe", 0, eta=3)
    # slot 0: null 1.99 < 2.0 (promoted, then untried at d2), bad no, good yes (and at d2), good2 no (2.01).
    assert greedy.outcomes == {"null": "untried at d2", "bad": "rejected at d1", "good": "adopted",
                               "good2": "rejected at d1"}
    assert (greedy.true_promotions, greedy.false_first, greedy.missed, greedy.untried) == (1, 1, 1, 1)
    assert greedy.first_win_h == pytest.approx((1 * 10 + 3 * 10 + 1 * 30 + 1 * 30) / 3600)
    halving = benchmark.score(rec, "halving", truth, "tpe", 0, eta=3)
    assert halving.outcomes["good"] == "adopted" and halving.true_promotions == 1  # 4 // 3 = 1 at d1, the best
    assert sum(o.startswith("rejected at d1") for o in halving.outcomes.values()) == 3


def test_truth_labels_need_an_effect_beyond_the_minimum_and_two_standard_errors():
    assert benchmark.label(-0.01, 0.001, 0.0005) == "good"
    assert benchmark.label(-0.01, 0.006, 0.0005) == "null"  # within 2 standard errors
    assert benchmark.label(-0.0004, 0.0001, 0.0005) == "null"  # below the minimum effect
    assert benchmark.label(0.02, 0.001, 0.0005) == "bad"


# ---------------------------------------------------------------------------------------------------------------
# The pool proposers

POOL = [("lr 0.08", {"matrix_lr": 0.08}), ("lr 0.04", {"matrix_lr": 0.04}), ("lr 0.01", {"matrix_lr": 0.01}),
        ("wd", {"weight_decay": 0.3}), ("emb", {"embedding_lr": 1.0}), ("rope", {"rope_base": 2e4})]


def drain(p: PoolProposer, values: dict[str, float]) -> list[str]:
    order = []
    while not p.exhausted:
        (proposal,) = p.propose(1)
        name = proposal.extra["pool_change"]
        p.link(proposal.trial, f"id-{name}")
        p.observe(f"id-{name}", values[name])
        order.append(name)
    return order


@pytest.mark.parametrize("strategy", ["tpe", "random", "scripted", "list"])
def test_a_pool_proposer_proposes_every_change_once_and_its_seed_fixes_the_order(strategy):
    values = {"lr 0.08": -0.03, "lr 0.04": -0.02, "lr 0.01": 0.001, "wd": 0.0, "emb": 0.01, "rope": 0.0}
    orders = [drain(PoolProposer(POOL, strategy, seed=s), values) for s in (0, 0, 1, 2, 3)]
    assert all(sorted(o) == sorted(values) for o in orders)
    assert orders[0] == orders[1]
    if strategy == "list":
        assert orders[0] == [n for n, _ in POOL]
    else:
        assert len({tuple(o) for o in orders}) > 1  # another seed, another order


def test_the_scripted_agent_tries_next_to_what_helped_and_a_new_knob_otherwise():
    p = PoolProposer(POOL, "scripted", seed=0)
    (first,) = p.propose(1)
    p.link(first.trial, "a")
    name = first.extra["pool_change"]
    if dict(POOL)[name].keys() != {"matrix_lr"}:
        p.observe("a", 0.01)  # it did not help: the next is on a knob not tried yet
        (second,) = p.propose(1)
        assert not set(second.tweaks) & set(dict(POOL)[name]) and "not tried" in second.rationale
        return
    p.observe("a", -0.03)  # it helped: the next is the nearest untried value on the same knob
    (second,) = p.propose(1)
    near = min((n for n, t in POOL if "matrix_lr" in t and n != name),
               key=lambda n: abs(math.log(dict(POOL)[n]["matrix_lr"] / dict(POOL)[name]["matrix_lr"])))
    assert second.extra["pool_change"] == near and "next to the best so far" in second.rationale


def test_the_agent_picks_an_untried_change_from_the_history_its_spend_is_counted_and_a_bad_answer_falls_back():
    import anthropic

    from harness.proposers.prices import cost_usd
    from tests.fake_anthropic import FakeAnthropic, message

    def choose(change: str) -> object:
        return message([{"type": "tool_use", "id": "toolu_1", "name": "choose_change",
                         "input": {"change": change, "rationale": "the matrix LR helped: try next to it"}}],
                       "tool_use", input_tokens=1000, output_tokens=200)

    with FakeAnthropic([choose("lr 0.08"), choose("lr 0.04"), choose("lr 0.04"), choose("no such change")]) as fake:
        client = anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=0)
        said = []
        agent = PoolAgent(POOL, {"matrix_lr": 0.005}, model="claude-sonnet-4-5", client=client, say=said.append)
        picked = []
        for value in (-0.03, 0.01, None):
            (p,) = agent.propose(1)
            picked.append((p.extra["pool_change"], p.rationale))
            agent.link(p.trial, f"id{len(picked)}")
            agent.observe(f"id{len(picked)}", value)
        (last,) = agent.propose(1)
    assert picked[0] == ("lr 0.08", "agent: the matrix LR helped: try next to it") and picked[1][0] == "lr 0.04"
    # The third answer repeats a tried change, the fourth names none: the scripted choice stands in for both.
    assert picked[2][1].startswith("(scripted fallback)") and last.rationale.startswith("(scripted fallback)")
    assert len({name for name, _ in picked} | {last.extra["pool_change"]}) == 4
    assert agent.spend["calls"] == 4 and agent.spend["fallbacks"] == 2 and len(said) == 2
    assert agent.spend["cost_usd"] == pytest.approx(4 * cost_usd("claude-sonnet-4-5", 1000, 200))
    # The second request shows the history and the untried changes by name and setting, and offers only those.
    body = fake.requests[1]["body"]
    text = body["messages"][0]["content"]
    assert "- lr 0.08: {\"matrix_lr\": 0.08} -> -0.0300" in text and "- rope: {\"rope_base\": 20000.0}" in text
    assert body["tools"][0]["input_schema"]["properties"]["change"]["enum"] == [n for n, _ in POOL if n != "lr 0.08"]
    assert body["tool_choice"]["name"] == "choose_change"


# ---------------------------------------------------------------------------------------------------------------
# End to end

RUNGS = """
[statistics]
alpha = 0.05
min_effect = 0.0
max_seeds = 3
[[rungs]]
name = "d1"
depth = 1
num_iterations = 20
seeds = 2
[[rungs]]
name = "d2"
depth = 2
num_iterations = 20
seeds = 2
"""


@pytest.mark.slow
def test_the_benchmark_end_to_end_measures_the_truth_shares_runs_and_reports(tmp_path, shared_data, tiny_tokenizer):
    (tmp_path / "tiny.toml").write_text(tiny_tier("test tier: depth 1 then 2, 20 steps", RUNGS))
    (tmp_path / "crippled.toml").write_text('name = "crippled"\n[overrides]\nunembedding_lr = 0.004\n')
    # The crippled lm_head LR: restoring it is -0.42 bpb at 30 steps, starving it +0.08 (measured, 2 seeds).
    (tmp_path / "bench.toml").write_text(f"""
name = "tiny"
tier = "{tmp_path / 'tiny.toml'}"
recipe = "{tmp_path / 'crippled.toml'}"
[[changes]]
name = "repair"
tweaks = {{ unembedding_lr = 0.1 }}
planted = "good"
[[changes]]
name = "starve"
tweaks = {{ unembedding_lr = 0.001 }}
planted = "bad"
[[changes]]
name = "null a"
tweaks = {{ weight_decay = 0.28028 }}
planted = "null"
[[changes]]
name = "null b"
tweaks = {{ gate_lr = 0.2002 }}
planted = "null"
""")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.benchmark", "--benchmark", str(tmp_path / "bench.toml"), "--name", "b",
           "--db", f"sqlite:///{tmp_path / 'lb.db'}", "--runs-dir", str(tmp_path / "runs"), "--data", str(shared_data),
           "--proposers", "scripted,random", "--repeats", "1", "--truth-seeds", "2", "--parallel", "2",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "benchmark.json").read_text())
    truth = {t["name"]: t for t in report["truth"]}
    assert truth["repair"]["label"] == "good" and truth["repair"]["n"] == 2 and truth["repair"]["effect"] < -0.1
    assert truth["starve"]["label"] == "bad" and truth["starve"]["effect"] > 0
    assert truth["null a"]["effect"] is None and truth["null a"]["label"] == "null"
    scores = {(s["proposer"], s["rule"]): s for s in report["scores"]}
    assert set(scores) == {(p, r) for p in ("scripted", "random") for r in replay.RULES}
    for proposer in ("scripted", "random"):
        ladder = scores[(proposer, "ladder")]
        assert sorted(ladder["proposed"]) == ["null a", "null b", "repair", "starve"]
        assert ladder["true_promotions"] == 1 and ladder["outcomes"]["repair"] == "adopted"
        assert ladder["bad_adopted"] == 0 and ladder["first_win_h"] > 0 and ladder["top_improvement"] < 0
    # The second search (random) trained nothing the first had made: the same experiments on the same seeds.
    assert proc.stdout.count("] reuse ") >= 14
    assert "search 'b-random-0' finished" in proc.stdout and "runs taken from other searches" in proc.stdout
    for png in ("discovery.png", "outcomes.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "ladder" in proc.stdout and "1st win h" in proc.stdout

    # The report again, read-only from the database: the same numbers, nothing trained.
    again = subprocess.run(cmd + ["--report-only", "--out", str(tmp_path / "again")], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    again_report = json.loads((tmp_path / "again" / "benchmark.json").read_text())
    assert {k: v for k, v in again_report.items() if k != "created_at"} == {k: v for k, v in report.items()
                                                                             if k != "created_at"}
    assert report["summary"] and {r["rule"] for r in report["summary"]} == set(replay.RULES)
    assert "] start " not in again.stdout


@pytest.mark.parametrize("extra, needle", [
    (["--proposers", "tpe,claude"], "--proposers 'tpe,claude': expected a comma-separated list of tpe, random"),
    (["--proposers", "agent"], "--proposers agent: ANTHROPIC_API_KEY is not set"),
    (["--rules", "greedy,best"], "--rules 'greedy,best'"),
    (["--truth-seeds", "1"], "--truth-seeds 1: expected an integer >= 2"),
    (["--benchmark", "nope"], "unknown benchmark 'nope'"),
])
def test_bad_benchmark_flags_are_one_line(tmp_path, extra, needle):
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "harness.benchmark", "--db", f"sqlite:///{tmp_path / 'x.db'}", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "x.db").exists()
