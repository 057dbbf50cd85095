"""What the parts under test say to each other below the bus, defined once for
the real adapters and the simulated twins alike.

:mod:`rig.protocol.zcl`: the ZigBee Smart Energy clusters and frames (zigpy's
definitions, and the Prepayment, Tunneling and Load Limit clusters zigpy
lacks), the GBCS-like envelopes that travel through the WAN tunnel (remote
requests, their signatures, device alerts) and UTRN top-up codes.

Nothing here is simulation: the zigpy bridge (rig/adapters/zigpy_bridge.py)
parses a real meter's frames with it, and the twins (rig/sim) build theirs
with it.  The radio propagation model that both the simulated HAN and the
coverage study use is :mod:`rig.propagation`.
"""
