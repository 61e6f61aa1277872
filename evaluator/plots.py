"""PNG plots of a results.json, drawn with PIL (matplotlib is not a dependency of this project).

``r1_by_task.png``: grouped bars of R@1 per task (and the average) per head, chance as a dashed line.
``recall_at_k.png``: one panel per task, R@k for k = 1, 2, 3 per head.
"""
from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw, ImageFont

from evaluator.tasks import TASKS
from evaluator.report import TASK_TITLES, head_title, ordered_heads

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
GRID, AXIS, TEXT = (225, 225, 225), (60, 60, 60), (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above ``value`` (at least 1)."""
    value = max(value, 1.0)
    exp = 10 ** math.floor(math.log10(value))
    return next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= value)


class Panel:
    """A plot area inside an image: maps data (x in [0, 1], y in [0, ymax]) to pixels and draws axes."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], ymax: float, title: str):
        self.draw, self.box, self.ymax = draw, box, ymax
        left, top, right, bottom = box
        draw.text(((left + right) / 2, top - 22), title, fill=TEXT, font=_font(15), anchor="mm")
        for i in range(6):
            y = ymax * i / 5
            py = self.y(y)
            draw.line([(left, py), (right, py)], fill=GRID)
            draw.text((left - 6, py), f"{y:g}", fill=TEXT, font=_font(12), anchor="rm")
        draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS, width=2)

    def x(self, frac: float) -> float:
        left, _, right, _ = self.box
        return left + frac * (right - left)

    def y(self, value: float) -> float:
        _, top, _, bottom = self.box
        return bottom - (min(value, self.ymax) / self.ymax) * (bottom - top)

    def xlabel(self, frac: float, text: str) -> None:
        self.draw.text((self.x(frac), self.box[3] + 14), text, fill=TEXT, font=_font(12), anchor="mm")


def _dashed(draw: ImageDraw.ImageDraw, x0: float, x1: float, y: float) -> None:
    for x in range(int(x0), int(x1), 8):
        draw.line([(x, y), (min(x + 4, x1), y)], fill=AXIS, width=2)


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, labels: list[str], chance: bool = False) -> None:
    for i, label in enumerate(labels):
        draw.rectangle([x, y + 20 * i, x + 14, y + 20 * i + 14], fill=COLOURS[i % len(COLOURS)])
        draw.text((x + 20, y + 20 * i + 7), label, fill=TEXT, font=_font(13), anchor="lm")
    if chance:
        _dashed(draw, x, x + 16, y + 20 * len(labels) + 7)
        draw.text((x + 20, y + 20 * len(labels) + 7), "chance", fill=TEXT, font=_font(13), anchor="lm")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def r1_by_task_png(results: dict) -> bytes:
    heads = ordered_heads(results)
    tasks = [t for t in TASKS if t in results["tasks"]]
    groups = [*tasks, "average"]
    values = {h: [results["heads"][h][t]["r1"] for t in tasks] + [results["heads"][h]["average_r1"]]
              for h in heads}
    chance = [results["heads"][heads[0]][t]["chance_r1"] for t in tasks]
    ymax = _nice_max(max([v for vs in values.values() for v in vs] + chance) * 1.1)
    img = Image.new("RGB", (220 + 150 * len(groups), 460), "white")
    draw = ImageDraw.Draw(img)
    panel = Panel(draw, (70, 50, 70 + 150 * len(groups), 400), ymax, "GeneCIS R@1 (%) per task")
    width = 0.8 / len(groups) / max(len(heads), 1)
    for g, group in enumerate(groups):
        start = (g + 0.1) / len(groups)
        for i, head in enumerate(heads):
            x0, x1 = panel.x(start + i * width), panel.x(start + (i + 1) * width) - 1
            draw.rectangle([x0, panel.y(values[head][g]), x1, panel.y(0)], fill=COLOURS[i % len(COLOURS)])
        if g < len(tasks):
            _dashed(draw, panel.x(start), panel.x(start + 0.8 / len(groups)), panel.y(chance[g]))
        panel.xlabel((g + 0.5) / len(groups), TASK_TITLES.get(group, "Average"))
    _legend(draw, panel.box[2] + 15, 60, [head_title(h, results) for h in heads], chance=True)
    return _png(img)


def recall_at_k_png(results: dict) -> bytes:
    heads = ordered_heads(results)
    tasks = [t for t in TASKS if t in results["tasks"]]
    ymax = _nice_max(max(results["heads"][h][t]["r3"] for h in heads for t in tasks) * 1.1)
    img = Image.new("RGB", (90 + 260 * len(tasks) + 150, 360), "white")
    draw = ImageDraw.Draw(img)
    for p, task in enumerate(tasks):
        left = 60 + 260 * p
        panel = Panel(draw, (left, 50, left + 210, 300), ymax, f"{TASK_TITLES[task]} R@k (%)")
        for k in (1, 2, 3):
            panel.xlabel((k - 0.5) / 3, f"k={k}")
        for i, head in enumerate(heads):
            pts = [(panel.x((k - 0.5) / 3), panel.y(results["heads"][head][task][f"r{k}"])) for k in (1, 2, 3)]
            colour = COLOURS[i % len(COLOURS)]
            draw.line(pts, fill=colour, width=3)
            for px, py in pts:
                draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
    _legend(draw, 60 + 260 * len(tasks), 60, [head_title(h, results) for h in heads])
    return _png(img)


def plots(results: dict) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` for a results dict."""
    return {"r1_by_task.png": r1_by_task_png(results), "recall_at_k.png": recall_at_k_png(results)}
