"""Bench instrument drivers, one module per kind, and their simulated twins.

``DRIVERS`` maps each driver name a ``lab.yaml`` may give to its instrument
kind and the class that implements it (imported only when used, so that
validating a lab file needs no VISA stack).
"""

DRIVERS: dict[str, tuple[str, str]] = {
    # name: (kind, "module:Class")
    "chroma_61500": ("ac_source", "instruments.ac_source:Chroma61500"),
    "chroma_63800": ("load_bank", "instruments.load_bank:Chroma63800"),
    "yokogawa_wt310": ("power_analyser", "instruments.power_analyser:YokogawaWT310"),
    "minicircuits_rcdat": ("attenuator", "instruments.attenuator:MiniCircuitsRCDAT"),
    "keysight_11713": ("attenuator", "instruments.attenuator:Keysight11713"),
    "iec62056_21": ("optical_probe", "instruments.optical_probe:OpticalProbe"),
}


#: what a driver's instrument says it is (``*IDN?``, or the meter's identification
#: message for an optical probe): a regular expression, case-insensitive, that
#: ``rig probe`` checks the answer against
IDENTITIES: dict[str, str] = {
    "chroma_61500": r"^chroma[^,]*,615\d\d",
    "chroma_63800": r"^chroma[^,]*,638\d\d",
    "yokogawa_wt310": r"^yokogawa,wt3\d\d",
    "minicircuits_rcdat": r"^mini-circuits,rc",
    "keysight_11713": r"^(agilent|keysight)[^,]*,11713",
    "iec62056_21": r"^[a-z]{3}[0-9a-z]",      # IEC 62056-21: three-letter maker, baud-rate character
}


def driver_class(driver: str) -> type:
    """The class implementing a lab.yaml ``driver:`` name (imports it)."""
    import importlib

    try:
        _kind, target = DRIVERS[driver]
    except KeyError:
        raise KeyError(f"unknown instrument driver '{driver}'; known: {', '.join(sorted(DRIVERS))}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
