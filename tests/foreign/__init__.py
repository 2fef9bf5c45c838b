"""A second FastPort broker the lab did not grow up with, plus seeded bugs: the lab's mutation matrix.

An independent implementation of PROTOCOL.md (``python -m tests.foreign``), built on
``websockets``' defaults and a schema of its own, so the lab is tested against a
broker whose shape it does not know. ``mutants.py`` lists its switchable bugs.
"""
