"""Static SVG charts drawn on the server: scales, axes, marks and legends.

Why not plotly: its 4.7 MB script cost 0.8-1.2 s of every first visit of a page with a chart in headless
Chromium on the 2-core machine (docs/performance.md section 7), which kept four pages over 2 s. These
charts are plain SVG inside the page (and inside the HTML report, which then needs no script). Every
mark carries its value as a <title>, which the browser shows on hover.

A chart is drawn in its own units (viewBox) and scaled to the width it gets, so text stays readable
when the width is near `width`: callers pick it for where the chart sits.
"""

from __future__ import annotations

import math
from html import escape

TEXT = "#31333f"  # Streamlit's text colour
MUTED = "#6b6f7b"
GRID = "#e6e7eb"
DASHES = {"solid": None, "dash": "7 4", "dot": "2 3"}


def esc(s) -> str:
    return escape(str(s), quote=True)


def text_width(s: str, size: float) -> float:
    """A rough width of `s` in a sans-serif font (0.56 em per character): enough to place and wrap."""
    return 0.56 * size * len(s)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """At most about n+1 round values (steps of 1, 2 or 5 x 10^k) from lo to hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


class Linear:
    """Maps [lo, hi] onto [a, b] (b < a for a y axis)."""

    def __init__(self, lo: float, hi: float, a: float, b: float):
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, v: float) -> float:
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, n: int = 5) -> list[float]:
        return nice_ticks(self.lo, self.hi, n)


class Band:
    """Categories side by side on [a, b], each with a band of `width`; `pad` of a step left empty."""

    def __init__(self, cats: list, a: float, b: float, pad: float = 0.2):
        self.cats = list(cats)
        self.step = (b - a) / max(len(self.cats), 1)
        self.width = self.step * (1 - pad)
        self.a = a
        self.pad = pad

    def __call__(self, cat) -> float:
        """Start of the band of `cat`."""
        return self.a + self.step * self.cats.index(cat) + self.step * self.pad / 2

    def center(self, cat) -> float:
        return self(cat) + self.width / 2


def marker_path(symbol: str, x: float, y: float, size: float) -> str:
    """A black outline marker: 'x' (shuffled labels), '-' and '|' (a constant label)."""
    h = size / 2
    if symbol == "x":
        return f"M{x - h:.1f},{y - h:.1f}L{x + h:.1f},{y + h:.1f}M{x - h:.1f},{y + h:.1f}L{x + h:.1f},{y - h:.1f}"
    if symbol == "-":
        return f"M{x - h:.1f},{y:.1f}L{x + h:.1f},{y:.1f}"
    return f"M{x:.1f},{y - h:.1f}L{x:.1f},{y + h:.1f}"


class Chart:
    """One SVG drawing of `width` x `height` units with a plot area inside the margins."""

    def __init__(
        self,
        width: float,
        height: float,
        left: float = 60,
        right: float = 20,
        top: float = 20,
        bottom: float = 50,
        font: float = 13,
    ):
        self.width, self.height, self.font = width, height, font
        self.x0, self.x1, self.y0, self.y1 = left, width - right, top, height - bottom
        self.parts: list[str] = []

    # ------------------------------------------------------------------ marks
    def _titled(self, tag: str, attrs: str, title: str | None) -> None:
        if title is None:
            self.parts.append(f"<{tag} {attrs}/>")
        else:
            # a line break as an entity: a blank line would end the HTML block st.markdown passes through
            self.parts.append(f"<{tag} {attrs}><title>{esc(title).replace(chr(10), '&#10;')}</title></{tag}>")

    def rect(
        self, x: float, y: float, w: float, h: float, fill: str, title: str | None = None, stroke: str | None = None
    ) -> None:
        extra = f' stroke="{stroke}"' if stroke else ""
        self._titled(
            "rect",
            f'x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" fill="{fill}"{extra}',
            title,
        )

    def line(
        self,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        color: str,
        width: float = 1,
        dash: str = "solid",
        title: str | None = None,
    ) -> None:
        d = DASHES.get(dash, dash)
        self._titled(
            "line",
            f'x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
            f'stroke-width="{width}"' + (f' stroke-dasharray="{d}"' if d else ""),
            title,
        )

    def polyline(
        self,
        points: list[tuple[float, float]],
        color: str,
        width: float = 2,
        dash: str = "solid",
        title: str | None = None,
    ) -> None:
        """A line through the points; a NaN point breaks it (one polyline per stretch)."""
        d = DASHES.get(dash, dash)
        stretch: list[tuple[float, float]] = []
        for p in [*points, (math.nan, math.nan)]:
            if math.isfinite(p[0]) and math.isfinite(p[1]):
                stretch.append(p)
                continue
            if stretch:
                pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in stretch)
                self._titled(
                    "polyline",
                    f'points="{pts}" fill="none" stroke="{color}" stroke-width="{width}" '
                    'stroke-linejoin="round"' + (f' stroke-dasharray="{d}"' if d else ""),
                    title,
                )
            stretch = []

    def marker(
        self,
        symbol: str,
        x: float,
        y: float,
        size: float = 14,
        color: str = "#222",
        width: float = 3,
        title: str | None = None,
    ) -> None:
        self._titled(
            "path", f'd="{marker_path(symbol, x, y, size)}" stroke="{color}" stroke-width="{width}" fill="none"', title
        )

    def text(
        self,
        x: float,
        y: float,
        s,
        size: float | None = None,
        anchor: str = "start",
        color: str = TEXT,
        weight: str | None = None,
        baseline: str = "middle",
        rotate: float | None = None,
    ) -> None:
        """One line, or several (a list), centred on y as a block."""
        lines = s if isinstance(s, list) else [s]
        size = size or self.font
        attrs = (
            f'font-size="{size}" text-anchor="{anchor}" fill="{color}" dominant-baseline="{baseline}"'
            + (f' font-weight="{weight}"' if weight else "")
            + (f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else "")
        )
        if len(lines) == 1:
            self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" {attrs}>{esc(lines[0])}</text>')
            return
        first = y - (len(lines) - 1) * size * 0.6
        spans = "".join(
            f'<tspan x="{x:.1f}" y="{first + i * size * 1.2:.1f}">{esc(t)}</tspan>' for i, t in enumerate(lines)
        )
        self.parts.append(f"<text {attrs}>{spans}</text>")

    # ------------------------------------------------------------------ axes
    def y_axis(
        self,
        scale: Linear,
        fmt=lambda v: f"{v:g}",
        title: str | None = None,
        n: int = 5,
        ticks: list[float] | None = None,
    ) -> None:
        for v in ticks if ticks is not None else scale.ticks(n):
            y = scale(v)
            self.line(self.x0, y, self.x1, y, GRID)
            self.text(self.x0 - 6, y, fmt(v), anchor="end", color=MUTED, size=self.font - 1)
        if title:
            self.text(14, (self.y0 + self.y1) / 2, title, anchor="middle", rotate=-90)

    def x_axis(
        self, scale: Linear, fmt=lambda v: f"{v:g}", title: str | None = None, n: int = 6, grid: bool = True
    ) -> None:
        for v in scale.ticks(n):
            x = scale(v)
            if grid:
                self.line(x, self.y0, x, self.y1, GRID)
            self.text(x, self.y1 + 14, fmt(v), anchor="middle", color=MUTED, size=self.font - 1)
        self.line(self.x0, self.y1, self.x1, self.y1, MUTED)
        if title:
            self.text((self.x0 + self.x1) / 2, self.y1 + 36, title, anchor="middle")

    def band_labels_x(self, band: Band, labels: dict | None = None, size: float | None = None) -> None:
        """Category names under the plot, wrapped to the band's step (smaller, rather than cut, when one word
        is wider than the step: 'classifier' under a narrow drawing's bars)."""
        names = {c: str((labels or {}).get(c, c)) for c in band.cats}
        longest = max((len(w) for n in names.values() for w in n.split()), default=1)
        size = min(size or self.font - 1, band.step / (0.56 * longest))
        for c, name in names.items():
            lines = wrap(name, max(int(band.step / (0.56 * size)), 1))
            self.text(
                band.center(c),
                self.y1 + 10 + (len(lines) - 1) * size * 0.6,
                lines,
                size=round(size, 1),
                anchor="middle",
                color=TEXT,
                baseline="hanging" if len(lines) == 1 else "middle",
            )
        self.line(self.x0, self.y1, self.x1, self.y1, MUTED)

    def band_labels_y(self, band: Band, labels: dict | None = None, size: float | None = None) -> None:
        """Category names left of the plot, right-aligned (already wrapped: a list per name)."""
        for c in band.cats:
            name = (labels or {}).get(c, c)
            self.text(
                self.x0 - 8, band.center(c), name if isinstance(name, list) else str(name), size=size, anchor="end"
            )

    # ------------------------------------------------------------------ legend
    def legend(self, items: list[dict], x: float, y: float, width: float, size: float | None = None) -> None:
        """Items (label, color, kind 'rect' | 'line' | a marker symbol, dash) in rows from (x, y), wrapping
        at `width` (legend_height says how much room that takes)."""
        size = size or self.font - 1
        for it, dx, row in legend_layout(items, width, size):
            cx, cy = x + dx, y + size * 0.8 + row * size * 1.6
            kind = it.get("kind", "rect")
            if kind == "rect":
                self.rect(cx, cy - size * 0.4, 16, size * 0.8, it["color"])
            elif kind == "line":
                self.line(cx, cy, cx + 20, cy, it["color"], it.get("width", 2.5), it.get("dash", "solid"))
            else:
                self.marker(kind, cx + 9, cy, size * 0.9, it.get("color", "#222"), 2)
            self.text(cx + 24, cy, it["label"], size=size)

    # ------------------------------------------------------------------ out
    def svg(self, label: str = "chart", cls: str = "") -> str:
        # one line and no blank line: st.markdown passes an HTML block through only until a blank line
        return (
            f'<svg class="{" ".join(["cv-svg", *cls.split()])}" viewBox="0 0 {self.width:.0f} {self.height:.0f}" width="100%" role="img" '
            f'aria-label="{esc(label)}" style="max-width:{self.width * 1.3:.0f}px;height:auto" '
            f'xmlns="http://www.w3.org/2000/svg">' + "".join(self.parts) + "</svg>"
        )


def legend_layout(items: list[dict], width: float, size: float) -> list[tuple[dict, float, int]]:
    """(item, x offset, row) for legend items laid out in rows no wider than `width`."""
    out, dx, row = [], 0.0, 0
    for it in items:
        w = 24 + text_width(it["label"], size) + 16
        if dx > 0 and dx + w > width:
            dx, row = 0.0, row + 1
        out.append((it, dx, row))
        dx += w
    return out


def legend_height(items: list[dict], width: float, size: float) -> float:
    rows = 1 + max((r for _, _, r in legend_layout(items, width, size)), default=0)
    return rows * size * 1.6 if items else 0.0


def wrap(s: str, width: int) -> list[str]:
    """`s` on lines of at most `width` characters, broken at spaces; a longer word (a file name) is cut."""
    words = [w[i : i + width] for w in str(s).split() for i in range(0, len(w), width)]
    lines, cur = [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    return [*lines, cur] if cur else [str(s)]


def interpolate(stops: list[str], t: float) -> str:
    """A colour at t in [0, 1] between evenly spaced hex stops."""
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    a, b = (tuple(int(s[k : k + 2], 16) for k in (1, 3, 5)) for s in (stops[i], stops[i + 1]))
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b))


def luminance(hex_color: str) -> float:
    r, g, b = (int(hex_color[k : k + 2], 16) / 255 for k in (1, 3, 5))
    return 0.299 * r + 0.587 * g + 0.114 * b


RDBU = ["#b2182b", "#ef8a62", "#fddbc7", "#f7f7f7", "#d1e5f0", "#67a9cf", "#2166ac"]  # ColorBrewer RdBu, -1 .. 1
BLUES = ["#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b"]
