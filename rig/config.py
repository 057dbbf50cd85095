"""The lab model: what ``lab.yaml`` may say, validated.

A lab has one broker and one or more benches.  A bench has one controller
(the Raspberry Pi running ``rig agent``), its GPIO relays, its bench
instruments (VISA/serial), the devices under test, the RF paths between them
and the wiring that says which relay feeds which meter.

Each part names its *backend* here and nowhere else: ``pin_factory: mock`` or
``lgpio``; an instrument ``address`` of ``sim`` or a VISA resource such as
``TCPIP::10.0.0.5::5025::SOCKET``; a device ``backend`` of ``sim`` or an
adapter such as ``zigpy``.

Invalid input fails with ``file:line: key: message`` (see :func:`load_lab`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from . import parts, yamlpos
from .reference import REFERENCES, Deviation

BANDS = ("2.4GHz", "868MHz")
Band = Literal["2.4GHz", "868MHz"]
#: GB mains, nominal (BS EN 50160 as GB applies it): the meters' nominal voltage by default, the grid
#: that feeds a bench without an AC source, the simulated source's output until it is programmed
MAINS_VOLTAGE = 230.0
MAINS_FREQUENCY = 50.0


class ConfigError(Exception):
    """A lab.yaml problem, already phrased as ``file:line: key: message``."""

    def __init__(self, file: str, line: int, key: str, message: str):
        self.file, self.line, self.key, self.message = file, line, key, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class UnknownPart(KeyError):
    """A bench, relay, instrument or device name that the lab file lacks."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown part"


class Strict(BaseModel):
    """Base for every lab.yaml section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


_SECRET_KEYS = {"password", "passwd", "secret", "token", "username", "user", "key_password"}


def _inline_secrets(data: Any, path: tuple = ()) -> list[tuple[tuple, str]]:
    """Keys anywhere in the file that would hold a credential inline."""
    found: list[tuple[tuple, str]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if str(key).lower() in _SECRET_KEYS:
                env = "username_env" if "user" in str(key).lower() else "password_env"
                found.append((path + (key,), (
                    "inline credentials are not allowed in lab.yaml: put the value in an environment "
                    f"variable and name the variable with '{env}'"
                )))
            else:
                found += _inline_secrets(value, path + (key,))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            found += _inline_secrets(item, path + (i,))
    return found


# --------------------------------------------------------------------------- lab-wide
class TlsConfig(Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(False, description="skip hostname check (lab bring-up only)")


class ServerTls(Strict):
    """TLS of a broker the rig starts (``rig up``; mosquitto only): the
    broker's own certificate.  Clients check it against ``broker.tls.ca_file``."""

    cert_file: Path = Field(..., description="the broker's certificate (PEM)")
    key_file: Path = Field(..., description="its private key (PEM)")
    require_certificate: bool = Field(False, description="clients must also present a certificate signed by "
                                      "broker.tls.ca_file")


class BrokerConfig(Strict):
    """Where the lab's MQTT broker is.

    ``auto`` starts mosquitto when it is on PATH and otherwise the embedded
    pure-Python amqtt (MQTT 3.1.1); ``external`` connects to ``url``.
    """

    kind: Literal["auto", "amqtt", "mosquitto", "external"] = "auto"
    host: str = "127.0.0.1"
    port: int = Field(18830, ge=0, le=65535, description="0 picks a free port")
    url: str | None = None
    tls: TlsConfig | None = Field(None, description="how clients check the broker (ca_file) and, optionally, "
                                  "present a client certificate (cert_file, key_file)")
    server_tls: ServerTls | None = Field(None, description="a broker the rig starts serves TLS with this "
                                         "certificate (required off loopback)")
    username_env: str | None = None
    password_env: str | None = None
    keepalive: int = Field(10, ge=2, le=600)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^mqtts?://[^/:@]+(:\d+)?/?$", v):
            if "@" in v:
                raise ValueError("credentials in the URL are not allowed: use username_env/password_env")
            raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
        return v

    @model_validator(mode="after")
    def _external_needs_url(self) -> "BrokerConfig":
        if self.kind == "external" and not self.url:
            raise ValueError("kind 'external' needs a url (mqtt://host:port or mqtts://host:port)")
        return self

    def credentials(self) -> tuple[str | None, str | None]:
        """(username, password) from the environment variables named here."""
        user = os.environ.get(self.username_env) if self.username_env else None
        pw = os.environ.get(self.password_env) if self.password_env else None
        return user, pw


class ClockConfig(Strict):
    scale: float = Field(1.0, gt=0, description="lab seconds per wall second; 1 on real hardware")


class ResultsConfig(Strict):
    dir: Path = Path("runs")
    store: str = Field("sqlite:///runs/history.sqlite", description="sqlite:///path or postgresql://...")


# --------------------------------------------------------------------------- controller
PinId = Union[int, str]


def normalise_pin(pin: PinId) -> str:
    """One spelling per BCM pin, for duplicate checks: 17, 'GPIO17', 'BCM17' -> 'BCM17'."""
    if isinstance(pin, int):
        return f"BCM{pin}"
    m = re.fullmatch(r"(?:GPIO|BCM)?(\d+)", str(pin).strip(), flags=re.I)
    return f"BCM{int(m.group(1))}" if m else str(pin).strip().upper()


class EStopConfig(Strict):
    """A GPIO input that forces every output safe and latches until reset."""

    pin: PinId
    pull_up: bool | None = Field(True, description="null when an external resistor pulls the input")
    active_state: bool | None = Field(None, description="set only when pull_up is null (external pull resistor)")
    bounce_time: float | None = Field(0.01, ge=0)


class ControllerConfig(Strict):
    host: str = "localhost"
    pin_factory: Literal["mock", "lgpio", "rpigpio", "pigpio", "native"] = "mock"
    heartbeat_timeout: float = Field(
        2.0, gt=0, le=60,
        description="wall seconds without the lease holder's heartbeat before every output goes safe",
    )
    estop: EStopConfig | None = None
    lease_term: float = Field(
        60.0, gt=0, le=3600,
        description="wall seconds a lease lasts without the holder's progress (its main work: commands, waits); "
                    "a hung orchestrator whose heartbeat thread still runs loses the lease after it",
    )
    max_clock_skew: float = Field(
        5.0, gt=0, le=3600,
        description="wall seconds the lease holder's clock may differ from this controller's; above it the "
                    "lease is refused or ended",
    )


class RelayConfig(Strict):
    pin: PinId
    active_high: bool = True
    safe_state: Literal["on", "off"] = Field(
        ..., description="the state every exit, crash and lost heartbeat puts this relay in",
    )
    min_interval: float = Field(1.0, ge=0, description="lab seconds between two switchings")
    description: str = ""

    @field_validator("safe_state", mode="before")
    @classmethod
    def _yaml_bools(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as False and `on` as True
        if v is True:
            return "on"
        if v is False:
            return "off"
        return v


# --------------------------------------------------------------------------- instruments
class InstrumentLimits(BaseModel):
    """Ratings and interlock limits of an instrument; a setpoint outside them is
    refused before it reaches the wire.

    Each kind accepts the keys its drivers' settings declare
    (:mod:`instruments.settings`; :func:`limits_model`).  This base, used as
    it is by a driver opened outside a lab file, takes any limit as a number."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float] = Field(init=False)

    def get(self, key: str) -> float | None:
        """The limit ``key`` (None: not given)."""
        value = getattr(self, key, None)
        return float(value) if value is not None else None

    if TYPE_CHECKING:  # the kind's model has its limits as attributes: limits.voltage_max
        def __getattr__(self, key: str) -> float | None: ...


def _declared(lookup: Any, name: str) -> str:
    """``name`` if a declaration (rig/parts.py) has it, else the lookup's message as a validation error."""
    try:
        lookup(name)
    except parts.UnknownKind as exc:
        raise ValueError(str(exc)) from None
    return name


class _KindLimits(InstrumentLimits):
    model_config = ConfigDict(extra="forbid")


def limits_model(kind: str) -> type[InstrumentLimits]:
    """The ``limits:`` model of an instrument kind: every limit key its drivers'
    settings declare (rig/parts.py names the drivers)."""
    decl = parts.instrument_kind(kind)
    cached = _LIMITS_MODELS.get(decl)
    if cached is not None:
        return cached
    from instruments.settings import limits_of  # the drivers' declarations (no I/O at import)

    fields: dict[str, Any] = {}
    for driver in decl.drivers:
        for limit in limits_of(driver.load()):
            spec = (Field(None, description=limit.description, ge=0) if limit.zero
                    else Field(None, description=limit.description, gt=0))
            fields.setdefault(limit.key, (float | None, spec))
    model = create_model(f"{kind.title().replace('_', '')}Limits", __base__=_KindLimits, **fields)
    _LIMITS_MODELS[decl] = model
    return model


_LIMITS_MODELS: dict[parts.InstrumentKind, type[InstrumentLimits]] = {}


class InstrumentConfig(Strict):
    kind: str = Field(..., description="ac_source, load_bank, power_analyser, attenuator, optical_probe, or a kind "
                                       "a lab package declares (rig/parts.py)")
    driver: str = Field(..., description="the kind's driver (docs/instruments.md)")
    address: str = Field(
        ..., description="'sim' for a simulated instrument on 127.0.0.1, else a VISA resource or serial URL",
    )
    timeout: float = Field(2.0, gt=0, description="I/O timeout, wall seconds")
    limits: InstrumentLimits = Field(default_factory=InstrumentLimits, validate_default=True,
                                     description="the kind's limits (see the sections below)")
    requires_supply: bool = Field(
        True, description="load bank only: refuse to switch on while the AC source output is off",
    )
    device: str | None = Field(
        None, description="optical_probe only: the meter whose optical port it reads (default: the wiring's meter)",
    )

    @property
    def simulated(self) -> bool:
        return self.address == "sim"

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return _declared(parts.instrument_kind, kind)

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, driver: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        return _declared(parts.instrument_kind(kind).driver, driver) if kind is not None else driver

    @field_validator("limits", mode="before")
    @classmethod
    def _kind_limits(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind")
        if kind is None or isinstance(value, _KindLimits):
            return value
        data = value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value
        return limits_model(kind).model_validate(data if data is not None else {})


# --------------------------------------------------------------------------- devices
#: backends run by a simulated twin: ``sim`` (its own operations and state on
#: the bus) and ``sealed`` (none: reached only as real hardware is)
SIMULATED_BACKENDS = ("sim", "sealed")


class DeviceSettings(Strict):
    """Base of a device kind's ``settings:`` model (the kind's declaration names it)."""

    if TYPE_CHECKING:  # each kind's model has its own settings: device.settings.hold_time
        def __getattr__(self, key: str) -> Any: ...


class HanLink(Strict):
    band: Literal["2.4GHz", "868MHz", "dual"] = "2.4GHz"


class EsmeSettings(DeviceSettings):
    outage_alert_period: float = Field(
        180.0, gt=0, description="the meter's own outage period: it picks the restoration alert, 0x8F35 (shorter) "
        "or 0x8F36 (at least this long). The suites judge against the requirement's 180 s, never this")
    hold_time: float = Field(2.0, gt=0, description="SUP-7: seconds this meter wants its enable button held")
    remote_enable: Literal["arms", "refused", "closes"] = Field(
        "arms",
        description="what this meter does with a remote enable of a disabled supply: 'arms' (at most: the seed's "
                    "rule, SUP-1), 'refused', or 'closes' (a declared safety deviation from properties 1 and 3: "
                    "the safety suite reports it). A remote enable of an ARMED supply is always refused (SUP-2)",
    )
    ppmid_command_ttl: float = Field(
        4.5, gt=0, description="property 4: a PPMID press older than this (lab seconds, by the press's whole-second "
        "time stamp) is stale and refused; it must stay inside the enable bound (5 s)")
    paired_ppmid: str | None = Field(None, description="device name of the PPMID paired with this meter")
    credit: float = Field(20.0, description="initial prepayment credit, GBP")
    emergency_credit: float = Field(5.0, ge=0, description="emergency credit made available, GBP")
    low_credit_threshold: float = Field(2.0, ge=0)
    tariff: float = Field(0.25, gt=0, description="GBP per kWh")
    load_limit_kw: float | None = Field(None, gt=0, description="SUP-9 power threshold; null: no limit")
    load_limit_period: float = Field(30.0, gt=0, description="seconds above the threshold before the contactor opens")
    voltage_nominal: float = MAINS_VOLTAGE
    voltage_sag_threshold: float = Field(207.0, gt=0, description="OUT-6: RMS voltage below this is a sag")
    voltage_swell_threshold: float = Field(253.0, gt=0, description="OUT-6: RMS voltage above this is a swell")
    premises_id: str = Field("MPAN-1000000000001", description="SUP-10: commands for another premises are refused")


class HubSettings(DeviceSettings):
    reserve_seconds: float = Field(120.0, ge=0, description="OUT-5: hub runs this long on its reserve after mains loss")
    outage_alert_period: float = Field(
        180.0, gt=0, description="OUT-2: the WAN provider raises the outage alert (AD1) when this hub has been "
        "without mains this long. The suites judge against the requirement's 180 s, never this")
    gas_mirror_period: float = Field(1800.0, gt=0, description="HAN-7: gas mirror sync period, lab seconds")


class GsmeSettings(DeviceSettings):
    battery_mah: float = Field(19000.0, gt=0)


class PpmidSettings(DeviceSettings):
    paired_meter: str | None = Field(None, description="device name of the ESME this PPMID is paired with")
    hold_time: float = Field(2.0, gt=0, description="SUP-7: seconds this PPMID wants its enable button held")


class IhdSettings(DeviceSettings):
    refresh_period: float = Field(10.0, gt=0)


class DeviceConfig(Strict):
    """A device under test: its kind's settings model comes from its declaration (rig/parts.py)."""

    kind: str = Field(..., description="esme, comms_hub, gsme, ppmid, ihd, or a kind a lab package declares")
    id: str = Field(..., description="the device's EUI-64, e.g. 00:0d:6f:00:00:00:00:01")
    backend: str = Field("sim", description="'sim' for a simulated twin; 'sealed' for a simulated twin reachable "
                         "only as real hardware is (actuators, optical port, HAN, analyser, head end: no operation "
                         "or state of its own on the bus); or an adapter: zigpy, optical")
    adapter: dict[str, Any] = Field(default_factory=dict, description="adapter options (radio path, baud ...)")
    firmware: str | None = None
    faults: list[str] = Field(default_factory=list, description="fault profiles (simulated devices only)")
    han: HanLink = Field(default_factory=HanLink)
    settings: DeviceSettings = Field(default_factory=dict, validate_default=True,
                                     description="the kind's settings (see the sections below)")

    @property
    def simulated(self) -> bool:
        """A twin runs it (``sim`` or ``sealed``): fault profiles apply."""
        return self.backend in SIMULATED_BACKENDS

    @property
    def sealed(self) -> bool:
        return self.backend == "sealed"

    @field_validator("id")
    @classmethod
    def _eui64(cls, v: str) -> str:
        if not re.fullmatch(r"([0-9A-Fa-f]{2}[:-]){7}[0-9A-Fa-f]{2}", v):
            raise ValueError("expected an EUI-64 such as 00:0d:6f:00:00:00:00:01")
        return v.lower().replace("-", ":")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return _declared(parts.device_kind, kind)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, backend: str) -> str:
        return backend if backend in SIMULATED_BACKENDS else _declared(parts.device_backend, backend)

    @field_validator("settings", mode="before")
    @classmethod
    def _kind_settings(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind")
        if kind is None:
            return DeviceSettings()
        model = parts.device_kind(kind).load_settings()
        if isinstance(value, model):
            return value
        return model.model_validate(value if value is not None else {})


# --------------------------------------------------------------------------- actuators
def buttons_of(kind: str) -> tuple[str, ...]:
    """The buttons an actuator may be wired across on a device of ``kind`` (its declaration's)."""
    try:
        return parts.device_kind(kind).buttons
    except parts.UnknownKind:
        return ()


class ButtonActuator(Strict):
    """A GPIO output of the bench controller wired across one button of a
    device: an opto-isolated contact closure in parallel with the switch,
    or a solenoid finger on it.  Its safe state is released."""

    pin: PinId
    active_high: bool = Field(True, description="the output drives high to press (false: low to press)")
    mechanism: Literal["contact", "solenoid"] = Field(
        "contact", description="'contact': an opto-isolated closure across the switch; 'solenoid': a finger on it")
    press_seconds: float = Field(0.2, gt=0, le=5, description="how long a press holds the button down, lab s")
    gap_seconds: float = Field(0.2, gt=0, le=5, description="lab seconds between two presses of a sequence (keypad)")
    max_hold: float = Field(60.0, gt=0, le=600, description="the longest hold the agent accepts, lab s (a solenoid's "
                            "duty limit)")
    description: str = ""


# --------------------------------------------------------------------------- head end
HEAD_END_OPS = ("disable", "arm", "enable", "add_credit", "emergency_credit", "set_load_limit", "read",
                "issue_utrn", "alerts", "probe")


class SimulatedHeadEndConfig(Strict):
    """The simulated DCC on the bus (``rig/v1/<bench>/dcc/headend``)."""

    kind: Literal["simulated"] = "simulated"


class HttpRequest(Strict):
    """One head-end operation as an HTTP request.  ``path`` and the strings
    of ``body``, ``query`` and ``headers`` are templates: ``{name}`` is
    replaced by the operation's value (a string that is exactly ``{name}``
    takes the value's own JSON type).  Names: ``device`` (lab.yaml name),
    ``eui64``, ``premises``, ``role``, ``op``, ``request_id`` (the rig's,
    unique: the head end's idempotency key), ``amount``, ``threshold_kw``,
    ``period``, ``what``, ``since`` (lab time), ``authentic``."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: str = Field(..., description="appended to base_url, e.g. /devices/{eui64}/supply")
    query: dict[str, str] = Field(default_factory=dict, description="query parameters (templates)")
    body: Any = Field(None, description="a JSON body (template); none for GET")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (templates)")
    result: dict[str, str] = Field(
        default_factory=dict, description="result field -> JSON pointer into the response (e.g. supply: "
        "/data/supplyState); without it the response object is the result")
    refused_status: list[int] = Field(default_factory=lambda: [403, 409, 422],
                                      description="HTTP statuses that mean the device or head end refused")
    reason: str = Field("/error/message", description="JSON pointer to a refusal's reason")


class HttpWebhook(Strict):
    """Where the rig listens for the head end's alerts (POST, JSON: one alert
    or a list).  Each is stamped with the rig's receive time on arrival."""

    listen: str = Field("127.0.0.1:0", description="host:port the rig serves the webhook on (port 0: any free)")
    path: str = Field("/rig/alerts", description="the webhook's path")
    cert_file: Path | None = Field(None, description="serve HTTPS with this certificate (PEM)")
    key_file: Path | None = None
    client_ca_file: Path | None = Field(None, description="mutual TLS: the head end must present a certificate "
                                        "signed by this CA")
    fields: dict[str, str] = Field(
        default_factory=dict, description="alert record field -> JSON pointer into a posted alert (code, device, "
        "inbox, seq, raised, ...); without it the posted object is the record")


class HttpAuth(Strict):
    """How the two sides prove themselves: an HMAC-SHA256 under a shared
    secret (both directions), and/or mutual TLS."""

    hmac_secret_env: str | None = Field(None, description="the environment variable holding the shared secret")
    signature_header: str = Field("X-Rig-Signature", description="'sha256=' + hex HMAC of timestamp '.' body")
    timestamp_header: str = Field("X-Rig-Timestamp", description="the sender's wall clock, seconds since the epoch")
    max_age: float = Field(300.0, gt=0, description="wall seconds a signed message stays acceptable (replays)")
    ca_file: Path | None = Field(None, description="the CA that signed the head end's certificate")
    cert_file: Path | None = Field(None, description="mutual TLS: the rig's client certificate (PEM)")
    key_file: Path | None = None


class HttpHeadEndConfig(Strict):
    """A lab's test head end over HTTP: commands as requests from templates,
    alerts on a webhook the rig serves (docs/devices.md, "Wiring a real bench")."""

    kind: Literal["http"] = "http"
    base_url: str = Field(..., description="http(s)://host[:port][/prefix]")
    timeout: float = Field(30.0, gt=0, le=600, description="wall seconds a request may take")
    auth: HttpAuth = Field(default_factory=HttpAuth)
    requests: dict[Literal[HEAD_END_OPS], HttpRequest] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="one request template per operation: " + ", ".join(HEAD_END_OPS))
    webhook: HttpWebhook = Field(default_factory=HttpWebhook)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/.*)?$", v):
            raise ValueError("expected http://host[:port][/prefix] or https://...")
        if "@" in v.split("/")[2]:
            raise ValueError("credentials in the URL are not allowed: use auth.hmac_secret_env or mutual TLS")
        return v.rstrip("/")


class PluginHeadEndConfig(Strict):
    """A head end from an installed plugin: an entry point of group
    ``rig.headends`` named ``kind``, given ``options``."""

    kind: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _installed(cls, v: str) -> str:
        from .headend.registry import installed

        known = installed()
        if v not in known:
            raise ValueError(f"unknown head end kind '{v}'; known: simulated, http"
                             + (f", {', '.join(sorted(known))}" if known else "")
                             + " (others plug in as entry points of group rig.headends)")
        return v


def _head_end_tag(v: Any) -> str:
    kind = v.get("kind", "simulated") if isinstance(v, dict) else getattr(v, "kind", "simulated")
    return kind if kind in ("simulated", "http") else "plugin"


HeadEndConfig = Annotated[
    Union[Annotated[SimulatedHeadEndConfig, Tag("simulated")], Annotated[HttpHeadEndConfig, Tag("http")],
          Annotated[PluginHeadEndConfig, Tag("plugin")]],
    Discriminator(_head_end_tag),
]


# --------------------------------------------------------------------------- RF and wiring
class Premises(Strict):
    """The radio path a bench's RF path stands for (multi-wall indoor model)."""

    distance_m: float = Field(8.0, gt=0)
    walls: int = Field(1, ge=0)
    floors: int = Field(0, ge=0)
    metal_cabinet: bool = False


class RfPath(Strict):
    between: tuple[str, str] = Field(..., description="the two devices this path joins")
    attenuator: str | None = Field(None, description="the attenuator instrument in the path")
    band: Literal["2.4GHz", "868MHz"] = "2.4GHz"
    premises: Premises = Field(default_factory=Premises)


class Wiring(Strict):
    """Which parts of the bench are connected, for the physical bench model.

    Mains flows supply -> mains_relay -> line side of ``meter`` (and the hub's
    unmetered feed); the meter's contactor feeds the load side, where the
    ``load`` draws and the ``analyser`` measures.
    """

    supply: str | None = Field(None, description="AC source instrument feeding the bench (null: the grid)")
    mains_relay: str | None = Field(None, description="relay between the supply and the premises")
    meter: str | None = Field(None, description="the ESME whose contactor feeds the load side")
    load: str | None = None
    analyser: str | None = None
    hub_feed: Literal["unmetered", "separate"] = Field("unmetered", description="OUT-5: hub fed before the meter")


# --------------------------------------------------------------------------- HAN and suites
class BandModel(Strict):
    frequency_mhz: float = Field(..., gt=0)
    data_rate_kbps: float = Field(..., gt=0)
    tx_power_dbm: float
    sensitivity_dbm: float
    distance_exponent: float = Field(..., gt=0, description="ITU-R P.1238 distance power loss coefficient N")
    wall_loss_db: float = Field(..., ge=0)
    floor_loss_db: float = Field(..., ge=0)
    metal_cabinet_loss_db: float = Field(..., ge=0)
    shadow_sigma_db: float = Field(..., ge=0, description="log-normal shadowing, dB")


def _default_bands() -> dict[Band, BandModel]:
    return {
        "2.4GHz": BandModel(
            frequency_mhz=2440, data_rate_kbps=250, tx_power_dbm=8, sensitivity_dbm=-100,
            distance_exponent=30, wall_loss_db=7, floor_loss_db=15, metal_cabinet_loss_db=20,
            shadow_sigma_db=8,
        ),
        "868MHz": BandModel(
            frequency_mhz=868, data_rate_kbps=100, tx_power_dbm=14, sensitivity_dbm=-110,
            distance_exponent=28, wall_loss_db=3.5, floor_loss_db=9, metal_cabinet_loss_db=12,
            shadow_sigma_db=6,
        ),
    }


class HanConfig(Strict):
    bands: dict[Literal["2.4GHz", "868MHz"], BandModel] = Field(default_factory=_default_bands)
    max_retries: int = Field(3, ge=0)
    seed: int = Field(1, description="random seed of the simulated medium, for repeatable runs")


class OutageSuite(Strict):
    alert_tolerance: float = Field(10.0, ge=0, description="lab seconds allowed after the alert period")
    sweep: list[float] = Field(default_factory=lambda: [150.0, 170.0, 175.0, 178.0, 182.0, 185.0, 190.0, 210.0])
    flickers: int = Field(5, ge=1)
    flicker_seconds: float = Field(2.0, gt=0, description="OUT-1: length of each flicker (an AC source dip to 0 V)")
    log_tolerance: float = Field(
        2.0, ge=0, description="OUT-1: lab seconds a meter's logged loss/restoration time may differ from the rig's")
    delivery_min: float = Field(
        1.0, ge=0, le=1, description="OUT-7: least share of the expected alerts that must reach the DCC")
    fade_seconds: float = Field(
        30.0, gt=0, le=600, description="OUT-7: lab seconds the HAN tap jams the meter's link to the hub as "
        "mains returns (its restoration alert and every frame after it)")
    fade_recovery: float = Field(
        60.0, gt=0, description="OUT-7: lab seconds after the fade within which the restoration alert must "
        "still reach the DCC (time for the meter to send it again)")


class SafetySuite(Strict):
    trials: int = Field(10, ge=1, description="repeats of each safety trial; hundreds for a safety run")
    link_trials: int = Field(3, ge=1, description="repeats of the trials that take the HAN link down or to its "
                             "edge (each waits out the PPMID command's freshness window)")


class PropagationSuite(Strict):
    step_db: float = Field(2.0, gt=0)
    frames_per_step: int = Field(50, ge=1)
    property_library: str = Field("builtin", description="'builtin' or a path to a property-types YAML")


class SuitesConfig(Strict):
    outage: OutageSuite = Field(default_factory=OutageSuite)
    safety: SafetySuite = Field(default_factory=SafetySuite)
    propagation: PropagationSuite = Field(default_factory=PropagationSuite)
    deviations: dict[str, Deviation] = Field(
        default_factory=dict,
        description="requirement values this lab judges against instead of the requirement's own "
                    "(rig/reference.py: outage_alert_period, enable_latency_bound, hold_time, gas_mirror_period), "
                    "each with its reason; reports show them in red")

    @field_validator("deviations")
    @classmethod
    def _known_values(cls, v: dict[str, Deviation]) -> dict[str, Deviation]:
        unknown = set(v) - set(REFERENCES)
        if unknown:
            raise ValueError(f"no requirement value named {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(REFERENCES)}")
        return v


# --------------------------------------------------------------------------- bench and lab
class BenchConfig(Strict):
    description: str = ""
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    relays: dict[str, RelayConfig] = Field(default_factory=dict)
    instruments: dict[str, InstrumentConfig] = Field(default_factory=dict)
    devices: dict[str, DeviceConfig] = Field(default_factory=dict)
    rf_paths: dict[str, RfPath] = Field(default_factory=dict)
    wiring: Wiring = Field(default_factory=Wiring)
    actuators: dict[str, dict[str, ButtonActuator]] = Field(
        default_factory=dict, description="per device, per button: the GPIO actuator wired across it (the agent's "
        "outputs; docs/devices.md 'Wiring a real bench')")
    head_end: HeadEndConfig = Field(
        default_factory=SimulatedHeadEndConfig, description="where remote commands go and alerts come from: "
        "'simulated' (the simulated DCC), 'http' (a lab's test head end), or an installed plugin's kind")

    def device_of_kind(self, kind: str) -> str | None:
        return next((name for name, d in self.devices.items() if d.kind == kind), None)


class LabInfo(Strict):
    name: str = "lab"
    clock: ClockConfig = Field(default_factory=ClockConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)


class LabConfig(Strict):
    lab: LabInfo = Field(default_factory=LabInfo)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    han: HanConfig = Field(default_factory=HanConfig)
    suites: SuitesConfig = Field(default_factory=SuitesConfig)
    benches: dict[str, BenchConfig] = Field(..., min_length=1)

    # set by load_lab: where this came from (for messages and the run record)
    source: str = Field("<memory>", exclude=True)

    def bench(self, name: str) -> BenchConfig:
        try:
            return self.benches[name]
        except KeyError:
            raise UnknownPart(f"no bench '{name}' in {self.source}; benches: {', '.join(self.benches)}") from None


# --------------------------------------------------------------------------- cross checks
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _cross_check(lab: LabConfig) -> list[tuple[tuple, str]]:
    """Checks that span sections; each problem as (key path, message)."""
    problems: list[tuple[tuple, str]] = []
    for bname, bench in lab.benches.items():
        base = ("benches", bname)
        if not _NAME.match(bname):
            problems.append((base, "bench names are letters, digits, '-' and '_' (they become MQTT topic levels)"))
        for section in ("relays", "instruments", "devices", "rf_paths"):
            for name in getattr(bench, section):
                if not _NAME.match(str(name)):
                    problems.append((base + (section, name), "names are letters, digits, '-' and '_'"))
        # one GPIO pin, one use
        seen: dict[str, tuple] = {}
        uses: list[tuple[tuple[str, ...], int | str]] = [(("relays", n, "pin"), r.pin) for n, r in bench.relays.items()]
        if bench.controller.estop is not None:
            uses.append((("controller", "estop", "pin"), bench.controller.estop.pin))
        uses += [(("actuators", d, b, "pin"), a.pin) for d, buttons in bench.actuators.items()
                 for b, a in buttons.items()]
        for path, pin in uses:
            key = normalise_pin(pin)
            if key in seen:
                problems.append((base + path, f"GPIO pin {pin} is already used by {yamlpos.dotted(seen[key])}"))
            else:
                seen[key] = path
        ids: dict[str, str] = {}
        for dname, dev in bench.devices.items():
            if dev.id in ids:
                problems.append((base + ("devices", dname, "id"),
                                 f"device id {dev.id} is already used by {ids[dev.id]}"))
            ids[dev.id] = dname
            if not dev.simulated and dev.faults:
                problems.append((base + ("devices", dname, "faults"), "fault profiles apply to simulated devices only"))
            if dev.simulated:
                from rig.faults import known_faults  # names only

                for i, fault in enumerate(dev.faults):
                    known = known_faults(dev.kind)
                    if fault not in known:
                        problems.append((
                            base + ("devices", dname, "faults", i),
                            f"unknown fault profile '{fault}' for {dev.kind}; "
                            f"known: {', '.join(sorted(known)) or 'none'}",
                        ))
        for dname, dev in bench.devices.items():
            s = dev.settings
            ref = getattr(s, "paired_ppmid", None) or getattr(s, "paired_meter", None)
            if ref is not None and ref not in bench.devices:
                key = "paired_ppmid" if hasattr(s, "paired_ppmid") else "paired_meter"
                problems.append((base + ("devices", dname, "settings", key), f"unknown device '{ref}'"))
        for pname, rf in bench.rf_paths.items():
            for i, dname in enumerate(rf.between):
                if dname not in bench.devices:
                    problems.append((
                        base + ("rf_paths", pname, "between", i),
                        f"unknown device '{dname}'; devices on {bname}: {', '.join(bench.devices) or 'none'}",
                    ))
            if rf.between[0] == rf.between[1]:
                problems.append((base + ("rf_paths", pname, "between"), "a path joins two different devices"))
            if rf.attenuator is not None:
                inst = bench.instruments.get(rf.attenuator)
                where = base + ("rf_paths", pname, "attenuator")
                if inst is None:
                    problems.append((where, f"unknown instrument '{rf.attenuator}'"))
                elif inst.kind != "attenuator":
                    problems.append((where, f"'{rf.attenuator}' is a {inst.kind}, not an attenuator"))
        problems += _actuator_problems(base, bench)
        problems += _head_end_problems(base, bench)
        for iname, inst in bench.instruments.items():
            if inst.device is not None:
                where = base + ("instruments", iname, "device")
                if inst.kind != "optical_probe":
                    problems.append((where, "only an optical_probe names the device it reads"))
                elif inst.device not in bench.devices:
                    problems.append((where, f"unknown device '{inst.device}'"))
                elif bench.devices[inst.device].kind != "esme":
                    problems.append((where, f"'{inst.device}' is a {bench.devices[inst.device].kind}, not a meter"))
        problems += _check_wiring(bench, base)
    problems += _broker_security(lab)
    bands = lab.han.bands
    for missing in set(BANDS) - set(bands):
        problems.append((("han", "bands"), f"band {missing} is not described"))
    return problems


def _actuator_problems(base: tuple, bench: BenchConfig) -> list[tuple[tuple, str]]:
    problems: list[tuple[tuple, str]] = []
    for dname, buttons in bench.actuators.items():
        where = base + ("actuators", dname)
        dev = bench.devices.get(dname)
        if dev is None:
            problems.append((where, f"unknown device '{dname}'; devices: {', '.join(bench.devices) or 'none'}"))
            continue
        known = buttons_of(dev.kind)
        for button in buttons:
            if button not in known:
                problems.append((where + (button,), f"a {dev.kind} has no button '{button}'; buttons: "
                                 f"{', '.join(known) or 'none'}"))
    return problems


def _head_end_problems(base: tuple, bench: BenchConfig) -> list[tuple[tuple, str]]:
    he = bench.head_end
    if not isinstance(he, HttpHeadEndConfig):
        return []
    where = base + ("head_end",)
    problems: list[tuple[tuple, str]] = []
    a, hook = he.auth, he.webhook
    if not a.hmac_secret_env and not (a.cert_file and hook.client_ca_file):
        problems.append((where + ("auth",), "the head end must be authenticated both ways: a shared secret "
                         "(auth.hmac_secret_env) or mutual TLS (auth.cert_file and webhook.client_ca_file)"))
    if (a.cert_file is None) != (a.key_file is None):
        problems.append((where + ("auth", "cert_file" if a.cert_file is None else "key_file"),
                         "a client certificate needs both cert_file and key_file"))
    if (hook.cert_file is None) != (hook.key_file is None):
        problems.append((where + ("webhook", "cert_file" if hook.cert_file is None else "key_file"),
                         "an HTTPS webhook needs both cert_file and key_file"))
    if hook.client_ca_file is not None and hook.cert_file is None:
        problems.append((where + ("webhook", "client_ca_file"), "mutual TLS needs an HTTPS webhook (cert_file, "
                         "key_file)"))
    if not re.fullmatch(r"[^:\s]+:\d{1,5}", hook.listen):
        problems.append((where + ("webhook", "listen"), "expected host:port, e.g. 0.0.0.0:8480"))
    if not hook.path.startswith("/"):
        problems.append((where + ("webhook", "path"), "a path starts with '/'"))
    return problems


def _wiring_kinds() -> dict[str, tuple[str, str]]:
    """``wiring:`` key -> (section, kind) from the kinds' declarations (rig/parts.py)."""
    keys = {k.wiring: ("instruments", k.kind) for k in parts.instrument_kinds().values() if k.wiring}
    keys |= {k.wiring: ("devices", k.kind) for k in parts.device_kinds().values() if k.wiring}
    return keys


def _check_wiring(bench: BenchConfig, base: tuple) -> list[tuple[tuple, str]]:
    problems: list[tuple[tuple, str]] = []
    kinds = _wiring_kinds()
    for key in Wiring.model_fields:
        name = getattr(bench.wiring, key)
        if name is None or key == "hub_feed":
            continue
        if key == "mains_relay":
            if name not in bench.relays:
                problems.append((base + ("wiring", key), f"unknown relay '{name}'"))
            continue
        section, kind = kinds[key]
        table: dict[str, Any] = getattr(bench, section)
        if name not in table:
            problems.append((base + ("wiring", key), f"unknown part '{name}'"))
        elif table[name].kind != kind:
            problems.append((base + ("wiring", key), f"'{name}' is a {table[name].kind}, expected a {kind}"))
    return problems


def _broker_security(lab: LabConfig) -> list[tuple[tuple, str]]:
    """A bench with real mains (a GPIO pin factory other than ``mock``) needs
    a broker with TLS and credentials (SEC-3)."""
    real = [(n, b.controller.pin_factory) for n, b in lab.benches.items() if b.controller.pin_factory != "mock"]
    if not real:
        return []
    bench, factory = real[0]
    where = ("benches", bench, "controller", "pin_factory")
    br = lab.broker
    external = br.kind == "external" or br.url is not None
    tls = (br.tls is not None or (br.url or "").startswith("mqtts://")) if external else br.server_tls is not None
    if not tls:
        return [(where, f"pin factory {factory} switches real mains: the broker needs TLS "
                        f"({'an mqtts:// url and broker.tls' if external else 'broker.server_tls'}); "
                        "see README 'Securing a real lab'")]
    if external and not ((br.username_env and br.password_env) or (br.tls and br.tls.cert_file)):
        return [(where, f"pin factory {factory} switches real mains: the broker needs credentials "
                        "(broker.username_env and broker.password_env, or a client certificate in broker.tls)")]
    return []


# --------------------------------------------------------------------------- loading
def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see docs/lab-yaml.md)"
    if kind == "missing":
        return "required key is missing"
    msg = err.get("msg", "invalid")
    return msg.removeprefix("Value error, ")


def load_lab(path: str | Path) -> LabConfig:
    """Load and validate a lab file; raise :class:`ConfigError` on the first problem."""
    try:
        located = yamlpos.load(path)
    except yamlpos.YamlError as exc:
        raise ConfigError(exc.file, exc.line, exc.key, exc.message) from None
    return validate_lab(located)


def load_lab_text(text: str, file: str = "<string>") -> LabConfig:
    try:
        located = yamlpos.loads(text, file)
    except yamlpos.YamlError as exc:
        raise ConfigError(exc.file, exc.line, exc.key, exc.message) from None
    return validate_lab(located)


def validate_lab(located: yamlpos.Located) -> LabConfig:
    data = located.data
    if not isinstance(data, dict):
        raise ConfigError(located.file, 1, "", "a lab file is a mapping with at least 'benches'")
    secrets = _inline_secrets(data)
    if secrets:
        path, message = secrets[0]
        raise ConfigError(located.file, located.line_of(path), yamlpos.dotted(path), message)
    try:
        lab = LabConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = located.resolve(tuple(err["loc"]))
        raise ConfigError(located.file, located.line_of(path), yamlpos.dotted(path), _message(err)) from None
    problems = _cross_check(lab)
    if problems:
        path, message = problems[0]
        raise ConfigError(located.file, located.line_of(path), yamlpos.dotted(path), message)
    lab.source = located.file
    return lab
