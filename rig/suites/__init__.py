"""The rig's suites, run by ``rig run`` (or ``pytest --pyargs rig.suites``).

Each module is a suite: ``test_<suite>.py``.  Tests use only the pytest
plugin's fixtures and cite their requirement ids.
"""
