"""Small inline SVG charts rendered on the server (no JavaScript, nothing loaded from anywhere).

Every label and value is escaped; each chart carries ``role="img"`` and an ``aria-label``, and each bar
a ``<title>`` with its exact number (what a browser test reads back).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = {
    "received": "#6b8fd6",
    "held": "#b08bd6",
    "in_progress": "#e0a84b",
    "completed": "#4caf7a",
    "failed": "#d9534f",
    "rejected": "#9aa0a6",
    "overdue": "#d9534f",
    "due_soon": "#e0a84b",
    "on_track": "#4caf7a",
    "escalated": "#d9534f",
    "alerts": "#e0a84b",
}
_DEFAULT = "#6b8fd6"


def _color(key: str) -> str:
    return PALETTE.get(key, _DEFAULT)


def hbars(
    chart_id: str,
    title: str,
    rows: Sequence[tuple[str, int]],
    *,
    width: int = 460,
    color_by_label: bool = True,
) -> str:
    """Horizontal bars, one per (label, value)."""
    bar_h, gap, label_w = 20, 6, 120
    height = max(1, len(rows)) * (bar_h + gap) + 10
    top = max([v for _, v in rows] + [1])
    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" role="img" aria-label="{escape(title)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
    ]
    for i, (label, value) in enumerate(rows):
        y = 5 + i * (bar_h + gap)
        w = 0 if value <= 0 else max(2, int((width - label_w - 60) * value / top))
        color = _color(label) if color_by_label else _DEFAULT
        parts.append(
            f'<g class="bar" data-label="{escape(label)}" data-value="{int(value)}">'
            f"<title>{escape(label)}: {int(value)}</title>"
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" class="lbl">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" rx="3" fill="{color}"/>'
            f'<text x="{label_w + w + 6}" y="{y + 14}" class="val">{int(value)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def columns(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[int]]],
    *,
    width: int = 620,
    height: int = 200,
) -> str:
    """Grouped columns: one group per label, one column per series; a legend underneath."""
    pad_l, pad_b, pad_t = 34, 34, 10
    n = max(1, len(labels))
    group_w = (width - pad_l - 10) / n
    col_w = max(2.0, (group_w - 6) / max(1, len(series)))
    top = max([v for _, vals in series for v in vals] + [1])
    plot_h = height - pad_b - pad_t
    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" role="img" aria-label="{escape(title)}" '
        f'width="{width}" height="{height + 18}" viewBox="0 0 {width} {height + 18}">',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 6}" y2="{pad_t + plot_h}" class="axis"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end" class="val">{top}</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end" class="val">0</text>',
    ]
    for i, label in enumerate(labels):
        gx = pad_l + i * group_w + 3
        for j, (name, vals) in enumerate(series):
            v = int(vals[i]) if i < len(vals) else 0
            h = 0 if v <= 0 else max(1.0, plot_h * v / top)
            x = gx + j * col_w
            parts.append(
                f'<rect class="col" data-series="{escape(name)}" data-label="{escape(label)}" data-value="{v}" '
                f'x="{x:.1f}" y="{pad_t + plot_h - h:.1f}" width="{col_w - 1:.1f}" height="{h:.1f}" '
                f'fill="{_color(name)}"><title>{escape(label)} {escape(name)}: {v}</title></rect>'
            )
        if i % max(1, n // 7) == 0:
            parts.append(
                f'<text x="{gx + group_w / 2:.1f}" y="{pad_t + plot_h + 14}" text-anchor="middle" '
                f'class="lbl">{escape(label[5:])}</text>'
            )
    lx = pad_l
    for name, _ in series:
        parts.append(
            f'<rect x="{lx}" y="{height + 4}" width="10" height="10" fill="{_color(name)}"/>'
            f'<text x="{lx + 14}" y="{height + 13}" class="lbl">{escape(name)}</text>'
        )
        lx += 110
    parts.append("</svg>")
    return "".join(parts)


def stacked(
    chart_id: str,
    title: str,
    rows: Sequence[tuple[str, Sequence[tuple[str, int]]]],
    *,
    width: int = 460,
) -> str:
    """One horizontal stacked bar per row: (label, [(segment, value), ...])."""
    bar_h, gap, label_w = 20, 6, 90
    height = max(1, len(rows)) * (bar_h + gap) + 28
    top = max([sum(v for _, v in segs) for _, segs in rows] + [1])
    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" role="img" aria-label="{escape(title)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
    ]
    names: list[str] = []
    for i, (label, segs) in enumerate(rows):
        y = 5 + i * (bar_h + gap)
        x = float(label_w)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" class="lbl">{escape(label)}</text>'
        )
        for name, v in segs:
            if name not in names:
                names.append(name)
            w = 0.0 if v <= 0 else max(2.0, (width - label_w - 50) * v / top)
            parts.append(
                f'<rect class="seg" data-label="{escape(label)}" data-series="{escape(name)}" data-value="{int(v)}" '
                f'x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{_color(name)}">'
                f"<title>{escape(label)} {escape(name)}: {int(v)}</title></rect>"
            )
            x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 14}" class="val">{sum(v for _, v in segs)}</text>')
    lx, ly = label_w, height - 12
    for name in names:
        parts.append(
            f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{_color(name)}"/>'
            f'<text x="{lx + 14}" y="{ly}" class="lbl">{escape(name.replace("_", " "))}</text>'
        )
        lx += 100
    parts.append("</svg>")
    return "".join(parts)
