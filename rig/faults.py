"""The fault profiles a simulated device can be given in lab.yaml.

Each is a named way real firmware goes wrong, selected per device::

    devices:
      esme:
        kind: esme
        faults: [closes_on_remote_enable_when_armed]

The safety and outage suites must fail against the fault that breaks the
property they check (``rig selftest``): that is how the rig shows its own
checks can fail.  The behaviour lives in the twins (``rig/sim/<kind>.py``,
search for the profile's name); this module is the catalogue, importable
without them.  :data:`BREAKS` says which requirement or safety property
(``P1``..``P6``, REQUIREMENTS.md) each profile breaks.
"""

FAULTS: dict[str, dict[str, str]] = {
    "esme": {
        "closes_on_remote_enable_when_armed":
            "closes the contactor on a remote enable while armed, instead of refusing it",
        "reenables_after_mains_return":
            "comes back enabled (contactor closed) when mains returns, whatever its state before the outage",
        "skips_arm":
            "a local action (button or PPMID) enables a disabled supply that was never armed",
        "accepts_replayed_ppmid":
            "no replay check on HAN frames: a recorded PPMID enable sent again is carried out",
        "accepts_stale_ppmid":
            "carries out a PPMID command however long ago it was pressed (ppmid_command_ttl ignored)",
        "accepts_unpaired_ppmid":
            "carries out Prepayment commands (enable, emergency credit, top-up) from any HAN device",
        "accepts_cad_command":
            "carries out Metering change_supply/local_change_supply sent by a HAN device (CAD): may close the contactor",
        "early_outage_alert":
            "its last gasp asks for the outage alert after 60 s instead of outage_alert_period",
        "no_outage_alert":
            "sends no last gasp on loss of supply, so no outage alert is ever raised",
        "no_restore_alert":
            "logs the restoration but never sends the 0x8F35/0x8F36 restoration alert",
        "misses_flicker":
            "neither logs nor alerts an interruption shorter than 5 s",
        "utrn_reuse":
            "accepts the same UTRN more than once",
        "reports_closed_when_open":
            "reports the contactor closed (and supply enabled) while the relay stays open",
        "dno_overridden_by_supplier":
            "a supplier arm/enable also lifts the network operator's disablement",
        "ignores_premises":
            "carries out remote commands addressed to another premises",
        "no_power_quality_alerts":
            "raises no voltage sag/swell alerts",
    },
    "comms_hub": {
        "drops_outage_alerts":
            "does not forward outage (0x8F57 last gasp) and restoration (0x8F35/0x8F36) alerts to the head end",
        "no_reserve":
            "has no power reserve: goes dark the instant mains is lost, before a last gasp can pass",
    },
    "ppmid": {
        "queues_presses":
            "keeps a press made while the HAN link is down and sends it, with its original press time, "
            "when the link returns",
    },
    "gsme": {
        "misses_mirror_sync":
            "skips every other push to the hub's gas mirror",
    },
    "ihd": {},
}

#: what each profile breaks: requirement ids and safety properties (P1..P6)
BREAKS: dict[str, tuple[str, ...]] = {
    "closes_on_remote_enable_when_armed": ("SUP-2", "P2", "P3"),
    "reenables_after_mains_return": ("P5",),
    "skips_arm": ("P1", "SUP-2"),
    "accepts_replayed_ppmid": ("P4",),
    "accepts_stale_ppmid": ("P4",),
    "accepts_unpaired_ppmid": ("P4",),
    "accepts_cad_command": ("HAN-6", "P3"),
    "early_outage_alert": ("OUT-2", "OUT-4"),
    "no_outage_alert": ("OUT-2",),
    "no_restore_alert": ("OUT-3",),
    "misses_flicker": ("OUT-1",),
    "utrn_reuse": ("SUP-5",),
    "reports_closed_when_open": ("P6",),
    "dno_overridden_by_supplier": ("SUP-6",),
    "ignores_premises": ("SUP-10",),
    "no_power_quality_alerts": ("OUT-6",),
    "drops_outage_alerts": ("OUT-2", "OUT-3", "OUT-5"),
    "no_reserve": ("OUT-5", "OUT-2"),
    "queues_presses": ("P4",),
    "misses_mirror_sync": ("HAN-7",),
}


def known_faults(kind: str) -> set[str]:
    return set(FAULTS.get(kind, {}))


def breaks(fault: str) -> tuple[str, ...]:
    """Requirement ids and safety properties the profile breaks."""
    return BREAKS.get(fault, ())
