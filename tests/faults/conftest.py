"""The fault campaign's pytest fixture: one Campaign (root directory, launcher, reference run)
shared by every test of tests/faults, as `python -m tests.faults.campaign` shares it between scenarios."""

import pytest

from tests.faults import campaign as faults


@pytest.fixture(scope="session")
def campaign(tmp_path_factory):
    return faults.Campaign(tmp_path_factory.mktemp("faults"))
