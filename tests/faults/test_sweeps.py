"""Sweeps that are killed, preempted, or have a crashing point (scenario 6)."""

from tests.faults import campaign as faults


def test_killed_sweep_with_a_crashing_point_finishes_the_rest(campaign):
    row = faults.scenario_sweep_kill(campaign)
    assert row.passed, row.observed


def test_sigterm_to_a_sweep_preempts_and_resumes_its_point(campaign):
    row = faults.scenario_sweep_sigterm(campaign)
    assert row.passed, row.observed


def test_a_second_run_or_sweep_on_a_live_directory_is_refused(campaign):
    row = faults.scenario_concurrency(campaign)
    assert row.passed, row.observed
    assert row.lost == 0
