"""FMEA 2: a subscriber that disconnects mid fan-out or stops reading must not affect the others.

The scenario is :func:`chaos.suites.subscribers.subscriber_faults`.
"""

import pytest

from chaos.runner import assert_all_pass
from chaos.suites.subscribers import subscriber_faults


@pytest.mark.integration
@pytest.mark.fmea(2)
def test_faulty_subscribers_do_not_affect_others(run_lab):
    assert_all_pass(run_lab(subscriber_faults))
