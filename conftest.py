"""This repository's pytest wiring: nothing beyond the lab's own plugin.

The options (``--broker-cmd``, ``--store``, ``--intensity``, ``--run-dir``,
``--schedule``), the markers and the fixtures (``lab_session``, ``lab``,
``nemesis``, ``judge``, ``run_lab``...) come from the plugin every install of
fastport-lab registers (``chaos.plugin``, the ``pytest11`` entry point), so a
user's repository gets exactly what this one uses. The lab's own tests add
their PostgreSQL fixtures in ``tests/conftest.py``.
"""
