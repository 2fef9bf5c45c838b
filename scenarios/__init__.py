"""The built-in chaos suites as pytest modules: thin tests over the suites library (:mod:`chaos.suites`).

Run them here with ``pytest scenarios/``, or from any directory where
fastport-lab is installed with ``pytest --pyargs scenarios`` (or
``fastport-lab run``). The fixtures come from the lab's pytest plugin.
"""
