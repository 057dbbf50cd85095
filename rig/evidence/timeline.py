"""Per-test timelines from the bus capture: what the bench did, on one time axis.

Four tracks, read from the capture (``bus.jsonl``) by topic:

==========  ===============================================================  =========================
track       topic                                                            value
==========  ===============================================================  =========================
mains       ``rig/v1/<bench>/relay/<wiring.mains_relay>/state``              ``state``: on/off
supply      ``rig/v1/<bench>/device/<wiring.meter>/state``                   ``supply`` (or ``supply.state``)
alerts      ``rig/v1/<bench>/dcc/+/event/<name with alert>``                 ``code``/``alert``, else the event name
ppmid       ``rig/v1/<bench>/device/<ppmid>/cmd/press|hold``,                ``args.button``/``button``, else the op
            ``.../event/<name with press or hold>``
buttons     ``rig/v1/<bench>/actuator/<device>/state``                       each button released, at the
                                                                             agent's stamp, with how long it was down
==========  ===============================================================  =========================

plus the test's own steps.  The supply track also follows the meter's
optical port (an optical probe's ``instrument/<probe>/state``, register
``96.3.10``), which is all a bench with a sealed or real meter publishes.
Times are lab seconds from the test's start; a message is placed at its
payload's own ``ts`` (the sender's lab time; every part of a lab shares one
clock anchor), else at the time the capture got it.
:func:`render_svg` draws a timeline as inline SVG (no script, no fonts to
fetch), so the report stays one self-contained file.
"""

from __future__ import annotations

import bisect
import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..contract import ROOT

STATE_COLOURS = {
    "on": "#e0a100", "off": "#9fb3c8", "enabled": "#2e9e44", "armed": "#e0a100", "disabled": "#c0392b",
    "closed": "#2e9e44", "open": "#c0392b", "unknown": "#dddddd",
}
_PALETTE = ("#6c5ce7", "#00a8a8", "#b35c00", "#7f8c8d", "#8e44ad", "#16a085")


@dataclass
class Track:
    name: str
    kind: str                                    # "state" (step function) or "events" (markers)
    changes: list[tuple[float, str]] = field(default_factory=list)

    def value_at(self, t: float) -> str | None:
        i = bisect.bisect_right([c[0] for c in self.changes], t) - 1
        return self.changes[i][1] if i >= 0 else None


@dataclass
class Timeline:
    """One test's tracks between ``start`` and ``end`` (lab time)."""

    title: str
    start: float
    end: float
    segments: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)
    markers: dict[str, list[tuple[float, str]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.segments.values()) and not any(m for k, m in self.markers.items() if k != "steps")


def _names(rec: dict[str, Any], bench: str | None = None) -> tuple[str | None, str, str, list[str]]:
    """(bench, mains relay, meter, ppmids) from the record's lab model; the
    record's only bench unless ``bench`` names one (a lab run has several)."""
    bench = bench or (rec.get("bench") if len(rec.get("benches") or {}) <= 1 else None) \
        or next(iter(rec.get("benches") or {}), None)
    model = ((rec.get("lab") or {}).get("model") or {}).get("benches") or {}
    if bench is None and model:
        bench = next(iter(model))
    b = model.get(bench) or {}
    wiring = b.get("wiring") or {}
    devices = b.get("devices") or {}
    ppmids = [n for n, d in devices.items() if d.get("kind") == "ppmid"] or ["ppmid"]
    meter = wiring.get("meter") or next((n for n, d in devices.items() if d.get("kind") == "esme"), "esme")
    return bench, wiring.get("mains_relay") or "mains", meter, ppmids


#: IEC 62056-21 disconnect control state (``96.3.10``) -> supply
DISCONNECT = {"0": "disabled", "1": "enabled", "2": "armed"}


def _optical_supply(payload: dict[str, Any]) -> str | None:
    if payload.get("kind") != "optical_probe":
        return None
    value = (payload.get("summary") or {}).get("96.3.10")
    return DISCONNECT.get(str(value).split("*")[0].strip()) if value is not None else None


def _supply_value(payload: dict[str, Any]) -> str | None:
    v = payload.get("supply")
    if isinstance(v, dict):
        v = v.get("state")
    return str(v) if v is not None else None


def _label(payload: Any, *keys: str, default: str) -> str:
    if isinstance(payload, dict):
        for k in keys:
            v = payload.get(k)
            if v not in (None, ""):
                return str(v)
        args = payload.get("args")
        if isinstance(args, dict):
            for k in keys:
                if args.get(k) not in (None, ""):
                    return str(args[k])
    return default


def build_tracks(rec: dict[str, Any], messages: Iterable[dict[str, Any]], bench: str | None = None) -> dict[str, Track]:
    """Read the capture once into the four tracks (of ``bench``, default the record's)."""
    bench, relay, meter, ppmids = _names(rec, bench)
    base = f"{ROOT}/{bench}"
    tracks = {"mains": Track("mains", "state"), "supply": Track("supply", "state"),
              "alerts": Track("alerts", "events"), "ppmid": Track("ppmid", "events"),
              "buttons": Track("buttons", "events")}
    down: dict[tuple[str, str], float] = {}
    mains_topic, meter_topic = f"{base}/relay/{relay}/state", f"{base}/device/{meter}/state"
    ppmid_bases = tuple(f"{base}/device/{p}/" for p in ppmids)
    for msg in messages:
        topic, ts, p = msg.get("topic", ""), msg.get("ts"), msg.get("payload")
        if isinstance(p, dict) and isinstance(p.get("ts"), (int, float)) and not isinstance(p.get("ts"), bool):
            ts = p["ts"]  # when the sender says it happened (every part shares the lab clock's anchor)
        if ts is None or not topic.startswith(base + "/"):
            continue
        if topic == mains_topic and isinstance(p, dict) and p.get("state") in ("on", "off"):
            tracks["mains"].changes.append((ts, p["state"]))
        elif (topic == meter_topic or (topic.startswith(f"{base}/instrument/") and topic.endswith("/state"))) \
                and isinstance(p, dict):
            v = _supply_value(p) if topic == meter_topic else _optical_supply(p)
            if v is not None and (not tracks["supply"].changes or tracks["supply"].changes[-1][1] != v):
                tracks["supply"].changes.append((ts, v))
        elif topic.startswith(f"{base}/actuator/") and topic.endswith("/state") and isinstance(p, dict):
            device = topic.split("/")[-2]
            for button, b in (p.get("buttons") or {}).items():
                if not isinstance(b, dict) or not isinstance(b.get("changed"), (int, float)):
                    continue
                key = (device, button)
                if b.get("pressed") and key not in down:
                    down[key] = float(b["changed"])
                elif not b.get("pressed") and key in down:
                    start = down.pop(key)
                    tracks["buttons"].changes.append((start, f"{device} {button} {b['changed'] - start:.2f} s"))
        elif topic.startswith(f"{base}/dcc/") and "/event/" in topic and "alert" in topic.rsplit("/", 1)[1]:
            tracks["alerts"].changes.append((ts, _label(p, "code", "alert", "name",
                                                        default=topic.rsplit("/", 1)[1])))
        elif topic.startswith(ppmid_bases):
            channel = topic.split("/", 5)[5]
            op = channel.rsplit("/", 1)[-1]
            if (channel.startswith("cmd/") and op in ("press", "hold")) or (
                    channel.startswith("event/") and ("press" in op or "hold" in op)):
                label = _label(p, "button", "action", "key", default="")
                tracks["ppmid"].changes.append((ts, f"{op}: {label}".rstrip(": ")))
    for t in tracks.values():
        t.changes.sort(key=lambda c: c[0])
    return tracks


def timeline_for(test: dict[str, Any], tracks: dict[str, Track], margin: float = 0.0) -> Timeline | None:
    """The slice of the tracks during one test (None when its times are unknown)."""
    start = (test.get("started") or {}).get("lab")
    end = (test.get("finished") or {}).get("lab")
    if start is None:
        return None
    if end is None:  # still running when the run died: up to its last entry
        stamps = [s.get("lab") for s in test.get("steps", [])] + [m.get("lab") for m in test.get("measurements", [])]
        end = max([s for s in stamps if s is not None] + [start + 1.0])
    t0, t1 = start - margin, max(end, start + 1e-3)
    tl = Timeline(test.get("nodeid", ""), t0, t1)
    for name, track in tracks.items():
        if track.kind == "state":
            segs = []
            value = track.value_at(t0)
            cursor = t0
            for ts, v in track.changes:
                if ts <= t0:
                    continue
                if ts >= t1:
                    break
                if value is not None:
                    segs.append((cursor, ts, value))
                cursor, value = ts, v
            if value is not None:
                segs.append((cursor, t1, value))
            tl.segments[name] = segs
        else:
            tl.markers[name] = [(ts, v) for ts, v in track.changes if t0 <= ts <= t1]
    tl.markers["steps"] = [(s["lab"], s["name"]) for s in test.get("steps", []) if s.get("lab") is not None]
    return tl


def _ticks(span: float) -> float:
    raw = span / 8
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if step >= raw:
            return step
    return 3600 * max(1, round(raw / 3600))


def _colour(value: str, known: dict[str, str]) -> str:
    if value in STATE_COLOURS:
        return STATE_COLOURS[value]
    if value not in known:
        known[value] = _PALETTE[len(known) % len(_PALETTE)]
    return known[value]


def render_svg(tl: Timeline, width: int = 900) -> str:
    """The timeline as an inline ``<svg>`` element."""
    e = html.escape
    label_w, row_h, top = 70, 24, 8
    rows = ["steps", "mains", "supply", "alerts", "ppmid", "buttons"]
    height = top + row_h * len(rows) + 34
    span = max(tl.end - tl.start, 1e-6)
    plot_w = width - label_w - 10

    def x(t: float) -> float:
        return label_w + (t - tl.start) / span * plot_w

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline of {e(tl.title)}">']
    known: dict[str, str] = {}
    for i, row in enumerate(rows):
        y = top + i * row_h
        out.append(f'<text x="4" y="{y + 16}" class="tl-label">{row}</text>')
        grid_y = y + row_h - 2
        out.append(f'<line x1="{label_w}" y1="{grid_y}" x2="{width - 10}" y2="{grid_y}" class="tl-grid"/>')
        for a, b, v in tl.segments.get(row, []):
            xa, xb = x(a), x(b)
            out.append(f'<rect x="{xa:.1f}" y="{y + 3}" width="{max(xb - xa, 0.8):.1f}" height="{row_h - 8}" '
                       f'fill="{_colour(v, known)}"><title>{e(row)}: {e(v)} from {a - tl.start:.1f} s '
                       f'to {b - tl.start:.1f} s</title></rect>')
            if xb - xa > 7 * len(v) + 6:
                out.append(f'<text x="{xa + 4:.1f}" y="{y + 15}" class="tl-value">{e(v)}</text>')
        for ts, v in tl.markers.get(row, []):
            xm = x(ts)
            if row == "steps":
                out.append(f'<line x1="{xm:.1f}" y1="{y + 2}" x2="{xm:.1f}" y2="{top + row_h * len(rows)}" '
                           f'class="tl-step"><title>step at {ts - tl.start:.1f} s: {e(v)}</title></line>')
                out.append(f'<circle cx="{xm:.1f}" cy="{y + 10}" r="3.5" class="tl-stepdot">'
                           f'<title>step at {ts - tl.start:.1f} s: {e(v)}</title></circle>')
            else:
                cls = "tl-alert" if row == "alerts" else "tl-press"
                out.append(f'<path d="M{xm:.1f},{y + 3} l6,8 l-6,8 l-6,-8 z" class="{cls}">'
                           f'<title>{e(row)} at {ts - tl.start:.1f} s: {e(v)}</title></path>')
                out.append(f'<text x="{xm + 8:.1f}" y="{y + 15}" class="tl-mark">{e(v[:24])}</text>')
    axis_y = top + row_h * len(rows) + 4
    step = _ticks(span)
    t = 0.0
    while t <= span + 1e-9:
        xt = x(tl.start + t)
        out.append(f'<line x1="{xt:.1f}" y1="{axis_y - 4}" x2="{xt:.1f}" y2="{axis_y}" class="tl-axis"/>')
        out.append(f'<text x="{xt:.1f}" y="{axis_y + 12}" class="tl-tick" text-anchor="middle">{t:g}</text>')
        t += step
    out.append(f'<text x="{width - 10}" y="{axis_y + 24}" class="tl-tick" text-anchor="end">'
               "lab s from test start</text>")
    out.append("</svg>")
    return "".join(out)
