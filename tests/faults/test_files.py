"""Damaged checkpoints, changed configs and planted pickles (scenarios 3, 8, 9)."""

import shutil

from tests.faults import campaign as faults


def test_damaged_newest_checkpoint_falls_back_with_a_warning(campaign):
    row = faults.scenario_corrupt_checkpoint(campaign)
    assert row.passed, row.observed
    assert row.faults == len(faults.DAMAGES)


def test_changed_config_or_model_is_refused_listing_the_fields(campaign):
    row = faults.scenario_config_change(campaign)
    assert row.passed, row.observed
    assert row.hostile >= 10 and row.clear == row.hostile


def test_loading_never_unpickles_a_planted_file(campaign):
    row = faults.scenario_pickle(campaign)
    assert row.passed, row.observed


def test_the_comparisons_can_fail(campaign, tmp_path):
    """A duplicated metrics line or an older newest checkpoint is noticed."""
    reference = campaign.reference()
    assert faults.compare_to_reference(reference, reference) == ""
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    with open(copy / "metrics.jsonl", "a") as f:
        f.write((reference / "metrics.jsonl").read_text().splitlines()[3] + "\n")
    assert "duplicated" in faults.metrics_difference(copy, reference)
    shutil.rmtree(copy / "checkpoints" / str(faults.TOTAL_STEPS))
    assert "steps differ" in faults.state_difference(copy, reference)
