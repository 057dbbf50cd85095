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

A profile is one entry of :data:`CATALOGUE` (what it does and what it
breaks); its behaviour is a flag of its twin's ``Quirks`` (or a rule of
``rig.supply.Rules``), and the checks that must fail against it name it
(``@pytest.mark.detects``).  docs/extending.md walks through adding one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    """One fault profile: what the device does, and the requirement ids and
    safety properties (P1..P6, REQUIREMENTS.md) that it breaks."""

    doc: str
    breaks: tuple[str, ...]


#: every fault profile, declared once: device kind -> profile name -> Fault
CATALOGUE: dict[str, dict[str, Fault]] = {
    "esme": {
        # supply logic (rig.supply.Rules)
        "closes_on_remote_enable_when_armed": Fault(
            "closes the contactor on a remote enable while armed (any remote party), instead of refusing it",
            breaks=("SUP-2", "P2", "P3")),
        "closes_on_remote_enable_when_disabled": Fault(
            "closes a disabled supply on a remote enable (what `remote_enable: closes` declares): nobody present",
            breaks=("SUP-1", "SUP-2", "P1", "P3")),
        "dno_enable_closes_armed": Fault(
            "closes the contactor on the network operator's remote enable while armed (the supplier's is refused)",
            breaks=("SUP-2", "P3")),
        "reenables_after_mains_return": Fault(
            "comes back enabled (contactor closed) when mains returns, whatever its state before the outage",
            breaks=("P5",)),
        "skips_arm": Fault(
            "a local action (button or PPMID) enables a disabled supply that was never armed",
            breaks=("P1", "SUP-2")),
        "dno_overridden_by_supplier": Fault(
            "a supplier arm/enable also lifts the network operator's disablement",
            breaks=("SUP-6",)),
        "supplier_overridden_by_dno": Fault(
            "a network operator's arm/enable also lifts the supplier's (debt) disablement",
            breaks=("SUP-6",)),
        "credit_closes_supply": Fault(
            "a top-up or emergency credit closes a credit-disabled supply instead of arming it",
            breaks=("SUP-2", "SUP-8", "P2")),
        "load_limit_restores_regardless": Fault(
            "the load-limit restoration closes the supply even if it was disabled or armed by a party since",
            breaks=("SUP-9", "P2")),
        "accepts_cad_command": Fault(
            "carries out Metering change_supply/local_change_supply sent by a HAN device (CAD): may close the "
            "contactor",
            breaks=("HAN-6", "P3")),
        # the rest of the meter
        "accepts_replayed_ppmid": Fault(
            "no replay check on HAN frames: a recorded PPMID enable sent again is carried out",
            breaks=("P4",)),
        "replay_window_resets_on_reboot": Fault(
            "keeps the HAN frame counters in RAM: after a loss of mains a recorded PPMID enable is accepted again",
            breaks=("P4",)),
        "accepts_forged_frames": Fault(
            "no HAN security check: a PPMID enable forged without the link key is carried out",
            breaks=("P4", "SEC-1")),
        "accepts_stale_ppmid": Fault(
            "carries out a PPMID command however long ago it was pressed (ppmid_command_ttl ignored)",
            breaks=("P4",)),
        "long_freshness_window": Fault(
            "carries out PPMID commands up to 30 s old: longer than the 5 s enable bound",
            breaks=("P4", "P2")),
        "accepts_unpaired_ppmid": Fault(
            "carries out Prepayment commands (enable, emergency credit, top-up) from any HAN device",
            breaks=("P4",)),
        "accepts_han_config_write": Fault(
            "lets a HAN device (CAD/IHD) write its load-limit configuration",
            breaks=("HAN-6",)),
        "ignores_hold_time": Fault(
            "its enable button enables on any hold after the prompt, however short",
            breaks=("SUP-7",)),
        "no_restore_alert": Fault(
            "logs the restoration but never sends the 0x8F35/0x8F36 restoration alert",
            breaks=("OUT-3",)),
        "late_restore_alert": Fault(
            "sends its restoration alert 60 s after mains returns",
            breaks=("OUT-3", "OUT-7")),
        "wrong_restore_code": Fault(
            "sends 0x8F35 (short) for every restoration, outages of 3 minutes and more included",
            breaks=("OUT-3",)),
        "duplicate_alerts": Fault(
            "sends every alert twice (two sequence numbers)",
            breaks=("OUT-3", "OUT-7")),
        "alerts_sent_once": Fault(
            "sends each alert over the HAN once: an alert the hub does not acknowledge (a jammed or fading "
            "HAN) is never sent again",
            breaks=("OUT-3", "OUT-7")),
        "alert_storm": Fault(
            "sends a 'Supply interrupted' alert to the network operator on every interruption, flickers included",
            breaks=("OUT-4",)),
        "misses_flicker": Fault(
            "neither logs nor alerts an interruption shorter than 5 s",
            breaks=("OUT-1",)),
        "utrn_reuse": Fault(
            "accepts the same UTRN more than once",
            breaks=("SUP-5",)),
        "reports_closed_when_open": Fault(
            "reports the contactor closed (and supply enabled) while the relay stays open",
            breaks=("P6",)),
        "welded_contactor": Fault(
            "its contactor is welded shut: it reports open (disabled, armed) while the load side stays live",
            breaks=("P6", "SUP-1")),
        "ignores_premises": Fault(
            "carries out remote commands addressed to another premises",
            breaks=("SUP-10",)),
        "no_power_quality_alerts": Fault(
            "raises no voltage sag/swell alerts",
            breaks=("OUT-6",)),
        "register_runs_fast": Fault(
            "its energy register counts 3 % more than flows through it",
            breaks=("DATA-2",)),
    },
    "comms_hub": {
        "drops_outage_alerts": Fault(
            "sends no last gasp and does not forward the meter's restoration alerts (0x8F35/0x8F36)",
            breaks=("OUT-2", "OUT-3", "OUT-5")),
        "no_reserve": Fault(
            "has no power reserve: goes dark the instant mains is lost, before its last gasp can pass",
            breaks=("OUT-5", "OUT-2")),
        "no_outage_alert": Fault(
            "sends no last gasp on loss of mains, so no outage alert is ever raised",
            breaks=("OUT-2",)),
        "outage_alert_early": Fault(
            "its network raises the outage alert 15 s before the 3 minutes are up",
            breaks=("OUT-2", "OUT-4")),
        "outage_alert_late": Fault(
            "its network raises the outage alert 40 s after the 3 minutes are up",
            breaks=("OUT-2", "OUT-7")),
    },
    "ppmid": {
        "queues_presses": Fault(
            "keeps a press made while the HAN link is down and sends it, with its original press time, "
            "when the link returns",
            breaks=("P4",)),
        "queues_presses_across_outage": Fault(
            "keeps a press the meter did not answer (the meter had no mains) and sends it, re-stamped as new, "
            "when the meter answers again",
            breaks=("P4", "P2")),
        "enables_without_hold": Fault(
            "a press of its enable button sends the enable: no hold needed",
            breaks=("SUP-7", "P2")),
        "auto_enables_when_armed": Fault(
            "sends an enable by itself when its display shows the supply armed",
            breaks=("SUP-2", "P2")),
        "slow_to_send": Fault(
            "sends the enable 8 s after the hold ends (stamped with the hold's time)",
            breaks=("P2",)),
        "talks_past_the_hub": Fault(
            "sends its frames for the meter straight to it, not through the comms hub (the coordinator)",
            breaks=("HAN-2",)),
    },
    "gsme": {
        "misses_mirror_sync": Fault(
            "skips every other push to the hub's gas mirror",
            breaks=("HAN-7",)),
    },
    "ihd": {
        "writes_configuration": Fault(
            "writes the meter's load-limit threshold at every refresh",
            breaks=("HAN-6",)),
        "speaks_proprietary": Fault(
            "sends a proprietary frame (not ZCL) to the meter at every refresh",
            breaks=("HAN-1",)),
    },
}

#: views of the catalogue: kind -> {profile: what it does}, and profile -> what it breaks
FAULTS: dict[str, dict[str, str]] = {kind: {name: f.doc for name, f in faults.items()}
                                     for kind, faults in CATALOGUE.items()}
BREAKS: dict[str, tuple[str, ...]] = {name: f.breaks for faults in CATALOGUE.values() for name, f in faults.items()}


def known_faults(kind: str) -> set[str]:
    return set(FAULTS.get(kind, {}))


def breaks(fault: str) -> tuple[str, ...]:
    """Requirement ids and safety properties the profile breaks."""
    return BREAKS.get(fault, ())
