"""Hostile inputs (scenario 7): one test per generated case, each must end in a clear error.

Cases whose error is not clear yet are listed in UNCLEAR with the owner's fix to make; they are
strict xfails, so a fix turns them into failures here until they are removed from the list.
"""

import pytest

from tests.faults import campaign as faults

# case name -> why it is not clear yet (see tests/faults/RESULTS.md for the proposed fixes).
# Empty: every generated case ends in a clear error (issue #6 fixed the last 27).
UNCLEAR: dict[str, str] = {}

CASES = faults.hostile_cases()


def _param(case):
    marks = ([pytest.mark.xfail(strict=True, reason=UNCLEAR[case.name])]
             if case.name in UNCLEAR else [])
    return pytest.param(case, id=f"{case.group}:{case.name}"[:120], marks=marks)


def test_enough_cases_are_generated():
    assert len(CASES) + len(faults.cli_cases()) >= 200
    assert {c.group for c in CASES} == {"config", "model", "data"}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input_ends_in_a_clear_error(case, tmp_path):
    ok, what = faults.check_hostile(case, tmp_path / "case", tmp_path)
    assert ok, what


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.name[:80], marks=[pytest.mark.xfail(strict=True, reason=UNCLEAR[c.name])]
                 if c.name in UNCLEAR else []) for c in faults.cli_cases()])
def test_hostile_command_line_prints_one_clean_error(campaign, case, tmp_path):
    ok, what = faults.check_cli(campaign.launcher, case, tmp_path)
    assert ok, what
