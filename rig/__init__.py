"""rig: hardware-in-the-loop orchestration for GB smart-metering (SMETS2) test labs.

For rig scripts::

    from rig import Lab

    with Lab.open("lab.yaml") as lab:
        bench = lab.bench("bench-1")      # leases the bench
        bench.relay("mains").on()         # confirmed by the agent's state
"""

from .version import __version__

__all__ = ["Lab", "__version__"]


def __getattr__(name: str):
    # keep `import rig` cheap: the Lab API pulls in paho and pydantic
    if name == "Lab":
        from .lab import Lab

        return Lab
    raise AttributeError(name)
