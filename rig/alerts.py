"""GBCS alert codes the rig raises (twins) and judges (suites), by name.

Codes and names follow the GBCS alert table (as carried by
SmartDCCInnovation/gbcs-parser ``src/util.ts``); the power outage alert is
the DCC's own (DUIS alert ``AD1``, raised by the WAN side, never by a meter).
Importable without the simulation: a real bench's suites and the head-end
adapters use the same names.

    >>> AlertCode.SUPPLY_OUTAGE_RESTORED.hex
    '0x8F35'
    >>> AlertCode.parse("0x8f36") is AlertCode.SUPPLY_OUTAGE_RESTORED_LONG
    True
"""

from __future__ import annotations

from enum import IntEnum

#: the DCC alert a power outage of at least the alert period raises (DUIS AD1)
OUTAGE_ALERT = "AD1"
OUTAGE_ALERT_NAME = "Power Outage Event"


class AlertCode(IntEnum):
    """GBCS alert and event codes (16-bit), named as the table names them."""

    LOAD_LIMIT_EXCEEDED = 0x8F01
    CREDIT_BELOW_DISABLEMENT = 0x8F0F
    GSME_POWER_SUPPLY_LOSS = 0x8F1D
    LOW_BATTERY = 0x8F1F
    NO_AUTHORITY = 0x8F30
    SUPPLY_ARMED = 0x8F32
    LOAD_LIMIT_ARMED = 0x8F33
    LOAD_LIMIT_RESTORED = 0x8F34
    SUPPLY_OUTAGE_RESTORED = 0x8F35
    SUPPLY_OUTAGE_RESTORED_LONG = 0x8F36
    AUTHENTICATION_FAILURE = 0x8F3D
    UNAUTHORISED_ACCESS = 0x8F3E
    DUPLICATE_UTRN = 0x8F51
    FAILED_AUTHORISATION = 0x8F53
    SUPPLY_INTERRUPTED = 0x8F57
    UTRN_NOT_AUTHENTIC = 0x8F63
    UTRN_NOT_FOR_DEVICE = 0x8F64
    LOW_CREDIT = 0x810D
    CREDIT_ADDED_LOCALLY = 0x810E
    EMERGENCY_CREDIT_AVAILABLE = 0x8119
    HAN_COMMAND_ACTIONED = 0x8154
    HAN_COMMAND_NOT_ACTIONED = 0x8155
    UI_COMMAND_ACTIONED = 0x8161
    UI_COMMAND_NOT_ACTIONED = 0x8162
    EMERGENCY_CREDIT_ARMED = 0x8168
    DEVICE_JOINED = 0x8183
    EMERGENCY_CREDIT_EXHAUSTED = 0x81AA
    EMERGENCY_CREDIT_ACTIVATED = 0x81AB
    VOLTAGE_SAG = 0x802C
    VOLTAGE_SAG_END = 0x8099
    VOLTAGE_SWELL = 0x8024
    VOLTAGE_SWELL_END = 0x8091

    @property
    def hex(self) -> str:
        """The code as the bus and the head end write it: ``0x8F35``."""
        return f"0x{int(self):04X}"

    @property
    def title(self) -> str:
        return ALERT_NAMES[self]

    @classmethod
    def parse(cls, code: str | int) -> "AlertCode":
        """``"0x8F35"``, ``"8f35"`` or ``0x8F35`` as an AlertCode (ValueError if unknown)."""
        return cls(int(code, 16) if isinstance(code, str) else int(code))


ALERT_NAMES: dict[int, str] = {
    AlertCode.LOAD_LIMIT_EXCEEDED: "Active Power Import above Load Limit Threshold",
    AlertCode.CREDIT_BELOW_DISABLEMENT: "Credit Below Disablement Threshold (prepayment mode)",
    AlertCode.GSME_POWER_SUPPLY_LOSS: "GSME Power Supply Loss",
    AlertCode.LOW_BATTERY: "Low Battery Capacity",
    AlertCode.NO_AUTHORITY: "Source Does not have Authority for Command",
    AlertCode.SUPPLY_ARMED: "Supply Armed",
    AlertCode.LOAD_LIMIT_ARMED: "Supply Disabled then Armed - Load Limit triggered",
    AlertCode.LOAD_LIMIT_RESTORED: "Supply Enabled after Load Limit Restoration Period (Load Limit triggered)",
    AlertCode.SUPPLY_OUTAGE_RESTORED: "Supply Outage Restored",
    AlertCode.SUPPLY_OUTAGE_RESTORED_LONG: "Supply Outage Restored - Outage >= 3 minutes",
    AlertCode.AUTHENTICATION_FAILURE: "Trusted Source Authentication Failure",
    AlertCode.UNAUTHORISED_ACCESS: "Unauthorised Communication Access attempted",
    AlertCode.DUPLICATE_UTRN: "Duplicate UTRN entered",
    AlertCode.FAILED_AUTHORISATION: "Failed Authentication or Authorisation not covered by other codes",
    AlertCode.SUPPLY_INTERRUPTED: "Supply interrupted",
    AlertCode.UTRN_NOT_AUTHENTIC: "UTRN not Authentic",
    AlertCode.UTRN_NOT_FOR_DEVICE: "UTRN not for this Device",
    AlertCode.LOW_CREDIT: "Combined Credit Below Low Credit Threshold (prepayment mode)",
    AlertCode.CREDIT_ADDED_LOCALLY: "Credit Added Locally",
    AlertCode.EMERGENCY_CREDIT_AVAILABLE: "Emergency Credit Has Become Available (prepayment mode)",
    AlertCode.HAN_COMMAND_ACTIONED: "Immediate HAN Interface Command Received and Successfully Actioned",
    AlertCode.HAN_COMMAND_NOT_ACTIONED: "Immediate HAN Interface Command Received but not Successfully Actioned",
    AlertCode.UI_COMMAND_ACTIONED: "User Interface Command Input and Successfully Actioned",
    AlertCode.UI_COMMAND_NOT_ACTIONED: "User Interface Command Input but not Successfully Actioned",
    AlertCode.EMERGENCY_CREDIT_ARMED: "Supply Disabled then Armed - Activate Emergency Credit triggered",
    AlertCode.DEVICE_JOINED: "Device joined SMHAN",
    AlertCode.EMERGENCY_CREDIT_EXHAUSTED: "Emergency Credit Exhausted",
    AlertCode.EMERGENCY_CREDIT_ACTIVATED: "Emergency Credit Activated",
    AlertCode.VOLTAGE_SAG: "RMS Voltage below Voltage Sag Threshold",
    AlertCode.VOLTAGE_SAG_END: "RMS Voltage below Voltage Sag Threshold (voltage returns above)",
    AlertCode.VOLTAGE_SWELL: "RMS Voltage above Voltage Swell Threshold",
    AlertCode.VOLTAGE_SWELL_END: "RMS Voltage above Voltage Swell Threshold (voltage returns below)",
}

#: the restoration alerts of OUT-3: an interruption shorter than the period, and at least the period
RESTORATION_ALERTS = (AlertCode.SUPPLY_OUTAGE_RESTORED, AlertCode.SUPPLY_OUTAGE_RESTORED_LONG)


def name_of(code: str | int) -> str:
    """The table name of a code (``"AD1"`` included); empty when unknown."""
    if code == OUTAGE_ALERT:
        return OUTAGE_ALERT_NAME
    try:
        return ALERT_NAMES.get(AlertCode.parse(code), "")
    except ValueError:
        return ""
