"""Rasterise a ground-truth :class:`~synthetic.scene.Scene` into a small RGB image.

Every shape is drawn once per pixel size at 4x resolution with PIL and box-filtered down to an
anti-aliased coverage mask (cached per process, built lazily on first use).  An object is composited
into the background with its mask; its pattern swaps a contrasting tone of its colour into fixed-period
stripes (horizontal, 1 px of every 3) or dots (2x2 px on a 4 px lattice), anchored at the object's
box so the pattern reads the same at every size.  The background is the scene's tint with a faint
linear gradient whose direction is a pure function of the scene id (no global RNG).
"""
from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from synthetic.scene import BACKGROUNDS, COLOURS, SHAPES, STREAM_TEXTURE, Obj, Scene

SUPERSAMPLE = 4
JPEG_QUALITY = 90

TEXTURE_AMPLITUDE = 12.0  # grey levels from the centre of the gradient to a corner
STRIPE_PERIOD, DOT_PERIOD = 3, 4

Polygon = list[tuple[float, float]]


# ----------------------------------------------------------------------------------------- outlines
def _regular(n: int, r: float, phase: float, cx: float = 0.5, cy: float = 0.5) -> Polygon:
    return [(cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star() -> Polygon:
    pts = []
    for k in range(10):
        r = 0.5 if k % 2 == 0 else 0.21
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((0.5 + r * math.cos(a), 0.54 + r * math.sin(a)))
    return pts


def _heart() -> Polygon:
    pts = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((0.5 + x / 34, 0.45 - y / 34))
    return pts


_CROSS = [(0.33, 0), (0.67, 0), (0.67, 0.33), (1, 0.33), (1, 0.67), (0.67, 0.67), (0.67, 1), (0.33, 1),
          (0.33, 0.67), (0, 0.67), (0, 0.33), (0.33, 0.33)]
_ARROW = [(0, 0.34), (0.5, 0.34), (0.5, 0.05), (1, 0.5), (0.5, 0.95), (0.5, 0.66), (0, 0.66)]


def _draw_unit(draw: ImageDraw.ImageDraw, shape: str, s: float) -> None:
    """Draw ``shape`` filling a square canvas of side ``s`` (coordinates in units of the side)."""
    def poly(points: Polygon) -> None:
        draw.polygon([(x * s, y * s) for x, y in points], fill=255)

    box = [0, 0, s - 1, s - 1]
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        draw.ellipse([0.3 * s, 0.3 * s, 0.7 * s - 1, 0.7 * s - 1], fill=0)
    elif shape == "crescent":
        draw.ellipse(box, fill=255)
        draw.ellipse([0.32 * s, -0.08 * s, 1.2 * s, 0.8 * s], fill=0)
    elif shape == "square":
        draw.rectangle([0.06 * s, 0.06 * s, 0.94 * s - 1, 0.94 * s - 1], fill=255)
    else:
        poly(_OUTLINES[shape]())


_OUTLINES = {
    "triangle": lambda: [(0.5, 0.02), (1.0, 0.95), (0.0, 0.95)],
    "diamond": lambda: [(0.5, 0), (0.92, 0.5), (0.5, 1), (0.08, 0.5)],
    "hexagon": lambda: _regular(6, 0.5, 0.0),
    "pentagon": lambda: _regular(5, 0.52, -math.pi / 2, cy=0.56),
    "star": _star,
    "heart": _heart,
    "cross": lambda: _CROSS,
    "arrow": lambda: _ARROW,
}


@lru_cache(maxsize=None)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Anti-aliased coverage of ``shape`` in a ``side`` x ``side`` box, float32 in [0, 1], shape (side, side, 1)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    big = side * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    _draw_unit(ImageDraw.Draw(canvas), shape, big)
    small = np.asarray(canvas, dtype=np.float32).reshape(side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(1, 3))
    return (small / 255.0)[:, :, None]


def _interior(shape: str, side: int) -> np.ndarray:
    """Pixels fully inside the shape whose 4 neighbours are too: a 1 px rim keeps the silhouette."""
    full = np.pad(shape_mask(shape, side)[:, :, 0] > 0.5, 1)
    return full[1:-1, 1:-1] & full[:-2, 1:-1] & full[2:, 1:-1] & full[1:-1, :-2] & full[1:-1, 2:]


@lru_cache(maxsize=None)
def pattern_mask(pattern: str, shape: str, side: int) -> np.ndarray:
    """Where the contrasting tone goes inside ``shape``: bool (side, side, 1); all False for "plain"."""
    yy, xx = np.mgrid[0:side, 0:side]
    if pattern == "plain":
        mask = np.zeros((side, side), bool)
    elif pattern == "striped":
        mask = yy % STRIPE_PERIOD == 1
    elif pattern == "dotted":
        mask = (yy % DOT_PERIOD >= 1) & (yy % DOT_PERIOD <= 2) & (xx % DOT_PERIOD >= 1) & (xx % DOT_PERIOD <= 2)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return (mask & _interior(shape, side))[:, :, None]


@lru_cache(maxsize=None)
def contrast_tone(colour: str) -> tuple[float, float, float]:
    """A tone of ``colour`` far enough in lightness to read as a pattern but keep the hue."""
    rgb = np.array(COLOURS[colour], np.float32)
    luma = float(rgb @ np.array([0.299, 0.587, 0.114], np.float32))
    tone = rgb * 0.3 if luma > 110 else rgb + (255 - rgb) * 0.6
    return tuple(float(v) for v in tone)


# ----------------------------------------------------------------------------------------- rendering
@lru_cache(maxsize=64)
def _gradient_basis(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = (size - 1) / 2
    return (xx - centre) / max(centre, 1), (yy - centre) / max(centre, 1)


def background(scene: Scene, texture: bool = True) -> np.ndarray:
    """The scene's tint as float32 (H, W, 3), with a faint gradient when ``texture``."""
    size = scene.image_size
    tint = np.array(BACKGROUNDS[scene.background], np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = tint
    if texture:
        angle = np.random.default_rng((STREAM_TEXTURE, scene.scene_id)).random() * 2 * math.pi
        gx, gy = _gradient_basis(size)
        shade = (math.cos(angle) * gx + math.sin(angle) * gy) * (TEXTURE_AMPLITUDE / math.sqrt(2))
        img += shade[:, :, None]
    return img


def draw_object(img: np.ndarray, obj: Obj) -> None:
    """Composite one object into ``img`` (float32 H x W x 3) in place, clipped to the canvas."""
    x, y, w, h = obj.box
    side = min(w, h)
    alpha = shape_mask(obj.shape, side)
    fill = np.where(pattern_mask(obj.pattern, obj.shape, side), np.float32(contrast_tone(obj.colour)),
                    np.array(COLOURS[obj.colour], np.float32))
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + side, img.shape[0]), min(x + side, img.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    sy, sx = slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)
    region = img[y0:y1, x0:x1]
    a = alpha[sy, sx]
    region += a * (fill[sy, sx] - region)


def render_array(scene: Scene, texture: bool = True) -> np.ndarray:
    """The scene as uint8 (H, W, 3)."""
    img = background(scene, texture)
    for obj in scene.objects:
        draw_object(img, obj)
    np.clip(img, 0, 255, out=img)
    return (img + 0.5).astype(np.uint8)


def render_scene(scene: Scene, texture: bool = True) -> Image.Image:
    """RGB image of ``scene`` (``scene.image_size`` square); a pure function of the scene."""
    return Image.fromarray(render_array(scene, texture), "RGB")


def encode_jpeg(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG, 4:4:4 (no chroma subsampling, so thin stripes keep their colour), no metadata.

    libjpeg is deterministic for fixed settings, so the same image always gives the same bytes.
    """
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality, subsampling=0, optimize=False, progressive=False)
    return out.getvalue()
