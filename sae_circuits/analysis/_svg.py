"""Static SVG figures for the analyses' doc pages: overlaid histograms and grouped bars, written
as plain text (no plotting library, nothing fetched). A figure is a string; save it with
:func:`sae_circuits._files.atomic_write_text`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
WIDTH, HEIGHT = 560, 320
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 50, 48  # the legend is a row between the title and the plot


def _frame(title: str, x_label: str, y_label: str, legend: Sequence[str]) -> list[str]:
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text transform="translate(14 {HEIGHT / 2}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(y_label)}</text>",
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" '
        'stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="black"/>',
    ]
    x = float(LEFT)
    for i, name in enumerate(legend):  # one row above the plot, so it never covers the data
        colour = COLOURS[i % len(COLOURS)]
        out.append(f'<rect x="{x:.0f}" y="27" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14:.0f}" y="36">{html.escape(name)}</text>')
        x += 14 + 6.5 * len(name) + 18  # about 6.5 px per character at font-size 11
    return out


def _y_ticks(top: float) -> list[str]:
    out = []
    for i in range(5):
        value = top * i / 4
        y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * i / 4
        out.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    return out


def histogram(
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    x_label: str,
    bins: int = 20,
    lo: float = 0.0,
    hi: float = 1.0,
) -> str:
    """Overlaid outline histograms of each series over ``[lo, hi]``, as fractions of the series
    (so series of different sizes compare).

    >>> svg = histogram({"a": [0.1, 0.5], "b": [0.9]}, title="t", x_label="x")
    >>> svg.startswith("<svg") and svg.count("<polyline") == 2
    True
    """
    if not series or bins < 1 or not hi > lo:
        raise ValueError(
            "histogram: expected series, bins >= 1 and hi > lo; "
            f"got {len(series)} series, {bins}, [{lo}, {hi}]"
        )
    fractions: dict[str, list[float]] = {}
    for name, values in series.items():
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, max(0, int((float(v) - lo) / (hi - lo) * bins)))] += 1
        fractions[name] = [c / max(1, len(values)) for c in counts]
    top = max(max(f) for f in fractions.values()) or 1.0
    out = _frame(title, x_label, "fraction", list(series)) + _y_ticks(top)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    for i in range(5):
        x = LEFT + plot_w * i / 4
        out.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">'
            f"{lo + (hi - lo) * i / 4:.3g}</text>"
        )
    for k, (name, frac) in enumerate(fractions.items()):
        points = [f"{LEFT},{HEIGHT - BOTTOM}"]
        for b, f in enumerate(frac):
            y = HEIGHT - BOTTOM - plot_h * f / top
            points += [
                f"{LEFT + plot_w * b / bins:.1f},{y:.1f}",
                f"{LEFT + plot_w * (b + 1) / bins:.1f},{y:.1f}",
            ]
        points.append(f"{WIDTH - RIGHT},{HEIGHT - BOTTOM}")
        colour = COLOURS[k % len(COLOURS)]
        out.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="1.6">')
        out.append(f"<title>{html.escape(name)}</title></polyline>")
    return "\n".join([*out, "</svg>"]) + "\n"


def bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    y_label: str,
    top: float | None = None,
) -> str:
    """Grouped bars: one group per entry of ``groups``, one bar per series in each group.

    >>> svg = bars(["f1", "f2"], {"feature": [0.9, 0.8], "neuron": [0.4, 0.3]}, title="t", y_label="F1")
    >>> svg.count("<title>")  # one per bar
    4
    """
    if not groups or any(len(v) != len(groups) for v in series.values()):
        raise ValueError(f"bars: every series needs one value per group ({len(groups)} groups)")
    top = top or max(max(v) for v in series.values()) or 1.0
    out = _frame(title, "", y_label, list(series)) + _y_ticks(top)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = plot_w / len(groups)
    bar_w = group_w * 0.8 / max(1, len(series))
    for g, label in enumerate(groups):
        x0 = LEFT + group_w * g + group_w * 0.1
        out.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">'
            f"{html.escape(label)}</text>"
        )
        for k, values in enumerate(series.values()):
            h = plot_h * max(0.0, float(values[g])) / top
            out.append(
                f'<rect x="{x0 + bar_w * k:.1f}" y="{HEIGHT - BOTTOM - h:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS[k % len(COLOURS)]}"><title>{float(values[g]):.3g}</title></rect>'
            )
    return "\n".join([*out, "</svg>"]) + "\n"
