"""The overview's charts as geometry for inline SVG (drawn by the template): no library, no
script. A chart is rectangles with a colour and a tooltip, and a few axis labels."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pollen.dashboard.present import OUTCOME_COLOURS
from pollen.store.stats import Minute

WIDTH, HEIGHT, LEFT, BOTTOM = 720, 180, 36, 22


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    rects: list[Rect]
    labels: list[Label]
    gridlines: list[float]  #: y of each horizontal gridline
    empty: bool


def _scale_top(largest: int) -> int:
    """A round number at or above ``largest`` (1, 2, 5, 10, 20, 50, ...)."""
    top, steps = 1, (1, 2, 5)
    while True:
        for step in steps:
            if step * top >= largest:
                return step * top
        top *= 10


def finished_per_minute(minutes: Sequence[Minute]) -> Chart:
    """Stacked bars: jobs that ended in each minute, one colour per outcome."""
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - 8
    top = _scale_top(max((m.total for m in minutes), default=0) or 1)
    slot = plot_w / max(len(minutes), 1)
    rects: list[Rect] = []
    labels = [Label(LEFT - 4, 8 + 4, str(top), "end"), Label(LEFT - 4, 8 + plot_h + 4, "0", "end")]
    for i, minute in enumerate(minutes):
        x, base = LEFT + i * slot, float(8 + plot_h)
        when = time.strftime("%H:%M", time.gmtime(minute.start))
        for status in OUTCOME_COLOURS:
            count = minute.by_status.get(status, 0)
            if not count:
                continue
            height = plot_h * count / top
            base -= height
            title = f"{when} UTC: {count} {status}"
            colour = OUTCOME_COLOURS[status]
            rects.append(Rect(x + 1, base, max(slot - 2, 1), height, colour, title))
        if i == len(minutes) - 1:
            labels.append(Label(x + slot, HEIGHT - 6, when, "end"))
        elif i % 10 == 0 and i < len(minutes) - 5:
            labels.append(Label(x + slot / 2, HEIGHT - 6, when))
    gridlines = [8 + plot_h * f for f in (0, 0.5, 1)]
    return Chart(WIDTH, HEIGHT, rects, labels, gridlines, not rects)


def by_status(counts: Mapping[str, int], colours: Mapping[str, str]) -> Chart:
    """Horizontal bars: jobs in each state."""
    row, left, width = 22, 90, 420
    largest = max(counts.values(), default=0) or 1
    rects, labels = [], []
    for i, (status, count) in enumerate(counts.items()):
        y = 4 + i * row
        length = (width - left - 60) * count / largest
        rects.append(Rect(left, y, max(length, 1), row - 6, colours.get(status, "#4263eb"),
                          f"{count} {status}"))  # fmt: skip
        labels.append(Label(left - 6, y + row - 10, status, "end"))
        labels.append(Label(left + length + 6, y + row - 10, str(count), "start"))
    return Chart(width, 8 + row * len(counts), rects, labels, [], not counts)
