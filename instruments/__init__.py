"""Bench instrument drivers, one module per kind, and their simulated twins.

Each kind and its drivers are declared once, in rig/parts.py (the lab.yaml
``driver:`` names, the driver and twin classes, the agent's service and the
rig-script handle); a driver's settings (units, ranges, lab.yaml limit
keys) are declared in its class (:mod:`instruments.settings`).
docs/extending.md shows how to add a kind.
"""
