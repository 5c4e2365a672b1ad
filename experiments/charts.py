"""Small line charts drawn with PIL, for the dataset viewer and the training-curve plot.

PIL is already a dependency; a chart drawn once can be stamped onto every video frame with a moving cursor,
which is what the dataset viewer needs (matplotlib would redraw each frame, or need blitting, and add a dependency).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import ImageDraw, ImageFont

# matplotlib's tab10, so the colours look familiar.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    # tab20's light tones next, so a 14-joint robot still gets 14 distinct colours.
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)
BACKGROUND = (255, 255, 255)
AXIS = (60, 60, 60)
GRID = (225, 225, 225)


def font(size: int = 12) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def colour(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def format_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def padded_range(values: np.ndarray) -> tuple[float, float]:
    """Finite min/max with 5% margins (a flat series gets +-1 or +-5% of its value)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return -1.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi == lo:
        margin = abs(lo) * 0.05 or 1.0
        return lo - margin, hi + margin
    margin = (hi - lo) * 0.05
    return lo - margin, hi + margin


@dataclasses.dataclass(frozen=True)
class Series:
    x: np.ndarray
    y: np.ndarray
    label: str
    colour: tuple[int, int, int]
    width: int = 2


@dataclasses.dataclass(frozen=True)
class Axes:
    """Where a chart's data lives on the image: map data coordinates to pixels."""

    left: int
    top: int
    right: int
    bottom: int
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    def px(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        sx = self.left + (np.asarray(x, np.float64) - x0) / ((x1 - x0) or 1.0) * (self.right - self.left)
        sy = self.bottom - (np.asarray(y, np.float64) - y0) / ((y1 - y0) or 1.0) * (self.bottom - self.top)
        return sx, sy


def _polyline(draw: ImageDraw.ImageDraw, axes: Axes, series: Series) -> None:
    sx, sy = axes.px(series.x, series.y)
    ok = np.isfinite(sx) & np.isfinite(sy)
    # Break the line at NaN/inf so a gap shows as a gap.
    starts = np.flatnonzero(ok & ~np.concatenate([[False], ok[:-1]]))
    for start in starts:
        end = start
        while end < len(ok) and ok[end]:
            end += 1
        points = list(zip(sx[start:end].tolist(), sy[start:end].tolist(), strict=True))
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=series.colour)
        else:
            draw.line(points, fill=series.colour, width=series.width, joint="curve")


def draw_chart(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    series: Sequence[Series],
    *,
    title: str = "",
    x_label: str = "",
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    legend: bool = True,
    text_size: int = 12,
) -> Axes:
    """Draw a titled line chart with grid, tick labels and a legend inside `box`; returns its Axes."""
    left, top, right, bottom = box
    small = font(text_size)
    draw.rectangle(box, fill=BACKGROUND)
    if xlim is None:
        xlim = padded_range(np.concatenate([s.x for s in series]).astype(np.float64)) if series else (0.0, 1.0)
    if ylim is None:
        ylim = padded_range(np.concatenate([s.y for s in series]).astype(np.float64)) if series else (-1.0, 1.0)
    y = top + 4
    if title:
        draw.text((left + 8, y), title, fill=AXIS, font=font(text_size + 2))
        y += text_size + 6
    if legend and series:
        x = left + 8
        for s in series:
            width = int(draw.textlength(s.label, font=small)) + 22
            if x + width > right - 4:
                x, y = left + 8, y + text_size + 4
            draw.rectangle([x, y + 3, x + 10, y + 3 + 8], fill=s.colour)
            draw.text((x + 14, y), s.label, fill=AXIS, font=small)
            x += width
        y += text_size + 4
    y_ticks = nice_ticks(*ylim)
    label_width = max((int(draw.textlength(format_tick(t), font=small)) for t in y_ticks), default=0)
    axes = Axes(
        left=left + label_width + 12,
        top=y + 6,
        right=right - 12,
        bottom=bottom - (2 * text_size + 14 if x_label else text_size + 12),
        xlim=xlim,
        ylim=ylim,
    )
    for t in y_ticks:
        _, py = axes.px(xlim[0], t)
        draw.line([(axes.left, float(py)), (axes.right, float(py))], fill=GRID)
        label = format_tick(t)
        draw.text((axes.left - 6 - draw.textlength(label, font=small), float(py) - text_size / 2), label, AXIS, small)
    for t in nice_ticks(*xlim, count=6):
        px, _ = axes.px(t, ylim[0])
        draw.line([(float(px), axes.top), (float(px), axes.bottom)], fill=GRID)
        label = format_tick(t)
        draw.text((float(px) - draw.textlength(label, font=small) / 2, axes.bottom + 4), label, AXIS, small)
    if x_label:
        width = draw.textlength(x_label, font=small)
        draw.text(((axes.left + axes.right - width) / 2, axes.bottom + text_size + 8), x_label, AXIS, small)
    draw.rectangle([axes.left, axes.top, axes.right, axes.bottom], outline=AXIS)
    for s in series:
        _polyline(draw, axes, s)
    return axes
