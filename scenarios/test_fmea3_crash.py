"""FMEA 3: after SIGKILL and restart the broker redelivers what it persisted; SIGSTOP loses nothing.

The scenario is :func:`chaos.suites.crash.crash_and_restart`.
"""

import pytest

from chaos.runner import assert_all_pass
from chaos.suites.crash import crash_and_restart


@pytest.mark.integration
@pytest.mark.fmea(3)
def test_crash_restart_hydrates_and_sigstop_loses_nothing(run_lab):
    assert_all_pass(run_lab(crash_and_restart))
