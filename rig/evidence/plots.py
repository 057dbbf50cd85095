"""The report's plots, drawn from measurements by name (matplotlib, Agg).

Naming conventions (docs/evidence.md): a suite that records these gets the
plot, with no plotting code of its own.

* ``propagation.per`` (PER, ``units`` "%" or none for a fraction),
  ``propagation.rssi`` (dBm), ``propagation.lqi``: attributes ``band`` and
  ``attenuation_db`` (``path`` optional, one line per band and path);
* ``coverage.share``: the share of premises a band serves, attributes
  ``band`` and ``property_type`` (``published`` optional: the published
  figure for that band, drawn as a reference line);
* ``outage.threshold_probe``: 1/True if an outage alert came for an
  interruption of ``interruption_s`` lab seconds, 0/False if not;
  ``outage.threshold`` (s): the threshold the suite derived, drawn as a line;
  the attribute ``alert_period`` (s) of either, when given, too.

Each function returns an inline ``<svg>`` string, or None when the run has
no such measurements.  The SVG is deterministic for the same data (fixed
hash salt, no date), so rebuilding a report does not change its bytes.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

Measurement = dict[str, Any]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "rig-evidence", "svg.fonttype": "path", "font.size": 9,
                         "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 96})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def by_name(measurements: Iterable[Measurement], name: str) -> list[Measurement]:
    return [m for m in measurements if m.get("name") == name]


def propagation(measurements: list[Measurement]) -> str | None:
    """PER and RSSI (and LQI when recorded) against attenuation, one line per band/path."""
    panels = [(n, label) for n, label in (("propagation.per", "PER"), ("propagation.rssi", "RSSI"),
                                          ("propagation.lqi", "LQI")) if by_name(measurements, n)]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, label) in zip(axes[0], panels):
        series: dict[str, list[tuple[float, float]]] = defaultdict(list)
        units = ""
        for m in by_name(measurements, name):
            a = m.get("attrs") or {}
            x, y = _number(a.get("attenuation_db")), _number(m.get("value"))
            if x is None or y is None:
                continue
            key = str(a.get("band", "?")) + (f" {a['path']}" if a.get("path") else "")
            series[key].append((x, y))
            units = m.get("units") or units
        for key, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=key)
        ax.set_xlabel("attenuation (dB)")
        ax.set_ylabel(f"{label} ({units})" if units else label)
        ax.set_title(f"{label} against attenuation")
        if series:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def coverage(measurements: list[Measurement]) -> str | None:
    """Share of premises served, per property type and band (grouped bars)."""
    ms = by_name(measurements, "coverage.share")
    if not ms:
        return None
    plt = _pyplot()
    table: dict[str, dict[str, float]] = defaultdict(dict)
    published: dict[str, float] = {}
    units = ms[0].get("units") or ""
    for m in ms:
        a = m.get("attrs") or {}
        v = _number(m.get("value"))
        if v is None:
            continue
        band = str(a.get("band", "?"))
        table[str(a.get("property_type", "all"))][band] = v
        share = _number(a.get("published"))
        if share is not None:
            published[band] = share
    types = sorted(table)
    bands = sorted({b for row in table.values() for b in row})
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(types) + 2), 3.4))
    width = 0.8 / max(len(bands), 1)
    colours = {}
    for i, band in enumerate(bands):
        xs = [j + (i - (len(bands) - 1) / 2) * width for j in range(len(types))]
        bars = ax.bar(xs, [table[t].get(band, 0.0) for t in types], width, label=band)
        colours[band] = bars.patches[0].get_facecolor() if bars.patches else None
    for band, value in sorted(published.items()):
        ax.axhline(value, linestyle="--", linewidth=1, color=colours.get(band), label=f"{band} published")
    ax.set_xticks(range(len(types)))
    ax.set_xticklabels(types, rotation=20, ha="right")
    ax.set_ylabel(f"share of premises served ({units})" if units else "share of premises served")
    ax.set_title("coverage per property type and band")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def outage_sweep(measurements: list[Measurement]) -> str | None:
    """Alert (yes/no) against interruption length, with the derived threshold."""
    probes = by_name(measurements, "outage.threshold_probe")
    if not probes:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    pts = []
    period = None
    for m in probes:
        a = m.get("attrs") or {}
        x, y = _number(a.get("interruption_s")), _number(m.get("value"))
        if x is not None and y is not None:
            pts.append((x, 1.0 if y else 0.0, m.get("outcome")))
        period = _number(a.get("alert_period")) or period
    for outcome, colour in (("pass", "#2e9e44"), ("info", "#2e6fdb"), ("fail", "#c0392b")):
        sel = [p for p in pts if p[2] == outcome]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], color=colour, zorder=3,
                       label={"pass": "as expected", "info": "probe", "fail": "out of limits"}[outcome])
    for m in by_name(measurements, "outage.threshold"):
        v = _number(m.get("value"))
        if v is not None:
            ax.axvline(v, color="#b35c00", linestyle="-", label=f"measured threshold {v:g} s")
        period = _number((m.get("attrs") or {}).get("alert_period")) or period
    if period is not None:
        ax.axvline(period, color="#555555", linestyle="--", label=f"alert period {period:g} s")
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["no alert", "alert"])
    ax.set_ylim(-0.3, 1.3)
    ax.set_xlabel("interruption length (lab s)")
    ax.set_title("outage alert threshold sweep (OUT-4)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _svg(fig)
