"""Bad input: malformed frames get an error with the right code, and nobody else notices.

The scenario is :func:`chaos.suites.bad_input.bad_input`.
"""

import pytest

from chaos.runner import assert_all_pass
from chaos.suites.bad_input import bad_input


@pytest.mark.integration
@pytest.mark.fmea("bad-input")
def test_malformed_frames_are_refused_and_others_unaffected(run_lab):
    assert_all_pass(run_lab(bad_input))
