"""The rig's version, in a module of its own: every part reports it (presence,
agent status, run record) without importing the ``rig`` package's facade."""

__version__ = "0.1.0"
