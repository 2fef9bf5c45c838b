"""FMEA 4: with its port taken at restart, the broker fails fast and clearly; freed, it comes back.

The scenario is :func:`chaos.suites.port.port_conflict`.
"""

import pytest

from chaos.runner import assert_all_pass
from chaos.suites.port import port_conflict


@pytest.mark.integration
@pytest.mark.fmea(4)
def test_taken_port_fails_fast_and_clearly(run_lab):
    assert_all_pass(run_lab(port_conflict))
