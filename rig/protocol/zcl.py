"""ZigBee Smart Energy frames for the simulated HAN, built and parsed with zigpy.

Every frame a twin puts on the simulated HAN carries a real ZCL payload: a
ZCL header and a command serialised by zigpy's own types, so the bytes are
what a real SEP 1.x device would put in its APS payload (HAN-1).

What zigpy already defines is used as is: the Smart Energy *Metering*
cluster (0x0702: ``current_summ_delivered``, ``instantaneous_demand``,
``supply_status``, and the commands ``change_supply`` and
``local_change_supply``) and the ZCL foundation commands (read/write
attributes, default response).

zigpy leaves the *Prepayment* (0x0705) and *Tunneling* (0x0704) clusters
empty; they are defined here as proper zigpy clusters, from ZigBee Smart
Energy Standard 1.2a (07-5356-19) D.7 (Prepayment) and D.6 (Tunneling).
``Prepayment.change_supply`` (0x01) and ``supply_status_response`` are the
SE 1.1 (07-5356-16) definitions, deprecated in SE 1.2: the PPMID twin uses
``change_supply`` because it carries the *request date/time* a meter needs
to refuse a stale enable (safety property 4).  These classes are kept out
of zigpy's global cluster registry (``_skip_registry``), so nothing else in
the process changes behaviour by importing them.

GB remote commands reach a meter inside GBCS messages tunnelled to the
device; :class:`RemoteRequest`/:class:`RemoteResponse`/:class:`DeviceAlert`
are the rig's compact stand-in for that outer layer (who sent it, for which
device and premises, when, its signature) around an inner ZCL frame.

Example::

    from rig.protocol import zcl

    data = zcl.command(zcl.Metering, "local_change_supply", tsn=7, proposed_supply_status=2)
    frame = zcl.parse(zcl.Metering, data)
    assert frame.name == "local_change_supply" and frame.args["proposed_supply_status"] == 2
"""

from __future__ import annotations

import hashlib as _hashlib
import hmac as _hmac
import json
from dataclasses import dataclass, field
from typing import Any, Final

import zigpy.types as t
from zigpy.zcl import Cluster, foundation
from zigpy.zcl.clusters.smartenergy import Metering, SupplyStatus
from zigpy.zcl.foundation import BaseAttributeDefs, BaseCommandDefs, ZCLAttributeDef, ZCLCommandDef

__all__ = [
    "Metering", "Prepayment", "Tunneling", "LoadLimit", "SupplyStatus", "Status", "Zcl",
    "command", "read_attributes", "read_attributes_response", "write_attributes",
    "write_attributes_response", "default_response", "parse", "cluster_by_id",
    "RemoteRequest", "RemoteResponse", "DeviceAlert", "RemoteRole", "TunnelKind",
    "to_utc", "from_utc",
]

Status = foundation.Status

#: ZCL UTCTime counts seconds from 2000-01-01T00:00:00Z
ZIGBEE_EPOCH = 946684800


def to_utc(lab_time: float) -> t.UTCTime:
    """Lab time (Unix seconds) as a ZCL UTCTime."""
    return t.UTCTime(max(0, int(lab_time) - ZIGBEE_EPOCH))


def from_utc(value: int) -> float:
    return float(int(value) + ZIGBEE_EPOCH)


# ----------------------------------------------------------------------------- Prepayment (SE 1.2a D.7)
class OriginatingDevice(t.enum8):
    Energy_Service_Interface = 0x00
    Meter = 0x01
    In_Home_Display = 0x02


class CreditStatus(t.bitmap8):
    Credit_Ok = 0x01
    Low_Credit = 0x02
    Emergency_Credit_Enabled = 0x04
    Emergency_Credit_Available = 0x08
    Emergency_Credit_Selected = 0x10
    Emergency_Credit_In_Use = 0x20
    Credit_Exhausted = 0x40


class TopUpResult(t.enum8):
    """Result Type of the Consumer Top Up Response."""

    Accepted = 0x00
    Rejected_Invalid_Top_Up = 0x01
    Rejected_Duplicate_Top_Up = 0x02
    Rejected_Error = 0x03
    Rejected_Max_Credit_Reached = 0x04
    Rejected_Keypad_Lock = 0x05
    Rejected_Top_Up_Value_Too_Large = 0x06
    Accepted_Supply_Enabled = 0x10
    Accepted_Supply_Disabled = 0x11
    Accepted_Supply_Armed = 0x12


class CreditAdjustmentType(t.enum8):
    Incremental = 0x00
    Absolute = 0x01


class Prepayment(Cluster):
    """Smart Energy Prepayment cluster (0x0705).  Money is in pence."""

    cluster_id: Final[t.uint16_t] = 0x0705
    ep_attribute: Final = "smartenergy_prepayment"
    _skip_registry = True

    class AttributeDefs(BaseAttributeDefs):
        payment_control_configuration: Final = ZCLAttributeDef(id=0x0000, type=t.bitmap16, access="r")
        credit_remaining: Final = ZCLAttributeDef(id=0x0001, type=t.int32s, access="r")
        emergency_credit_remaining: Final = ZCLAttributeDef(id=0x0002, type=t.int32s, access="r")
        credit_status: Final = ZCLAttributeDef(id=0x0003, type=CreditStatus, access="r")
        credit_remaining_timestamp: Final = ZCLAttributeDef(id=0x0004, type=t.UTCTime, access="r")
        accumulated_debt: Final = ZCLAttributeDef(id=0x0005, type=t.int32s, access="r")
        overall_debt_cap: Final = ZCLAttributeDef(id=0x0006, type=t.int32s, access="r")
        emergency_credit_limit_allowance: Final = ZCLAttributeDef(id=0x0010, type=t.uint32_t, access="r")
        emergency_credit_threshold: Final = ZCLAttributeDef(id=0x0011, type=t.uint32_t, access="r")
        total_credit_added: Final = ZCLAttributeDef(id=0x0020, type=t.uint48_t, access="r")
        max_credit_limit: Final = ZCLAttributeDef(id=0x0021, type=t.uint32_t, access="r")
        max_credit_per_top_up: Final = ZCLAttributeDef(id=0x0022, type=t.uint32_t, access="r")
        friendly_credit_warning: Final = ZCLAttributeDef(id=0x0030, type=t.uint8_t, access="r")
        low_credit_warning_level: Final = ZCLAttributeDef(id=0x0031, type=t.uint32_t, access="r")
        cut_off_value: Final = ZCLAttributeDef(id=0x0040, type=t.int32s, access="r")

    class ServerCommandDefs(BaseCommandDefs):
        select_available_emergency_credit: Final = ZCLCommandDef(
            id=0x00,
            schema={"command_issue_date_time": t.UTCTime, "originating_device": OriginatingDevice},
        )
        # SE 1.1; deprecated in SE 1.2 (Metering change_supply / local_change_supply)
        change_supply: Final = ZCLCommandDef(
            id=0x01,
            schema={
                "provider_id": t.uint32_t,
                "request_date_time": t.UTCTime,
                "implementation_date_time": t.UTCTime,
                "proposed_supply_status": SupplyStatus,
                "originator_id_supply_control_bits": t.bitmap8,
            },
        )
        change_debt: Final = ZCLCommandDef(
            id=0x02,
            schema={
                "issuer_event_id": t.uint32_t,
                "debt_label": t.LVBytes,
                "debt_amount": t.int32s,
                "debt_recovery_method": t.enum8,
                "debt_amount_type": t.enum8,
                "debt_recovery_start_time": t.UTCTime,
                "debt_recovery_collection_time": t.uint16_t,
                "debt_recovery_frequency": t.enum8,
                "debt_recovery_amount": t.int32s,
                "debt_recovery_balance_percentage": t.uint16_t,
            },
        )
        emergency_credit_setup: Final = ZCLCommandDef(
            id=0x03,
            schema={
                "issuer_event_id": t.uint32_t,
                "start_time": t.UTCTime,
                "emergency_credit_limit": t.uint32_t,
                "emergency_credit_threshold": t.uint32_t,
            },
        )
        consumer_top_up: Final = ZCLCommandDef(
            id=0x04,
            schema={"originating_device": OriginatingDevice, "top_up_code": t.LVBytes},
        )
        credit_adjustment: Final = ZCLCommandDef(
            id=0x05,
            schema={
                "issuer_event_id": t.uint32_t,
                "start_time": t.UTCTime,
                "credit_adjustment_type": CreditAdjustmentType,
                "credit_adjustment_value": t.int32s,
            },
        )
        change_payment_mode: Final = ZCLCommandDef(
            id=0x06,
            schema={
                "provider_id": t.uint32_t,
                "issuer_event_id": t.uint32_t,
                "implementation_date_time": t.UTCTime,
                "proposed_payment_control_configuration": t.bitmap16,
                "cut_off_value": t.int32s,
            },
        )
        get_prepay_snapshot: Final = ZCLCommandDef(
            id=0x07,
            schema={
                "earliest_start_time": t.UTCTime,
                "latest_end_time": t.UTCTime,
                "snapshot_offset": t.uint8_t,
                "snapshot_cause": t.bitmap32,
            },
        )
        get_top_up_log: Final = ZCLCommandDef(
            id=0x08, schema={"latest_end_time": t.UTCTime, "number_of_records": t.uint8_t},
        )
        set_low_credit_warning_level: Final = ZCLCommandDef(
            id=0x09, schema={"low_credit_warning_level": t.uint32_t},
        )
        get_debt_repayment_log: Final = ZCLCommandDef(
            id=0x0A,
            schema={"latest_end_time": t.UTCTime, "number_of_debts": t.uint8_t, "debt_type": t.enum8},
        )
        set_maximum_credit_limit: Final = ZCLCommandDef(
            id=0x0B,
            schema={
                "provider_id": t.uint32_t,
                "issuer_event_id": t.uint32_t,
                "implementation_date_time": t.UTCTime,
                "maximum_credit_level": t.uint32_t,
                "maximum_credit_per_top_up": t.uint32_t,
            },
        )
        set_overall_debt_cap: Final = ZCLCommandDef(
            id=0x0C,
            schema={
                "provider_id": t.uint32_t,
                "issuer_event_id": t.uint32_t,
                "implementation_date_time": t.UTCTime,
                "overall_debt_cap": t.int32s,
            },
        )

    class ClientCommandDefs(BaseCommandDefs):
        # SE 1.1; answer to change_supply
        supply_status_response: Final = ZCLCommandDef(
            id=0x00,
            schema={
                "provider_id": t.uint32_t,
                "implementation_date_time": t.UTCTime,
                "supply_status": SupplyStatus,
            },
        )
        change_payment_mode_response: Final = ZCLCommandDef(
            id=0x02,
            schema={
                "friendly_credit": t.bitmap8,
                "friendly_credit_calendar_id": t.uint32_t,
                "emergency_credit_limit": t.uint32_t,
                "emergency_credit_threshold": t.uint32_t,
            },
        )
        consumer_top_up_response: Final = ZCLCommandDef(
            id=0x03,
            schema={
                "result_type": TopUpResult,
                "top_up_value": t.int32s,
                "source_of_top_up": OriginatingDevice,
                "credit_remaining": t.int32s,
            },
        )


# ----------------------------------------------------------------------------- Tunneling (SE 1.2a D.6)
class TunnelStatus(t.enum8):
    Success = 0x00
    Busy = 0x01
    No_More_Tunnel_Ids = 0x02
    Protocol_Not_Supported = 0x03
    Flow_Control_Not_Supported = 0x04


class Tunneling(Cluster):
    """Smart Energy Tunneling cluster (0x0704): GBCS messages travel in it."""

    cluster_id: Final[t.uint16_t] = 0x0704
    ep_attribute: Final = "smartenergy_tunneling"
    _skip_registry = True

    class AttributeDefs(BaseAttributeDefs):
        close_tunnel_timeout: Final = ZCLAttributeDef(id=0x0000, type=t.uint16_t, access="r")

    class ServerCommandDefs(BaseCommandDefs):
        request_tunnel: Final = ZCLCommandDef(
            id=0x00,
            schema={
                "protocol_id": t.enum8,
                "manufacturer_code": t.uint16_t,
                "flow_control_support": t.Bool,
                "maximum_incoming_transfer_size": t.uint16_t,
            },
        )
        close_tunnel: Final = ZCLCommandDef(id=0x01, schema={"tunnel_id": t.uint16_t})
        transfer_data: Final = ZCLCommandDef(id=0x02, schema={"tunnel_id": t.uint16_t, "data": t.Bytes})

    class ClientCommandDefs(BaseCommandDefs):
        request_tunnel_response: Final = ZCLCommandDef(
            id=0x00,
            schema={
                "tunnel_id": t.uint16_t,
                "tunnel_status": TunnelStatus,
                "maximum_incoming_transfer_size": t.uint16_t,
            },
        )
        transfer_data: Final = ZCLCommandDef(id=0x01, schema={"tunnel_id": t.uint16_t, "data": t.Bytes})


# ----------------------------------------------------------------------------- load limit (rig-specific)
class LoadLimit(Cluster):
    """The ESME's load limit configuration (SUP-9).  GB meters set it with a
    DLMS object (GBCS ECS28a); SE 1.x has no cluster for it, so the rig uses
    this manufacturer-specific cluster, written with ZCL Write Attributes."""

    cluster_id: Final[t.uint16_t] = 0xFF52
    ep_attribute: Final = "rig_load_limit"
    _skip_registry = True

    class AttributeDefs(BaseAttributeDefs):
        threshold_w: Final = ZCLAttributeDef(id=0x0000, type=t.uint32_t, access="rw")
        period_s: Final = ZCLAttributeDef(id=0x0001, type=t.uint16_t, access="rw")
        active: Final = ZCLAttributeDef(id=0x0002, type=t.Bool, access="r")


_CLUSTERS: dict[int, type[Cluster]] = {c.cluster_id: c for c in (Metering, Prepayment, Tunneling, LoadLimit)}


def cluster_by_id(cluster_id: int) -> type[Cluster]:
    try:
        return _CLUSTERS[cluster_id]
    except KeyError:
        raise ValueError(f"the simulated HAN carries no cluster 0x{cluster_id:04X}") from None


# ----------------------------------------------------------------------------- building frames
def _header(command_id: int, tsn: int, general: bool, to_client: bool, disable_default_response: bool = False):
    fc = foundation.FrameControl(
        frame_type=foundation.FrameType.GLOBAL_COMMAND if general else foundation.FrameType.CLUSTER_COMMAND,
        is_manufacturer_specific=False,
        direction=foundation.Direction.Server_to_Client if to_client else foundation.Direction.Client_to_Server,
        disable_default_response=disable_default_response,
        reserved=0b000,
    )
    return foundation.ZCLHeader(frame_control=fc, manufacturer=None, tsn=tsn & 0xFF, command_id=command_id)


def command(cluster: type[Cluster], name: str, *, tsn: int, to_client: bool | None = None, **fields: Any) -> bytes:
    """A cluster-specific command frame.  Server commands (to the meter) and
    client commands (responses, from the meter) are found by name;
    ``to_client`` picks the direction where both have the name (Tunneling
    ``transfer_data``)."""
    server = next((c for c in cluster.ServerCommandDefs if c.name == name), None)
    client = next((c for c in cluster.ClientCommandDefs if c.name == name), None)
    if to_client is None:
        to_client = server is None
    cmd = client if to_client else server
    if cmd is None:
        raise ValueError(f"{cluster.__name__} has no command '{name}'")
    payload = cmd.schema(**fields)
    return _header(cmd.id, tsn, general=False, to_client=to_client).serialize() + payload.serialize()


def _attr(cluster: type[Cluster], name: str) -> ZCLAttributeDef:
    a = next((a for a in cluster.AttributeDefs if a.name == name), None)
    if a is None:
        raise ValueError(f"{cluster.__name__} has no attribute '{name}'")
    return a


def read_attributes(cluster: type[Cluster], names: list[str], *, tsn: int) -> bytes:
    ids = [_attr(cluster, n).id for n in names]
    schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Read_Attributes].schema
    return (_header(foundation.GeneralCommand.Read_Attributes, tsn, True, False).serialize()
            + schema(attribute_ids=ids).serialize())


def read_attributes_response(cluster: type[Cluster], ids: list[int], values: dict[str, Any], *, tsn: int) -> bytes:
    """Answer a read: ``values`` by attribute name; ids the meter does not
    hold are answered UNSUPPORTED_ATTRIBUTE, as ZCL requires."""
    by_id = {a.id: a for a in cluster.AttributeDefs}
    records = []
    for attrid in ids:
        a = by_id.get(attrid)
        if a is None or a.name not in values or values[a.name] is None:
            records.append(foundation.ReadAttributeRecord(attrid, Status.UNSUPPORTED_ATTRIBUTE))
            continue
        value = a.type(values[a.name])
        records.append(foundation.ReadAttributeRecord(
            attrid, Status.SUCCESS, foundation.TypeValue(type=a.zcl_type, value=value)))
    schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Read_Attributes_rsp].schema
    return (_header(foundation.GeneralCommand.Read_Attributes_rsp, tsn, True, True).serialize()
            + schema(status_records=records).serialize())


def write_attributes(cluster: type[Cluster], values: dict[str, Any], *, tsn: int) -> bytes:
    attrs = []
    for name, value in values.items():
        a = _attr(cluster, name)
        typed = foundation.TypeValue(type=a.zcl_type, value=a.type(value))
        attrs.append(foundation.Attribute(attrid=a.id, value=typed))
    schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Write_Attributes].schema
    return (_header(foundation.GeneralCommand.Write_Attributes, tsn, True, False).serialize()
            + schema(attributes=attrs).serialize())


def report_attributes(cluster: type[Cluster], values: dict[str, Any], *, tsn: int) -> bytes:
    """An unsolicited attribute report (a battery device pushing its mirror)."""
    attrs = []
    for name, value in values.items():
        a = _attr(cluster, name)
        typed = foundation.TypeValue(type=a.zcl_type, value=a.type(value))
        attrs.append(foundation.Attribute(attrid=a.id, value=typed))
    schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Report_Attributes].schema
    return (_header(foundation.GeneralCommand.Report_Attributes, tsn, True, False, True).serialize()
            + schema(attribute_reports=attrs).serialize())


def write_attributes_response(status: foundation.Status, attrids: list[int], *, tsn: int) -> bytes:
    if status == Status.SUCCESS:
        records = [foundation.WriteAttributesStatusRecord(status=Status.SUCCESS)]
    else:
        records = [foundation.WriteAttributesStatusRecord(status=status, attrid=a) for a in attrids]
    schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Write_Attributes_rsp].schema
    return (_header(foundation.GeneralCommand.Write_Attributes_rsp, tsn, True, True).serialize()
            + schema(status_records=foundation.WriteAttributesResponse(records)).serialize())


def default_response(command_id: int, status: foundation.Status, *, tsn: int, to_client: bool = True) -> bytes:
    schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Default_Response].schema
    return (_header(foundation.GeneralCommand.Default_Response, tsn, True, to_client, True).serialize()
            + schema(command_id=command_id, status=status).serialize())


# ----------------------------------------------------------------------------- parsing
@dataclass
class Zcl:
    """One parsed ZCL frame."""

    cluster: type[Cluster]
    tsn: int
    general: bool
    to_client: bool
    command_id: int
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    raw: Any = None

    def attributes(self) -> dict[str, Any]:
        """Read Attributes response records as {name: value} (successes only)."""
        by_id = {a.id: a for a in self.cluster.AttributeDefs}
        out: dict[str, Any] = {}
        for rec in self.args.get("status_records", []):
            a = by_id.get(rec.attrid)
            if a is not None and rec.status == Status.SUCCESS:
                out[a.name] = rec.value.value
        return out

    def requested(self) -> list[int]:
        return [int(i) for i in self.args.get("attribute_ids", [])]

    def written(self) -> dict[int, Any]:
        return {int(a.attrid): a.value.value for a in self.args.get("attributes", [])}

    def reported(self) -> dict[str, Any]:
        """Report Attributes records as {name: value}."""
        by_id = {a.id: a for a in self.cluster.AttributeDefs}
        return {by_id[int(a.attrid)].name: a.value.value for a in self.args.get("attribute_reports", [])
                if int(a.attrid) in by_id}


class ZclError(ValueError):
    """Bytes that are not a ZCL frame of the named cluster."""


def parse(cluster: type[Cluster], data: bytes) -> Zcl:
    """Parse a ZCL frame of ``cluster`` with zigpy (raises :class:`ZclError`)."""
    try:
        hdr, rest = foundation.ZCLHeader.deserialize(data)
        to_client = hdr.direction == foundation.Direction.Server_to_Client
        if hdr.frame_control.frame_type == foundation.FrameType.CLUSTER_COMMAND:
            defs = cluster.ClientCommandDefs if to_client else cluster.ServerCommandDefs
            cmd = next((c for c in defs if c.id == hdr.command_id), None)
            if cmd is None:
                raise ZclError(f"{cluster.__name__}: unknown command 0x{hdr.command_id:02X}")
            payload, _ = cmd.schema.deserialize(rest)
            return Zcl(cluster, int(hdr.tsn), False, to_client, int(hdr.command_id), cmd.name,
                       payload.as_dict(), payload)
        gen = foundation.GeneralCommand(hdr.command_id)
        payload, _ = foundation.GENERAL_COMMANDS[gen].schema.deserialize(rest)
        return Zcl(cluster, int(hdr.tsn), True, to_client, int(hdr.command_id), gen.name,
                   payload.as_dict(), payload)
    except ZclError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ZclError(f"not a {cluster.__name__} ZCL frame: {exc}") from None


#: the time fields a forger rewrites so that a forged command looks fresh
_TIMESTAMPS = {"change_supply": "request_date_time", "select_available_emergency_credit": "command_issue_date_time"}


def restamp(cluster_id: int, data: bytes, lab_time: float) -> bytes:
    """The same cluster command with its issue time set to ``lab_time``
    (frames with no issue time come back unchanged)."""
    try:
        cluster = cluster_by_id(cluster_id)
        parsed = parse(cluster, data)
    except ValueError:
        return data
    name = _TIMESTAMPS.get(parsed.name)
    if parsed.general or name is None or name not in parsed.args:
        return data
    fields = dict(parsed.args)
    fields[name] = to_utc(lab_time)
    return command(cluster, parsed.name, tsn=parsed.tsn, to_client=parsed.to_client, **fields)


# ----------------------------------------------------------------------------- GBCS-like outer layer
class RemoteRole(t.enum8):
    """Who a remote command comes from (GBCS Remote Party roles)."""

    supplier = 0x01
    dno = 0x02
    cad = 0x03
    wan_provider = 0x04


class TunnelKind(t.enum8):
    request = 0x01
    response = 0x02
    alert = 0x03


class RemoteRequest(t.Struct):
    """A remote party's command to one device, as the head end sends it:
    ``zcl`` is the inner ZCL frame for cluster ``cluster``."""

    kind: TunnelKind
    request_id: t.uint32_t
    role: RemoteRole
    target: t.EUI64
    cluster: t.uint16_t
    premises: t.CharacterString
    issued: t.UTCTime
    zcl: t.LVBytes
    signature: t.LVBytes


class RemoteResponse(t.Struct):
    kind: TunnelKind
    request_id: t.uint32_t
    status: foundation.Status
    reason: t.CharacterString
    requirement: t.CharacterString
    zcl: t.LVBytes


class DeviceAlert(t.Struct):
    """A device alert on its way to the head end (GBCS alert, code and data)."""

    kind: TunnelKind
    alert_code: t.uint16_t
    raised: t.UTCTime
    source: t.EUI64
    data: t.LVBytes

    def details(self) -> dict[str, Any]:
        return json.loads(bytes(self.data).decode()) if self.data else {}


def encode_details(details: dict[str, Any]) -> bytes:
    """An alert's data field: compact JSON (GBCS alert payloads are opaque
    to the HAN; the head end decodes them)."""
    return json.dumps(details, separators=(",", ":"), default=str).encode()


def tunnel_kind(data: bytes) -> TunnelKind:
    if not data:
        raise ZclError("empty tunnel payload")
    return TunnelKind(data[0])


def eui64(text: str) -> t.EUI64:
    """``00:0d:6f:...`` as zigpy's EUI64 (which keeps the bytes little-endian)."""
    return t.EUI64.convert(text)


# ----------------------------------------------------------------------------- simulated credentials
# The simulated lab's stand-in for the GB PKI: keys derived from the lab's
# name, so the head end twin and the meter twins agree without any secret in
# lab.yaml.  A real lab's head end and meters use the DCC's credentials.
def role_key(lab: str, role: str) -> bytes:
    """The signing key of a remote party role (supplier, dno, ...)."""
    return _hashlib.sha256(f"rig-sim-credentials:{lab}:role:{role}".encode()).digest()


def signed_bytes(req: RemoteRequest) -> bytes:
    unsigned = RemoteRequest(**{**req.as_dict(), "signature": b""})
    return unsigned.serialize()


def sign(req: RemoteRequest, key: bytes) -> bytes:
    return _hmac.new(key, signed_bytes(req), _hashlib.sha256).digest()[:16]


def verify(req: RemoteRequest, key: bytes) -> bool:
    return _hmac.compare_digest(sign(req, key), bytes(req.signature))


class UtrnError(ValueError):
    """A top-up code a meter must reject; ``alert`` is the GBCS alert code."""

    def __init__(self, message: str, alert: int):
        super().__init__(message)
        self.alert = alert


def meter_key(lab: str, eui: str) -> bytes:
    return _hashlib.sha256(f"rig-sim-credentials:{lab}:utrn:{eui.lower()}".encode()).digest()


def _device_check(eui: str) -> int:
    return int.from_bytes(_hashlib.sha256(eui.lower().encode()).digest()[:2], "big") % 100


def _utrn_mac(key: bytes, body: str) -> int:
    return int.from_bytes(_hmac.new(key, body.encode(), _hashlib.sha256).digest()[:8], "big") % 10 ** 8


def make_utrn(key: bytes, eui: str, amount_pence: int, counter: int) -> str:
    """A 20-digit UTRN: amount (5 digits, pence), counter (5), device check
    (2), authenticator (8).  Real UTRNs are built by the supplier with the
    meter's key (GBCS 'Prepayment Top-up'); this keeps that shape."""
    if not 0 < amount_pence < 10 ** 5:
        raise ValueError("a UTRN carries 0.01 to 999.99 GBP")
    body = f"{amount_pence:05d}{counter % 10 ** 5:05d}{_device_check(eui):02d}"
    return body + f"{_utrn_mac(key, body):08d}"


def read_utrn(key: bytes, eui: str, code: str) -> tuple[int, int]:
    """(amount in pence, counter) of a UTRN for this meter, or :class:`UtrnError`."""
    code = code.replace(" ", "").replace("-", "")
    if len(code) != 20 or not code.isdigit():
        raise UtrnError("a UTRN is 20 digits", 0x8F63)
    body, mac = code[:12], int(code[12:])
    if int(body[10:12]) != _device_check(eui):
        raise UtrnError("UTRN not for this device", 0x8F64)
    if mac != _utrn_mac(key, body):
        raise UtrnError("UTRN not authentic", 0x8F63)
    return int(body[:5]), int(body[5:10])
