"""The search's command line resolved once (harness/search_config.py) and the proposer seam (harness/proposers):
what execute() is handed, without training anything."""

import pytest

from harness.experiment import Experiment
from harness.proposers import Proposal, Proposer
from harness.proposers.aa import AAProposer
from harness.search_config import SearchError, build_parser, resolve


def config_of(*argv):
    return resolve(build_parser().parse_args(["--tier", "cpu", *argv]))


def test_flags_resolve_into_one_typed_config(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    c = config_of("--trials", "3", "--seeds", "2", "--rungs", "2")
    assert (c.proposer, c.trials, c.name, c.aa) == ("optuna", 3, "cpu-all", 0)
    assert [r.name for r in c.tier.rungs] == ["d2"] and all(r.seeds == 2 for r in c.tier.rungs)
    assert c.flags["parallel"] == c.parallel == c.tier.parallel  # the resolved value is what the search records
    assert "slurm_setup" not in c.flags
    assert (c.steering.plateau, c.steering.failure_window, c.steering.failure_share, c.steering.pause_for,
            c.insights_every) == (6, 6, 0.5, 6, 4)
    steered = config_of("--plateau", "3", "--failure-window", "4", "--failure-share", "0.75", "--pause-for", "0",
                        "--insights-every", "0")
    assert (steered.steering.plateau, steered.steering.failure_window, steered.steering.failure_share,
            steered.steering.pause_for) == (3, 4, 0.75, 0)
    assert steered.insights_every == 0 and steered.flags["plateau"] == 3  # recorded with the search
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert config_of().proposer == "agent" and config_of().agent.batch == 2


def test_an_aa_config_splits_its_nulls_over_controls_on_disjoint_seeds():
    c = config_of("--aa", "5", "--seed-base", "4")
    assert (c.proposer, c.trials, c.aa_controls, len(c.tier.rungs)) == ("aa", 10, 3, 1)
    second = c.control(1, 2, 3)
    assert (second.name, second.aa, second.trials, second.first_replica) == ("cpu-aa-seeds4-2of3", 2, 4, 3)
    assert second.seed_base == 4 + c.tier.statistics.max_seeds
    assert {k: second.flags[k] for k in ("name", "seed_base", "aa", "aa_controls")} == {
        "name": second.name, "seed_base": second.seed_base, "aa": 2, "aa_controls": 1}
    assert c.flags["aa"] == 5  # the parent is not changed


@pytest.mark.parametrize("argv,needle", [
    (["--aa", "2", "--aa-controls", "3"], "--aa-controls 3: expected 1 to 2"),
    (["--aa-controls", "2"], "--aa-controls 2: only with --aa"),
    (["--aa", "2", "--enqueue", "PLANTED"], "only a search with a proposer (optuna, agent) takes outside proposals"),
    (["--budget-hours", "0"], "--budget-hours 0"),
    (["--plateau", "-1"], "--plateau -1: expected a non-negative number of decisions (0: never)"),
    (["--failure-window", "0"], "--failure-window 0: expected a positive number of runs"),
    (["--failure-share", "0"], "--failure-share 0.0: expected a share in (0, 1]"),
    (["--failure-share", "1.5"], "--failure-share 1.5: expected a share in (0, 1]"),
    (["--pause-for", "-1"], "--pause-for -1: expected a non-negative number of decisions"),
    (["--insights-every", "-2"], "--insights-every -2: expected a non-negative number of decisions"),
])
def test_bad_flags_are_refused_before_anything_runs(tmp_path, argv, needle):
    planted = tmp_path / "planted.json"
    planted.write_text('[{"tweaks": {"smear": false}}]')
    with pytest.raises(SearchError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        config_of(*[str(planted) if a == "PLANTED" else a for a in argv])
    assert "\n" not in str(e.value)


def test_the_proposer_seam_requires_two_methods_and_defaults_the_hooks():
    class Bare(Proposer):
        name = "bare"

    bare = Bare()
    with pytest.raises(NotImplementedError):
        bare.propose(1)
    with pytest.raises(NotImplementedError):
        bare.observe("e", None)
    with pytest.raises(ValueError, match="the bare proposer takes no outside proposals"):
        bare.enqueue(Proposal(tweaks={}, proposer="manual"))
    bare.link(0, "e")
    bare.resume([])
    bare.steer(None)
    bare.distil(final=True)
    assert not bare.exhausted and bare.describe() == "bare" and not bare.proposes_patches


def test_a_resumed_aa_proposer_skips_the_nulls_it_already_proposed():
    first = AAProposer(2, {"matrix_lr": 0.02})
    made = [Experiment(tweaks=p.tweaks, tier="cpu", recipe="baseline", code_version="x", proposer="aa",
                       replica=p.replica) for p in first.propose(3)]
    again = AAProposer(2, {"matrix_lr": 0.02})
    again.resume(made)
    rest = again.propose(10)
    assert len(rest) == 1 and (rest[0].replica, rest[0].tweaks != {}) == (2, True)  # the parametric null of replica 2
    assert again.exhausted and again.describe() == "aa" and AAProposer(0, {}).describe() == "calibration"
