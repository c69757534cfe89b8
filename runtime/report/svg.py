"""Inline SVG charts for the run report: line charts and horizontal bars, drawn in Python.

Every piece of text is escaped here and the result is `markupsafe.Markup`, so the template can
insert it as is; numbers are formatted by us. No script and nothing fetched at view time. Each
plotted point or bar carries a `<title>` (the browser shows it on hover).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from markupsafe import Markup, escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
MAX_POINTS = 800  # per series; longer series are thinned evenly (first and last kept)


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-4:
        return f"{v:.2g}"
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def thin(points: Sequence[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return list(points)
    stride = (len(points) - 1) / (limit - 1)
    return [points[round(i * stride)] for i in range(limit)]


def line_chart(series: dict[str, Sequence[tuple[float, float]]], *, title: str, x_label: str = "step",
               y_label: str = "", log_y: bool | None = None, markers: Iterable[tuple[float, str]] = (),
               width: int = 535, height: int = 300) -> Markup:
    """One chart, one polyline per series. `log_y=None`: a log scale when the positive values span more
    than two decades (then values <= 0 cannot be drawn: a series of only those is named in the legend
    as such). `markers`: vertical lines (x, label), e.g. where QAT starts."""
    clean = {name: [(float(x), float(y)) for x, y in pts if y is not None and math.isfinite(float(y))]
             for name, pts in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    if not clean:
        return Markup('<p class="empty">no data</p>')
    positive = [y for pts in clean.values() for _, y in pts if y > 0]
    if log_y is None:
        log_y = bool(positive) and max(positive) / min(positive) > 100
    if log_y and not positive:
        log_y = False
    undrawn: list[str] = []
    if log_y:
        undrawn = [k for k, pts in clean.items() if all(y <= 0 for _, y in pts)]
        clean = {k: [(x, y) for x, y in pts if y > 0] for k, pts in clean.items() if k not in undrawn}
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    ty = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ty(y) for y in ys), max(ty(y) for y in ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:  # a constant: centred, with a band of 10% around it
        half = abs(y0) * 0.1 or 0.5
        y0, y1 = y0 - half, y1 + half
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 64, 16, 28, 40
    cols = max(1, (width - left - right) // 170)
    legend_rows = math.ceil((len(clean) + len(undrawn)) / cols)
    bottom += 18 * legend_rows
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (ty(y) - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" data-kind="line">',
           f'<title>{escape(title)}</title>',
           f'<text x="{left}" y="18" class="t">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    if log_y:
        yticks = [10.0 ** e for e in range(math.floor(y0), math.ceil(y1) + 1) if y0 <= e <= y1]
        if len(yticks) < 2:
            yticks = [10 ** v for v in nice_ticks(y0, y1)]
    else:
        yticks = nice_ticks(y0, y1)
    for t in yticks:
        if not (y0 <= ty(t) <= y1):
            continue
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" class="yt">{escape(fmt(t))}</text>')
    for t in nice_ticks(x0, x1, 6):
        if x0 <= t <= x1:
            x = px(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                       f'<text x="{x:.1f}" y="{top + ph + 16}" class="xt">{escape(fmt(t))}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 32}" class="xl">{escape(x_label)}</text>')
    if y_label or log_y:
        out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" class="yl">{escape(y_label)}'
                   f'{escape(" (log scale)" if log_y else "")}</text>')
    for x, label in markers:
        if x0 <= x <= x1:
            mx = px(x)
            out.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" y2="{top + ph}" class="marker"/>'
                       f'<text x="{mx + 4:.1f}" y="{top + 12}" class="mt">{escape(label)}</text>')
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = thin(sorted(pts))
        path = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(pts))
        out.append(f'<path d="{path}" stroke="{color}" class="series" data-series="{escape(name)}" '
                   f'data-points="{len(pts)}"><title>{escape(name)}</title></path>')
        if len(pts) <= 40:  # sparse series (measured every N steps): dots with values on hover
            for x, y in pts:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}">'
                           f'<title>{escape(name)} @ {escape(fmt(x))}: {escape(fmt(y))}</title></circle>')
        lx = left + (i % cols) * (pw / cols)
        ly = height - 10 - 18 * (legend_rows - 1 - i // cols)
        last = pts[-1][1]
        out.append(f'<rect x="{lx:.1f}" y="{ly - 9:.1f}" width="12" height="4" fill="{color}"/>'
                   f'<text x="{lx + 16:.1f}" y="{ly - 4:.1f}" class="lg">{escape(name)} '
                   f'<tspan class="last">{escape(fmt(last))}</tspan></text>')
    for j, name in enumerate(undrawn, start=len(clean)):
        lx = left + (j % cols) * (pw / cols)
        ly = height - 10 - 18 * (legend_rows - 1 - j // cols)
        out.append(f'<text x="{lx + 16:.1f}" y="{ly - 4:.1f}" class="lg">{escape(name)} '
                   f'<tspan class="last">always 0 (not on a log scale)</tspan></text>')
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(items: Sequence[tuple[str, float, str]], *, title: str, unit: str = "",
              threshold: tuple[float, str] | None = None, width: int = 535, bar: int = 18) -> Markup:
    """Horizontal bars: (label, value, note). `threshold`: a vertical line (value, label), e.g. a gate."""
    items = [(label, float(v), note) for label, v, note in items if v is not None and math.isfinite(float(v))]
    if not items:
        return Markup('<p class="empty">no data</p>')
    label_w = min(300, 12 + 7 * max(len(label) for label, _, _ in items))
    left, right, top = label_w, 150, 28
    height = top + len(items) * (bar + 6) + 24
    pw = width - left - right
    hi = max([v for _, v, _ in items] + ([threshold[0]] if threshold else []))
    lo = min([0.0] + [v for _, v, _ in items])
    hi = hi if hi > lo else lo + 1

    def px(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" data-kind="bars">',
           f'<title>{escape(title)}</title>', f'<text x="8" y="18" class="t">{escape(title)}</text>']
    for i, (label, v, note) in enumerate(items):
        y = top + i * (bar + 6)
        x_start, x_end = sorted((px(0.0), px(v)))
        color = PALETTE[0]
        out.append(f'<text x="{left - 6}" y="{y + bar - 5}" class="bl">{escape(label)}</text>'
                   f'<rect x="{x_start:.1f}" y="{y}" width="{max(0.5, x_end - x_start):.1f}" height="{bar}" fill="{color}" '
                   f'class="bar" data-value="{v!r}"><title>{escape(label)}: {escape(fmt(v))} {escape(unit)}'
                   f'{escape((" (" + note + ")") if note else "")}</title></rect>'
                   f'<text x="{x_end + 4:.1f}" y="{y + bar - 5}" class="bv">{escape(fmt(v))} {escape(unit)} '
                   f'<tspan class="note">{escape(note)}</tspan></text>')
    if threshold is not None:
        tx = px(threshold[0])
        bottom = top + len(items) * (bar + 6)
        out.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top - 4}" y2="{bottom}" class="marker"/>'
                   f'<text x="{tx + 4:.1f}" y="{bottom + 14}" class="mt">{escape(threshold[1])}</text>')
    out.append("</svg>")
    return Markup("".join(out))
