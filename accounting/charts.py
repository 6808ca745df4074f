"""Small SVG charts drawn on the server: a line chart with several series and a bar chart.

The dashboards must work offline and without JavaScript, so a chart is a string of SVG markup:
a visible title, axes with tick labels and (when given) axis titles, a legend, `<path>` lines and
`<rect>` bars, each with a `<title>` that the browser shows as a tooltip. Colours are presentation attributes, so a chart reads right even
without the stylesheet. Every chart carries `data-chart="<name>"` for the page and its tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777", "#64748b")
WIDTH, HEIGHT = 720, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 76, 16, 36, 46
TITLE_HEIGHT = 22  # the chart's visible title, above the legend
MAX_X_LABELS = 8


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    color: str | None = None
    dashed: bool = False


# --- value formats --------------------------------------------------------------------------------
def format_usd(value: float) -> str:
    sign, size = ("-" if value < 0 else ""), abs(value)
    if size == 0:
        return "$0"
    if size < 0.1:
        text = f"{size:.4g}"
        text = f"{size:.8f}".rstrip("0") if "e" in text else text
    elif size < 100:
        text = f"{size:.2f}"
    else:
        text = f"{size:,.0f}"
    return f"{sign}${text}"


def format_count(value: float) -> str:
    size = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def format_ms(value: float) -> str:
    return f"{value / 1000:.3g} s" if abs(value) >= 1000 else f"{value:.0f} ms"


def format_percent(value: float) -> str:
    """A fraction (0.025) as a percentage (2.5%)."""
    return f"{value * 100:.3g}%"


FORMATS: dict[str, Callable[[float], str]] = {
    "usd": format_usd, "count": format_count, "ms": format_ms, "percent": format_percent,
}


# --- geometry -------------------------------------------------------------------------------------
def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high], about `count` of them, always including 0 when
    the range does."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, tick = [], first
    while tick < high + step * 1e-9:
        ticks.append(round(tick, 12))
        tick += step
    if ticks[-1] < high:
        ticks.append(round(tick, 12))
    return ticks


@dataclass(frozen=True)
class _Frame:
    """The plot area and the y scale of one chart."""

    y_low: float
    y_high: float
    top: float = MARGIN_TOP
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def left(self) -> float:
        return MARGIN_LEFT

    @property
    def right(self) -> float:
        return self.width - MARGIN_RIGHT

    @property
    def bottom(self) -> float:
        return self.height - MARGIN_BOTTOM

    def y(self, value: float) -> float:
        span = self.y_high - self.y_low
        return self.bottom - (value - self.y_low) / span * (self.bottom - self.top)


def _num(value: float) -> str:
    return f"{value:.1f}"


def _svg_open(name: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{escape(name)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" font-family="system-ui, sans-serif" font-size="11">'
        f"<title>{escape(title)}</title>"
        f'<text class="chart-title" x="{MARGIN_LEFT}" y="15" font-size="13" font-weight="600" '
        f'fill="#0f172a">{escape(title)}</text>'
    )


def _axis_titles(frame: "_Frame", x_label: str, y_label: str) -> list[str]:
    """The axes' own titles: the x axis's under its tick labels, the y axis's turned along it."""
    parts = []
    if x_label:
        x = _num((frame.left + frame.right) / 2)
        parts.append(f'<text class="axis-title x" x="{x}" y="{frame.height - 6}" text-anchor="middle" '
                     f'fill="#334155">{escape(x_label)}</text>')
    if y_label:
        y = _num((frame.top + frame.bottom) / 2)
        parts.append(f'<text class="axis-title y" x="12" y="{y}" text-anchor="middle" fill="#334155" '
                     f'transform="rotate(-90 12 {y})">{escape(y_label)}</text>')
    return parts


def _axes(frame: _Frame, ticks: list[float], labels: Sequence[str], xs: Sequence[float], fmt) -> list[str]:
    parts = []
    for tick in ticks:
        y = _num(frame.y(tick))
        stroke = "#94a3b8" if tick == 0 else "#e2e8f0"
        parts.append(f'<line x1="{frame.left}" x2="{frame.right}" y1="{y}" y2="{y}" stroke="{stroke}"/>')
        parts.append(
            f'<text x="{frame.left - 6}" y="{y}" text-anchor="end" dominant-baseline="middle" '
            f'fill="#475569">{escape(fmt(tick))}</text>'
        )
    parts.append(
        f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{frame.bottom}" stroke="#94a3b8"/>'
    )
    shown = [(label, x) for label, x in zip(labels, xs) if label]
    every = max(1, math.ceil(len(shown) / MAX_X_LABELS))
    for i, (label, x) in enumerate(shown):
        if i % every:
            continue
        parts.append(
            f'<text x="{_num(x)}" y="{frame.bottom + 16}" text-anchor="middle" fill="#475569">{escape(label)}</text>'
        )
    return parts


def _legend(series: Sequence[Series]) -> tuple[list[str], float]:
    """Legend entries in rows across the top; returns them and the height they take."""
    parts, x, y = [], MARGIN_LEFT, 14 + TITLE_HEIGHT
    for item, color in zip(series, _colors(series)):
        size = 30 + 6.5 * len(item.name)
        if x + size > WIDTH - MARGIN_RIGHT and x > MARGIN_LEFT:
            x, y = MARGIN_LEFT, y + 16
        dash = ' stroke-dasharray="4 3"' if item.dashed else ""
        parts.append(
            f'<g class="legend-item"><line x1="{x}" x2="{x + 14}" y1="{y}" y2="{y}" stroke="{color}" '
            f'stroke-width="6"{dash}/><text x="{x + 19}" y="{y}" dominant-baseline="middle" '
            f'fill="#1e293b">{escape(item.name)}</text></g>'
        )
        x += size
    return parts, y + 22


def _colors(series: Sequence[Series]) -> list[str]:
    return [item.color or PALETTE[i % len(PALETTE)] for i, item in enumerate(series)]


def _empty(name: str, title: str) -> SafeString:
    message = f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#64748b">No data in this range</text>'
    return mark_safe(f"{_svg_open(name, title)}{message}</svg>")


def _has_data(series: Sequence[Series]) -> bool:
    return any(value is not None for item in series for value in item.values)


# --- charts ---------------------------------------------------------------------------------------
def line_chart(
    *, name: str, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "count",
    positions: Sequence[float] | None = None, x_label: str = "", y_label: str = "",
) -> SafeString:
    """Lines over shared x labels; a None value leaves a gap. Points carry tooltips.

    `positions` (fractions of the width, 0 to 1) place points by time instead of evenly; an
    empty label marks a point that gets no text on the axis.
    """
    if not labels or not _has_data(series):
        return _empty(name, title)
    fmt = FORMATS[unit]
    values = [v for item in series for v in item.values if v is not None]
    ticks = nice_ticks(min(0.0, min(values)), max(values))
    legend, legend_height = _legend(series)
    frame = _Frame(y_low=ticks[0], y_high=ticks[-1], top=legend_height)
    span = frame.right - frame.left
    if positions is None:
        positions = [(i + 0.5) / len(labels) for i in range(len(labels))]
    xs = [frame.left + span * p for p in positions]
    parts = [_svg_open(name, title), *_axes(frame, ticks, labels, xs, fmt), *_axis_titles(frame, x_label, y_label)]
    for item, color in zip(series, _colors(series)):
        parts.append(_line(item, color, frame, xs, labels, fmt))
    parts += legend
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _line(item: Series, color: str, frame: _Frame, xs, labels, fmt) -> str:
    commands, dots, pen_down = [], [], False
    for x, label, value in zip(xs, labels, item.values):
        if value is None:
            pen_down = False
            continue
        y = frame.y(value)
        commands.append(f"{'L' if pen_down else 'M'}{_num(x)} {_num(y)}")
        pen_down = True
        dots.append(
            f'<circle cx="{_num(x)}" cy="{_num(y)}" r="2.5" fill="{color}">'
            f"<title>{escape(label or 'now')} — {escape(item.name)}: {escape(fmt(value))}</title></circle>"
        )
    dash = ' stroke-dasharray="6 4"' if item.dashed else ""
    path = (
        f'<path class="series" data-series="{escape(item.name)}" d="{" ".join(commands)}" fill="none" '
        f'stroke="{color}" stroke-width="2" stroke-linejoin="round"{dash}/>'
    )
    return f'<g class="series-group">{path}{"".join(dots)}</g>'


def bar_chart(
    *, name: str, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "count",
    stacked: bool = True, x_label: str = "", y_label: str = "",
) -> SafeString:
    """Bars per x label: stacked (a total made of parts) or grouped side by side."""
    if not labels or not _has_data(series):
        return _empty(name, title)
    fmt = FORMATS[unit]
    columns = [[max(item.values[i] or 0.0, 0.0) for item in series] for i in range(len(labels))]
    high = max((sum(col) if stacked else max(col)) for col in columns)
    ticks = nice_ticks(0.0, high)
    legend, legend_height = _legend(series)
    frame = _Frame(y_low=ticks[0], y_high=ticks[-1], top=legend_height)
    band = (frame.right - frame.left) / len(labels)
    xs = [frame.left + band * (i + 0.5) for i in range(len(labels))]
    parts = [_svg_open(name, title), *_axes(frame, ticks, labels, xs, fmt), *_axis_titles(frame, x_label, y_label)]
    colors = _colors(series)
    for i, col in enumerate(columns):
        parts += _bars(col, series, colors, frame, xs[i], band, labels[i], fmt, stacked)
    parts += legend
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _bars(col, series, colors, frame: _Frame, center: float, band: float, label: str, fmt, stacked) -> list[str]:
    parts, base = [], 0.0
    width = band * 0.7 if stacked else band * 0.8 / len(series)
    for j, (value, item, color) in enumerate(zip(col, series, colors)):
        if value <= 0:
            continue
        low = base if stacked else 0.0
        y_top, y_bottom = frame.y(low + value), frame.y(low)
        x = center - band * 0.35 if stacked else center - band * 0.4 + j * width
        parts.append(
            f'<rect class="bar" data-series="{escape(item.name)}" x="{_num(x)}" y="{_num(y_top)}" '
            f'width="{_num(width)}" height="{_num(max(y_bottom - y_top, 0.5))}" fill="{color}">'
            f"<title>{escape(label)} — {escape(item.name)}: {escape(fmt(value))}</title></rect>"
        )
        if stacked:
            base += value
    return parts
