"""The status page's chart: mail per hour over the last 24 hours, as inline SVG drawn on the server.

No script and no chart library: one group of bars per hour (accepted, processed, sent side by
side, so equal counts never hide each other), gridlines and labels, sized by a viewBox so the
browser scales it. Each bar carries a <title>, which browsers show as a tooltip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup, escape

from gateway.ops.figures import HourlyTraffic

WIDTH, HEIGHT = 960, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 20, 16, 40
GRID_LINES = 4
LABEL_EVERY_HOURS = 3


@dataclass(frozen=True)
class Series:
    key: str  # also the CSS class that colours it
    label: str
    values: list[int]


def series_of(traffic: HourlyTraffic) -> list[Series]:
    return [
        Series("accepted", "Accepted", traffic.accepted),
        Series("processed", "Processed", traffic.processed),
        Series("sent", "Sent", traffic.sent),
    ]


def nice_ceiling(value: int) -> int:
    """The top of the scale: GRID_LINES whole steps of 1, 2 or 5 (or 25) times a power of ten."""
    needed = max(1, math.ceil(value / GRID_LINES))
    magnitude = 1
    while True:
        for step in (1, 2, 5) if magnitude == 1 else (1, 2, 2.5, 5):
            if step * magnitude >= needed:
                return int(step * magnitude) * GRID_LINES
        magnitude *= 10


def draw(traffic: HourlyTraffic) -> Markup:
    all_series = series_of(traffic)
    count = max(1, len(traffic.hours))
    top = nice_ceiling(max((max(s.values, default=0) for s in all_series), default=0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / count  # one hour
    bar = slot * 0.8 / len(all_series)

    def y(value: int) -> float:
        return TOP + plot_height * (1 - value / top)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title" '
        'xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-title">Mail per hour over the last 24 hours: accepted, processed and sent</title>',
    ]
    for line in range(GRID_LINES + 1):
        value = top * line // GRID_LINES
        level = y(value)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{level:.1f}" y2="{level:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 8}" y="{level + 4:.1f}" text-anchor="end">{value}</text>')
    for index, hour in enumerate(traffic.hours):
        left = LEFT + slot * index + slot * 0.1
        if (len(traffic.hours) - 1 - index) % LABEL_EVERY_HOURS == 0:
            parts.append(
                f'<text class="axis" x="{LEFT + slot * (index + 0.5):.1f}" y="{HEIGHT - BOTTOM + 18}" '
                f'text-anchor="middle">{hour:%H}:00</text>'
            )
        for position, series in enumerate(all_series):
            value = series.values[index]
            height = y(0) - y(value)
            tip = escape(f"{series.label} {hour:%Y-%m-%d %H}:00–{hour:%H}:59 UTC: {value}")
            parts.append(
                f'<rect class="bar {series.key}" x="{left + bar * position:.1f}" y="{y(value):.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}"><title>{tip}</title></rect>'
            )
    parts.append(f'<line class="baseline" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
