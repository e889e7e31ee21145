"""Crashes and preemptions of training runs (scenarios 1, 2, 4, 5 of tests/faults/campaign.py)."""

import pytest

from tests.faults import campaign as faults


@pytest.mark.parametrize("step", faults.ci_kill_steps())
def test_sigkill_at_a_step_resumes_bitwise_equal(campaign, step):
    row = faults.scenario_sigkill(campaign, [step])
    assert row.passed, row.observed
    assert row.faults == row.survived == 1 and row.lost == 0


def test_sigterm_or_sigkill_during_an_async_save(campaign):
    row = faults.scenario_signal_during_save(campaign)
    assert row.passed, row.observed


def test_disk_full_during_a_save_stops_clearly_and_resumes(campaign):
    row = faults.scenario_disk_full(campaign)
    assert row.passed, row.observed


def test_killed_process_of_a_distributed_run_stops_the_other(campaign):
    row = faults.scenario_distributed_kill(campaign)
    assert row.passed, row.observed
