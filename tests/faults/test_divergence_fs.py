"""Divergence that stays finite and the file system's refusals (scenarios 10 and 11)."""

from tests.faults import campaign as faults


def test_finite_divergence_keeps_no_diverged_checkpoint_and_the_advice_finishes(campaign):
    row = faults.scenario_divergence(campaign)
    assert row.passed, row.observed
    assert row.lost == 0


def test_file_system_refusals_are_one_line_and_lose_no_results(campaign):
    row = faults.scenario_fs_refusals(campaign)
    assert row.passed, row.observed
    assert row.faults == row.survived == 5 and row.lost == 0
