"""Sweeps that are killed, preempted, or have a crashing point (scenario 6)."""

import pytest

from cnn_jax import faults


def test_killed_sweep_with_a_crashing_point_finishes_the_rest(campaign):
    row = faults.scenario_sweep_kill(campaign)
    assert row.passed, row.observed


@pytest.mark.xfail(strict=True, reason="train/loop.py writes no results.json on a signal stop, so "
                   "the sweep reports a preempted point as failed; see RESULTS.md")
def test_sigterm_to_a_sweep_preempts_and_resumes_its_point(campaign):
    row = faults.scenario_sweep_sigterm(campaign)
    assert row.passed, row.observed
