"""FMEA 1: storage slow, down, hung, reset or restarted must not stop or slow real-time delivery.

The scenario is :func:`chaos.suites.storage.storage_faults`; its docstring says what it does.
"""

import pytest

from chaos.runner import assert_all_pass
from chaos.suites.storage import storage_faults


@pytest.mark.integration
@pytest.mark.fmea(1)
def test_storage_faults_do_not_stop_delivery(run_lab, lab_config):
    if not lab_config.durable:
        pytest.skip("storage faults need --store postgres: a memory store has no storage to break")
    assert_all_pass(run_lab(storage_faults))
