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
        # supply logic (rig.supply.Rules)
        "closes_on_remote_enable_when_armed":
            "closes the contactor on a remote enable while armed (any remote party), instead of refusing it",
        "closes_on_remote_enable_when_disabled":
            "closes a disabled supply on a remote enable (what `remote_enable: closes` declares): nobody present",
        "dno_enable_closes_armed":
            "closes the contactor on the network operator's remote enable while armed (the supplier's is refused)",
        "reenables_after_mains_return":
            "comes back enabled (contactor closed) when mains returns, whatever its state before the outage",
        "skips_arm":
            "a local action (button or PPMID) enables a disabled supply that was never armed",
        "dno_overridden_by_supplier":
            "a supplier arm/enable also lifts the network operator's disablement",
        "supplier_overridden_by_dno":
            "a network operator's arm/enable also lifts the supplier's (debt) disablement",
        "credit_closes_supply":
            "a top-up or emergency credit closes a credit-disabled supply instead of arming it",
        "load_limit_restores_regardless":
            "the load-limit restoration closes the supply even if it was disabled or armed by a party since",
        "accepts_cad_command":
            "carries out Metering change_supply/local_change_supply sent by a HAN device (CAD): may close the contactor",
        # the rest of the meter
        "accepts_replayed_ppmid":
            "no replay check on HAN frames: a recorded PPMID enable sent again is carried out",
        "replay_window_resets_on_reboot":
            "keeps the HAN frame counters in RAM: after a loss of mains a recorded PPMID enable is accepted again",
        "accepts_forged_frames":
            "no HAN security check: a PPMID enable forged without the link key is carried out",
        "accepts_stale_ppmid":
            "carries out a PPMID command however long ago it was pressed (ppmid_command_ttl ignored)",
        "long_freshness_window":
            "carries out PPMID commands up to 30 s old: longer than the 5 s enable bound",
        "accepts_unpaired_ppmid":
            "carries out Prepayment commands (enable, emergency credit, top-up) from any HAN device",
        "accepts_han_config_write":
            "lets a HAN device (CAD/IHD) write its load-limit configuration",
        "ignores_hold_time":
            "its enable button enables on any hold after the prompt, however short",
        "no_restore_alert":
            "logs the restoration but never sends the 0x8F35/0x8F36 restoration alert",
        "late_restore_alert":
            "sends its restoration alert 60 s after mains returns",
        "wrong_restore_code":
            "sends 0x8F35 (short) for every restoration, outages of 3 minutes and more included",
        "duplicate_alerts":
            "sends every alert twice (two sequence numbers)",
        "alert_storm":
            "sends a 'Supply interrupted' alert to the network operator on every interruption, flickers included",
        "misses_flicker":
            "neither logs nor alerts an interruption shorter than 5 s",
        "utrn_reuse":
            "accepts the same UTRN more than once",
        "reports_closed_when_open":
            "reports the contactor closed (and supply enabled) while the relay stays open",
        "welded_contactor":
            "its contactor is welded shut: it reports open (disabled, armed) while the load side stays live",
        "ignores_premises":
            "carries out remote commands addressed to another premises",
        "no_power_quality_alerts":
            "raises no voltage sag/swell alerts",
        "register_runs_fast":
            "its energy register counts 3 % more than flows through it",
    },
    "comms_hub": {
        "drops_outage_alerts":
            "sends no last gasp and does not forward the meter's restoration alerts (0x8F35/0x8F36)",
        "no_reserve":
            "has no power reserve: goes dark the instant mains is lost, before its last gasp can pass",
        "no_outage_alert":
            "sends no last gasp on loss of mains, so no outage alert is ever raised",
        "outage_alert_early":
            "its network raises the outage alert 15 s before the 3 minutes are up",
        "outage_alert_late":
            "its network raises the outage alert 40 s after the 3 minutes are up",
    },
    "ppmid": {
        "queues_presses":
            "keeps a press made while the HAN link is down and sends it, with its original press time, "
            "when the link returns",
        "queues_presses_across_outage":
            "keeps a press the meter did not answer (the meter had no mains) and sends it, re-stamped as new, "
            "when the meter answers again",
        "enables_without_hold":
            "a press of its enable button sends the enable: no hold needed",
        "auto_enables_when_armed":
            "sends an enable by itself when its display shows the supply armed",
        "slow_to_send":
            "sends the enable 8 s after the hold ends (stamped with the hold's time)",
        "talks_past_the_hub":
            "sends its frames for the meter straight to it, not through the comms hub (the coordinator)",
    },
    "gsme": {
        "misses_mirror_sync":
            "skips every other push to the hub's gas mirror",
    },
    "ihd": {
        "writes_configuration":
            "writes the meter's load-limit threshold at every refresh",
        "speaks_proprietary":
            "sends a proprietary frame (not ZCL) to the meter at every refresh",
    },
}

#: what each profile breaks: requirement ids and safety properties (P1..P6)
BREAKS: dict[str, tuple[str, ...]] = {
    "closes_on_remote_enable_when_armed": ("SUP-2", "P2", "P3"),
    "closes_on_remote_enable_when_disabled": ("SUP-1", "SUP-2", "P1", "P3"),
    "dno_enable_closes_armed": ("SUP-2", "P3"),
    "reenables_after_mains_return": ("P5",),
    "skips_arm": ("P1", "SUP-2"),
    "dno_overridden_by_supplier": ("SUP-6",),
    "supplier_overridden_by_dno": ("SUP-6",),
    "credit_closes_supply": ("SUP-2", "SUP-8", "P2"),
    "load_limit_restores_regardless": ("SUP-9", "P2"),
    "accepts_cad_command": ("HAN-6", "P3"),
    "accepts_replayed_ppmid": ("P4",),
    "replay_window_resets_on_reboot": ("P4",),
    "accepts_forged_frames": ("P4", "SEC-1"),
    "accepts_stale_ppmid": ("P4",),
    "long_freshness_window": ("P4", "P2"),
    "accepts_unpaired_ppmid": ("P4",),
    "accepts_han_config_write": ("HAN-6",),
    "ignores_hold_time": ("SUP-7",),
    "no_restore_alert": ("OUT-3",),
    "late_restore_alert": ("OUT-3", "OUT-7"),
    "wrong_restore_code": ("OUT-3",),
    "duplicate_alerts": ("OUT-3", "OUT-7"),
    "alert_storm": ("OUT-4",),
    "misses_flicker": ("OUT-1",),
    "utrn_reuse": ("SUP-5",),
    "reports_closed_when_open": ("P6",),
    "welded_contactor": ("P6", "SUP-1"),
    "ignores_premises": ("SUP-10",),
    "no_power_quality_alerts": ("OUT-6",),
    "register_runs_fast": ("DATA-2",),
    "drops_outage_alerts": ("OUT-2", "OUT-3", "OUT-5"),
    "no_reserve": ("OUT-5", "OUT-2"),
    "no_outage_alert": ("OUT-2",),
    "outage_alert_early": ("OUT-2", "OUT-4"),
    "outage_alert_late": ("OUT-2", "OUT-7"),
    "queues_presses": ("P4",),
    "queues_presses_across_outage": ("P4", "P2"),
    "enables_without_hold": ("SUP-7", "P2"),
    "auto_enables_when_armed": ("SUP-2", "P2"),
    "slow_to_send": ("P2",),
    "talks_past_the_hub": ("HAN-2",),
    "misses_mirror_sync": ("HAN-7",),
    "writes_configuration": ("HAN-6",),
    "speaks_proprietary": ("HAN-1",),
}


def known_faults(kind: str) -> set[str]:
    return set(FAULTS.get(kind, {}))


def breaks(fault: str) -> tuple[str, ...]:
    """Requirement ids and safety properties the profile breaks."""
    return BREAKS.get(fault, ())
