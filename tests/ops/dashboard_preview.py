"""A stand-in for a Grafana screenshot where Grafana cannot run: the dashboard JSON's own PromQL targets,
run as `query_range` against a real Prometheus, drawn as one self-contained HTML page (inline SVG line
charts and stat numbers, laid out by each panel's gridPos, dark Grafana-like styling, no external assets).

It honours what the dashboard says about a panel where that changes the picture: unit, min, stacking,
fill opacity, legend calcs (last, max), stat thresholds. Everything else is Grafana's look, not its code.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

# Grafana's variables as Grafana would expand them with "All" selected; `datasource` is the one
# Prometheus the preview queries, so it disappears from the PromQL.
DEFAULT_VARIABLES = {"datasource": "", "model": ".*", "job": ".*", "__rate_interval": "1m", "__interval": "15s"}
# Grafana's classic palette, in its order.
PALETTE = ["#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
           "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477"]  # fmt: skip
NAMED_COLORS = {"green": "#73BF69", "orange": "#FF9830", "red": "#F2495C", "yellow": "#FADE2A", "blue": "#5794F2",
                "purple": "#B877D9", "text": "#CCCCDC"}  # fmt: skip

# Layout, in CSS pixels: Grafana's grid is 24 columns, 30 px rows, 8 px gutters.
PAGE_WIDTH = 1400  # shown scaled down in docs: narrower keeps the text legible
PAGE_PADDING = 16
GRID_ROW_PX = 30
GRID_GAP_PX = 8
PANEL_PADDING = 8
PANEL_HEADER_PX = 28
LEGEND_ROW_PX = 19
LEGEND_MAX_ROWS = 5  # a longer legend is cut with a "+N more" row, as Grafana's scrolls
AXIS_FONT_PX = 12
AXIS_CHAR_PX = 7.4  # DejaVu Sans at 12 px, a little generous: a y label never touches the plot
X_AXIS_PX = 22


@dataclass
class Series:
    """One series a panel target returned: its legend label and its finite (timestamp, value) points."""

    label: str
    points: list[tuple[float, float]]


@dataclass
class PanelData:
    """A dashboard panel with what its targets returned over the preview's time range."""

    title: str
    type: str
    grid_pos: dict[str, int]
    config: dict[str, Any]
    series: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def drawn_series(self) -> list[Series]:
        """The series that have at least one data point (the ones the page draws)."""
        return [series for series in self.series if series.points]


def expand_variables(expr: str, variables: dict[str, str]) -> str:
    """`$name`, `${name}` and `${name:format}` -> the variable's value; unknown variables stay."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def legend_label(legend_format: str | None, labels: dict[str, str], expr: str) -> str:
    """Grafana's legend: `{{label}}` filled in from the series' labels; without a format, the labels
    (or the expression when the series has none)."""
    if legend_format:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), legend_format).strip()
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    if not shown:
        return expr if len(expr) < 60 else "value"
    return labels.get("__name__", "") + "{" + ", ".join(f'{k}="{v}"' for k, v in shown.items()) + "}"


def query_range(prometheus_url: str, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
    """Prometheus' /api/v1/query_range result matrix; raises RuntimeError with Prometheus' error."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
    answer = httpx.get(f"{prometheus_url}/api/v1/query_range", params=params, timeout=30).json()
    if answer.get("status") != "success":
        raise RuntimeError(f"{answer.get('errorType')}: {answer.get('error')}")
    return answer["data"]["result"]


def fetch_panels(dashboard: dict[str, Any], prometheus_url: str, start: float, end: float, step_s: float,
                 variables: dict[str, str] | None = None) -> list[PanelData]:  # fmt: skip
    """Every panel of `dashboard` (rows included, with no series) with its targets' series over
    [start, end]; a failing query is kept as the panel's error, not raised."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}
    panels = []
    for panel in dashboard["panels"]:
        data = PanelData(panel.get("title", ""), panel["type"], panel["gridPos"], panel)
        for target in panel.get("targets", []):
            if target.get("hide") or not target.get("expr"):
                continue
            expr = expand_variables(target["expr"], values)
            try:
                matrix = query_range(prometheus_url, expr, start, end, step_s)
            except (RuntimeError, httpx.HTTPError) as exc:
                data.errors.append(f"{target.get('refId', '?')}: {exc}")
                continue
            for result in matrix:
                # NaN (a rate over no events, a quantile of an empty histogram) is a gap, as in Grafana.
                points = [(float(t), float(v)) for t, v in result["values"] if math.isfinite(float(v))]
                data.series.append(Series(legend_label(target.get("legendFormat"), result["metric"], expr), points))
        panels.append(data)
    return panels


# ---- values and units --------------------------------------------------------------------------


def unit_scale(unit: str, magnitude: float) -> tuple[float, str]:
    """(divisor, suffix) Grafana would use to show numbers of about `magnitude` in `unit`."""
    magnitude = abs(magnitude)
    if unit == "percentunit":
        return 0.01, "%"
    if unit == "s":
        for divisor, suffix in ((3600, " h"), (60, " min"), (1, " s"), (1e-3, " ms"), (1e-6, " µs")):
            if magnitude >= divisor:
                return divisor, suffix
        return (1, " s") if magnitude == 0 else (1e-6, " µs")
    if unit == "bytes":
        for power, suffix in ((3, " GiB"), (2, " MiB"), (1, " KiB")):
            if magnitude >= 1024**power:
                return 1024**power, suffix
        return 1, " B"
    tail = {"ops": " ops/s", "reqps": " req/s"}.get(unit, "")
    for divisor, prefix in ((1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if magnitude >= divisor:
            return divisor, prefix + tail
    return 1, tail


def format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_value(value: float, unit: str) -> str:
    """A single value (stat, legend) with about three significant digits."""
    divisor, suffix = unit_scale(unit, value)
    scaled = value / divisor
    decimals = 0 if abs(scaled) >= 100 else 1 if abs(scaled) >= 10 else 2
    return format_number(scaled, decimals) + suffix


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values covering [low, high] in about `count` steps."""
    if high <= low:
        high = low + (abs(low) or 1)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)
    first = math.floor(low / step + 1e-9) * step
    ticks = [first]
    while ticks[-1] < high - 1e-9 * step:
        ticks.append(first + len(ticks) * step)
    return ticks


def tick_labels(ticks: list[float], unit: str) -> list[str]:
    """Axis labels for `ticks`: one scale for the axis, as few decimals as the step needs."""
    divisor, suffix = unit_scale(unit, max(abs(t) for t in ticks))
    step = (ticks[1] - ticks[0]) / divisor if len(ticks) > 1 else 1
    decimals = 0
    while decimals < 4 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return [format_number(t / divisor, decimals) + suffix for t in ticks]


def threshold_color(value: float, thresholds: dict[str, Any] | None) -> str:
    """The color of the last threshold step `value` reaches (Grafana's absolute thresholds)."""
    color = "green"
    for step in (thresholds or {}).get("steps", []):
        if step.get("value") is None or value >= step["value"]:
            color = step["color"]
    return NAMED_COLORS.get(color, color)


# ---- drawing -----------------------------------------------------------------------------------


def panel_size(grid_pos: dict[str, int]) -> tuple[float, float]:
    """A panel's outer width and height in pixels, from its gridPos."""
    column = (PAGE_WIDTH - 2 * PAGE_PADDING - 23 * GRID_GAP_PX) / 24
    width = grid_pos["w"] * column + (grid_pos["w"] - 1) * GRID_GAP_PX
    height = grid_pos["h"] * GRID_ROW_PX + (grid_pos["h"] - 1) * GRID_GAP_PX
    return width, height


def stacked(series: list[Series]) -> list[tuple[list[tuple[float, float]], list[tuple[float, float]]]]:
    """Grafana's "normal" stacking: for each series, (its bottom, its top) at each of its timestamps."""
    totals: dict[float, float] = {}
    bands = []
    for one in series:
        bottom = [(t, totals.get(t, 0.0)) for t, _ in one.points]
        for t, v in one.points:
            totals[t] = totals.get(t, 0.0) + v
        bands.append((bottom, [(t, totals[t]) for t, _ in one.points]))
    return bands


def segments(points: list[tuple[float, float]], step_s: float) -> list[list[tuple[float, float]]]:
    """Runs of points without a gap (a missing step breaks the line, as in Grafana)."""
    runs: list[list[tuple[float, float]]] = []
    for point in points:
        if runs and point[0] - runs[-1][-1][0] <= step_s * 1.5:
            runs[-1].append(point)
        else:
            runs.append([point])
    return runs


def time_ticks(start: float, end: float, width: float) -> list[float]:
    wanted = max(2, int(width // 85))
    interval = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if (end - start) / s <= wanted), 7200)
    return [t for t in range(int(math.ceil(start / interval) * interval), int(end) + 1, interval)]


def svg_chart(panel: PanelData, width: float, height: float, start: float, end: float, step_s: float) -> str:
    """An inline SVG line chart of the panel's series: y axis with unit labels, time axis, grid."""
    defaults = panel.config.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    unit = defaults.get("unit", "short")
    drawn = panel.drawn_series
    is_stacked = custom.get("stacking", {}).get("mode") == "normal"
    bands = stacked(drawn) if is_stacked else [([(t, 0.0) for t, _ in s.points], s.points) for s in drawn]
    values = [v for _, top in bands for _, v in top] + ([0.0] if is_stacked else [])
    low = defaults["min"] if "min" in defaults else min(values, default=0.0)
    high = max(values, default=1.0)
    high = high if high > low else low + (abs(low) or 1)  # a flat zero line still gets an axis
    divisor, _ = unit_scale(unit, high)  # round ticks in the unit shown (MiB, ms, %), not in raw bytes or seconds
    ticks = [tick * divisor for tick in nice_ticks(low / divisor, high / divisor)]
    labels = tick_labels(ticks, unit)
    y_low, y_high = ticks[0], ticks[-1]
    left = max(len(label) for label in labels) * AXIS_CHAR_PX + 10
    plot_w, plot_h = width - left - 6, height - X_AXIS_PX - 6

    def x(t: float) -> float:
        return left + (t - start) / (end - start) * plot_w

    def y(v: float) -> float:
        return 6 + plot_h - (v - y_low) / (y_high - y_low) * plot_h

    parts = [f'<svg class="chart" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">']
    for tick, label in zip(ticks, labels, strict=True):
        parts.append(f'<line class="grid" x1="{left:.1f}" x2="{left + plot_w:.1f}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6:.1f}" y="{y(tick) + 4:.1f}" text-anchor="end">{html.escape(label)}</text>')
    for tick in time_ticks(start, end, plot_w):
        if not left + 30 <= x(tick) <= left + plot_w - 30:
            continue  # a label at the very edge would run into the y labels or out of the panel
        stamp = datetime.fromtimestamp(tick, UTC).strftime("%H:%M:%S")
        parts.append(f'<line class="grid" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="6" y2="{6 + plot_h:.1f}"/>')
        parts.append(f'<text class="axis" x="{x(tick):.1f}" y="{height - 5:.1f}" text-anchor="middle">{stamp}</text>')
    opacity = custom.get("fillOpacity", 0) / 100
    line_width = custom.get("lineWidth", 1) + 0.5  # a hair thicker than Grafana's: the image is shown scaled down
    for index, ((bottom, top), one) in enumerate(zip(bands, drawn, strict=True)):
        color = PALETTE[index % len(PALETTE)]
        lows = dict(bottom)
        line_paths, fill_paths = [], []
        for run in segments(top, step_s):
            line = " L ".join(f"{x(t):.1f} {y(v):.1f}" for t, v in run)
            line_paths.append(f"M {line}")
            back = " L ".join(f"{x(t):.1f} {y(max(lows[t], y_low)):.1f}" for t, _ in reversed(run))
            fill_paths.append(f"M {line} L {back} Z")
        if opacity:
            parts.append(f'<path d="{" ".join(fill_paths)}" fill="{color}" fill-opacity="{opacity}" stroke="none"/>')
        parts.append(
            f'<path class="series" data-points="{len(one.points)}" data-label="{html.escape(one.label)}" '
            f'd="{" ".join(line_paths)}" fill="none" stroke="{color}" stroke-width="{line_width}" stroke-linejoin="round"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def legend_table(panel: PanelData, width: float, rows: int) -> str:
    """Grafana's table legend: name, then the calcs the dashboard asks for (last, max)."""
    unit = panel.config.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    calcs = panel.config.get("options", {}).get("legend", {}).get("calcs", ["lastNotNull", "max"])
    headers = {"lastNotNull": "Last *", "last": "Last", "max": "Max", "min": "Min", "mean": "Mean"}
    columns = [c for c in calcs if c in headers]
    drawn = panel.drawn_series
    colored = list(enumerate(drawn))  # colors follow query order, as on the chart
    if len(drawn) > rows:
        # Cut to the series with the highest peaks (the ones the eye finds on the chart), in query order.
        biggest = sorted(colored, key=lambda item: -max(v for _, v in item[1].points))[: rows - 1]
        colored = sorted(biggest, key=lambda item: item[0])
    head = "".join(f"<th>{headers[c]}</th>" for c in columns)
    body = []
    for index, one in colored:
        values = [v for _, v in one.points]
        calc = {"lastNotNull": values[-1], "last": values[-1], "max": max(values), "min": min(values),
                "mean": sum(values) / len(values)}  # fmt: skip
        cells = "".join(f"<td>{html.escape(format_value(calc[c], unit))}</td>" for c in columns)
        swatch = f'<i style="background:{PALETTE[index % len(PALETTE)]}"></i>'
        body.append(f'<tr><td class="name">{swatch}{html.escape(one.label) or "&nbsp;"}</td>{cells}</tr>')
    if len(colored) < len(drawn):
        more = len(drawn) - len(colored)
        body.append(f'<tr><td class="more" colspan="{len(columns) + 1}">+{more} more series (lower peaks)</td></tr>')
    return f'<table class="legend" style="width:{width:.0f}px"><tr><th></th>{head}</tr>{"".join(body)}</table>'


def stat_body(panel: PanelData, width: float, height: float) -> str:
    """Grafana's stat panel: the last value of each series, big, on its threshold color, and a sparkline."""
    defaults = panel.config.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    drawn = panel.drawn_series
    tiles = []
    tile_w = width / max(1, len(drawn))
    for one in drawn:
        last = one.points[-1][1]
        color = threshold_color(last, defaults.get("thresholds"))
        values = [v for _, v in one.points]
        low, high = min(values + [0.0]), max(values)
        span = (high - low) or 1
        t0, t1 = one.points[0][0], one.points[-1][0]
        xs = [(t - t0) / ((t1 - t0) or 1) * tile_w for t, _ in one.points]
        ys = [height - 2 - (v - low) / span * height * 0.45 for v in values]
        line = " L ".join(f"{a:.1f} {b:.1f}" for a, b in zip(xs, ys, strict=True))
        spark = f"M 0 {height:.1f} L {line} L {tile_w:.1f} {height:.1f} Z"
        name = f'<div class="stat-name">{html.escape(one.label)}</div>' if len(drawn) > 1 else ""
        text = format_value(last, unit)
        font_px = min(36, int(tile_w * 0.85 / (len(text) * 0.68)))  # bold DejaVu: ~0.68 em a character; fit the tile
        tiles.append(
            f'<div class="stat" data-points="{len(one.points)}" style="background:{color};width:{tile_w:.0f}px">'
            f'<svg class="spark" width="{tile_w:.0f}" height="{height:.0f}"><path d="{spark}"/></svg>'
            f'{name}<div class="stat-value" style="font-size:{font_px}px">{html.escape(text)}</div></div>'
        )
    return f'<div class="stats" style="height:{height:.0f}px">{"".join(tiles)}</div>'


def panel_html(panel: PanelData, start: float, end: float, step_s: float) -> str:
    pos = panel.grid_pos
    area = f"grid-column:{pos['x'] + 1} / span {pos['w']};grid-row:{pos['y'] + 1} / span {pos['h']}"
    title = html.escape(panel.title)
    if panel.type == "row":
        return f'<div class="row" style="{area}"><span class="chevron">&#8964;</span>{title}</div>'
    width, height = panel_size(pos)
    inner_w = width - 2 * PANEL_PADDING
    inner_h = height - PANEL_HEADER_PX - PANEL_PADDING
    if not panel.drawn_series:
        detail = "; ".join(panel.errors) or "No data"
        body = f'<div class="nodata">{html.escape(detail)}</div>'
    elif panel.type == "stat":
        body = stat_body(panel, inner_w, inner_h)
    else:
        rows = min(len(panel.drawn_series), LEGEND_MAX_ROWS)
        legend_h = LEGEND_ROW_PX * (rows + 1) + 4
        body = svg_chart(panel, inner_w, inner_h - legend_h, start, end, step_s) + legend_table(panel, inner_w, rows)
    return (
        f'<div class="panel" data-title="{title}" data-type="{panel.type}" style="{area}">'
        f'<div class="title">{title}</div>{body}</div>'
    )


STYLE = f"""
* {{ box-sizing: border-box; }}
body {{ margin: 0; background: #111217; color: #ccccdc; font: 14px "DejaVu Sans", Arial, sans-serif; }}
.page {{ width: {PAGE_WIDTH}px; padding: {PAGE_PADDING}px; }}
.top {{ display: flex; align-items: baseline; gap: 16px; margin-bottom: 6px; }}
.top h1 {{ font-size: 22px; font-weight: normal; margin: 0; color: #e6e6f0; }}
.pill {{ border: 1px solid #34373d; border-radius: 2px; padding: 3px 8px; font-size: 13px; color: #ccccdc; background: #181b1f; }}
.pill b {{ color: #8e8e9e; font-weight: normal; margin-right: 6px; }}
.range {{ margin-left: auto; }}
.note {{ font-size: 13px; color: #8e8e9e; margin: 0 0 12px 0; }}
.grid {{ display: grid; grid-template-columns: repeat(24, 1fr); grid-auto-rows: {GRID_ROW_PX}px; gap: {GRID_GAP_PX}px; }}
.row {{ font-size: 16px; font-weight: bold; color: #e6e6f0; display: flex; align-items: center; gap: 6px; }}
.chevron {{ color: #8e8e9e; font-size: 13px; }}
.panel {{ background: #181b1f; border: 1px solid #25282e; border-radius: 2px; padding: 0 {PANEL_PADDING}px; overflow: hidden; }}
.title {{ height: {PANEL_HEADER_PX}px; line-height: {PANEL_HEADER_PX}px; font-size: 14px; font-weight: bold; color: #e6e6f0;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
.chart {{ display: block; }}
.chart .grid {{ stroke: rgba(204, 204, 220, 0.09); stroke-width: 1; }}
.chart .axis {{ font-size: {AXIS_FONT_PX}px; fill: #9fa1ab; }}
.legend {{ border-collapse: collapse; font-size: 12px; table-layout: auto; margin-top: 4px; }}
.legend th {{ text-align: right; font-weight: normal; color: #5794f2; padding: 0 6px; height: {LEGEND_ROW_PX}px; white-space: nowrap; }}
.legend td {{ text-align: right; padding: 0 6px; height: {LEGEND_ROW_PX}px; white-space: nowrap; color: #ccccdc; }}
.legend td.name {{ text-align: left; width: 100%; max-width: 0; overflow: hidden; text-overflow: ellipsis; padding-left: 0; }}
.legend td.more {{ text-align: left; color: #8e8e9e; padding-left: 20px; }}
.legend i {{ display: inline-block; width: 14px; height: 4px; border-radius: 2px; margin-right: 6px; vertical-align: middle; }}
.stats {{ display: flex; gap: 2px; }}
.stat {{ position: relative; border-radius: 2px; display: flex; flex-direction: column; align-items: center;
  justify-content: center; overflow: hidden; }}
.spark {{ position: absolute; left: 0; top: 0; }}
.spark path {{ fill: rgba(255, 255, 255, 0.18); stroke: rgba(255, 255, 255, 0.45); stroke-width: 1.5; }}
.stat-value {{ position: relative; font-weight: bold; color: #fff; text-shadow: 0 1px 2px rgba(0,0,0,0.3); }}
.stat-name {{ position: relative; font-size: 13px; color: #fff; }}
.nodata {{ color: #f2495c; padding: 24px 0; text-align: center; }}
"""


def render_html(dashboard: dict[str, Any], panels: list[PanelData], prometheus_url: str, start: float, end: float,
                step_s: float, variables: dict[str, str] | None = None) -> str:  # fmt: skip
    """The whole preview page: a Grafana-like top bar (title, variables, time range), then the grid."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}
    model = "All" if values["model"] == ".*" else values["model"]
    span = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M:%S")
    until = datetime.fromtimestamp(end, UTC).strftime("%H:%M:%S UTC")
    title = html.escape(dashboard.get("title", "dashboard"))
    cells = "".join(panel_html(panel, start, end, step_s) for panel in panels)
    note = (
        "Preview, not Grafana: each panel is this dashboard's own PromQL, run as query_range against a real "
        f"Prometheus ({html.escape(prometheus_url)}; $__rate_interval = {html.escape(values['__rate_interval'])}, "
        f"step {step_s:g} s) and drawn by tests/ops/dashboard_preview.py."
    )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title} (preview)</title>'
        f'<style>{STYLE}</style></head><body><div class="page">'
        f'<div class="top"><h1>{title}</h1><span class="pill"><b>Data source</b>Prometheus</span>'
        f'<span class="pill"><b>Model</b>{html.escape(model)}</span>'
        f'<span class="pill range">{span} to {until}</span></div>'
        f'<p class="note">{note}</p><div class="grid">{cells}</div></div></body></html>'
    )


def write_preview(dashboard_path: Path, prometheus_url: str, out_path: Path, window_s: float = 300,
                  step_s: float | None = None, end: float | None = None,
                  variables: dict[str, str] | None = None) -> list[PanelData]:  # fmt: skip
    """Runs every panel's queries over the last `window_s` seconds (up to `end`, default now), writes
    the HTML page to `out_path` and returns the panels with their series."""
    dashboard = json.loads(dashboard_path.read_text())
    end = end if end is not None else time.time()
    start = end - window_s
    step_s = step_s or max(1.0, round(window_s / 300))
    panels = fetch_panels(dashboard, prometheus_url, start, end, step_s, variables)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_html(dashboard, panels, prometheus_url, start, end, step_s, variables))
    return panels
