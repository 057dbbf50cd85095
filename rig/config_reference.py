"""Render docs/lab-yaml.md (every key of lab.yaml) from the models in
rig/config.py, so the reference cannot fall behind the code.

    python -m rig.config_reference > docs/lab-yaml.md
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import config as c
from . import parts

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("lab", c.LabInfo, "the lab's name, clock and results store"),
    ("lab.clock", c.ClockConfig, ""),
    ("lab.results", c.ResultsConfig, ""),
    ("broker", c.BrokerConfig, "where the lab's MQTT broker is"),
    ("broker.tls", c.TlsConfig, ""),
    ("broker.server_tls", c.ServerTls, "the TLS of a broker `rig up` starts (mosquitto only; required off loopback)"),
    ("benches.NAME", c.BenchConfig, "one bench; NAME becomes an MQTT topic level"),
    ("benches.NAME.controller", c.ControllerConfig, "the bench's Raspberry Pi (`rig agent`)"),
    ("benches.NAME.controller.estop", c.EStopConfig, ""),
    ("benches.NAME.relays.NAME", c.RelayConfig, "a GPIO relay"),
    ("benches.NAME.instruments.NAME", c.InstrumentConfig, "a bench instrument (see docs/instruments.md)"),
    # then each instrument kind's limits (from its drivers' declared settings)
    ("benches.NAME.devices.NAME", c.DeviceConfig, "a device under test (see docs/devices.md)"),
    ("benches.NAME.devices.NAME.han", c.HanLink, ""),
    # then each device kind's settings (from its declaration)
    ("benches.NAME.actuators.DEVICE.BUTTON", c.ButtonActuator,
     "a GPIO output of the controller wired across one of a device's buttons (BUTTON: "
     + "; ".join(f"{k}: {', '.join(b for b in v if not b.startswith('key_'))}"
                 + (", key_0 .. key_9, key_enter" if any(x.startswith('key_') for x in v) else "")
                 for k, v in ((d.kind, d.buttons) for d in parts.device_kinds().values() if d.buttons))
     + "); released at rest, on safe, E-stop, lost lease and exit"),
    ("benches.NAME.head_end, kind: simulated", c.SimulatedHeadEndConfig, "the simulated DCC (the default)"),
    ("benches.NAME.head_end, kind: http", c.HttpHeadEndConfig, "a lab's test head end over HTTP"),
    ("benches.NAME.head_end.requests.OP", c.HttpRequest, "one operation as an HTTP request (OP: "
     + ", ".join(c.HEAD_END_OPS) + ")"),
    ("benches.NAME.head_end.auth", c.HttpAuth, ""),
    ("benches.NAME.head_end.webhook", c.HttpWebhook, ""),
    ("benches.NAME.head_end, any other kind", c.PluginHeadEndConfig,
     "a head end an installed package plugs in (entry point group `rig.headends`)"),
    ("benches.NAME.rf_paths.NAME", c.RfPath, "a radio path between two devices"),
    ("benches.NAME.rf_paths.NAME.premises", c.Premises, ""),
    ("benches.NAME.wiring", c.Wiring, "what feeds what, for the physical bench model"),
    ("han", c.HanConfig, "the simulated HAN medium"),
    ("han.bands.BAND", c.BandModel, "per band: 2.4GHz and 868MHz"),
    ("suites", c.SuitesConfig, "the suites' repeat counts and tolerances; the requirement values they judge "
     "against are the requirements' own (rig/reference.py), unless a deviation is declared here"),
    ("suites.deviations.KEY", c.Deviation, "one requirement value this lab judges against instead (KEY: "
     + ", ".join(f"`{k}` ({r.value:g} {r.units}, {r.requirement})" for k, r in c.REFERENCES.items())
     + "); the run record, the report and the safety pack show it in red"),
    ("suites.outage", c.OutageSuite, ""),
    ("suites.safety", c.SafetySuite, ""),
    ("suites.propagation", c.PropagationSuite, ""),
]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner = typing.get_args(annotation)[0]
        if typing.get_origin(inner) is typing.Union and all(
                isinstance(typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a, type)
                for a in typing.get_args(inner)):
            return "section (by `kind`)"
        return _type_name(inner)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and \
            {_type_name(a) for a in typing.get_args(annotation)} == {"section"}:
        return "section (by `kind`)"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None)) + (
            " or null" if type(None) in typing.get_args(annotation) else "")
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        k, v = typing.get_args(annotation)
        return f"map of {_type_name(v)}"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "section"
        return {"str": "text", "int": "integer", "float": "number", "bool": "true/false",
                "PosixPath": "path", "Path": "path"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        return "(see below)" if isinstance(field.default_factory, type) else "(computed)"
    value = field.default
    if value is None or value is PydanticUndefined:
        return "null"
    return f"`{value}`"


def sections() -> list[tuple[str, type[BaseModel], str]]:
    """SECTIONS with the declared kinds' own sections (rig/parts.py) in place."""
    out: list[tuple[str, type[BaseModel], str]] = []
    for path, model, blurb in SECTIONS:
        out.append((path, model, blurb))
        if model is c.InstrumentConfig:
            out += [(f"instruments, kind: {kind}: limits", c.limits_model(kind), decl.doc)
                    for kind, decl in parts.instrument_kinds().items() if c.limits_model(kind).model_fields]
        elif model is c.HanLink:
            out += [(f"devices, kind: {kind}: settings", decl.load_settings(), decl.doc)
                    for kind, decl in parts.device_kinds().items()]
    return out


def render() -> str:
    out = [
        "# lab.yaml reference",
        "",
        "Generated from `rig/config.py` by `python -m rig.config_reference`; a test keeps it in step.",
        "Unknown keys are errors. Durations are lab seconds unless a key says wall seconds.",
        "Credentials are never written in lab.yaml: keys such as `password` are refused; name an",
        "environment variable with `username_env` / `password_env` instead.",
        "",
    ]
    for path, model, blurb in sections():
        out += [f"## `{path}`", ""]
        if blurb:
            out += [blurb, ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
