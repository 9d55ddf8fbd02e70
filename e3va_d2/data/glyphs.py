"""The "glyphs" pre-text task: classify one procedurally drawn glyph among clutter.

Why: no ImageNet checkpoint can be downloaded on the build machine, yet the accuracy half of the
paper (E3VA close to full fine-tuning, above a frozen trunk) only shows on a trunk that was
really pre-trained. This task pre-trains a small Swin on features that are general (edges,
corners, curvature, holes, symmetry, figure against textured ground) but not the downstream
answer: none of its 16 classes is a rectangle, ellipse or triangle, the classes of the shapes
datasets, and it has no boxes or masks. The features must still be adapted to detect and segment
shapes.

An image is a pure function of ``(seed, index)``, so any number of workers, restarts or machines
draw the same stream, and a split is a seed (``GLYPH_SPLITS``).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .shapes_render import background, paint_solid

__all__ = ["GLYPH_CLASSES", "GLYPH_SPLITS", "glyph_parts", "place_parts", "regular_polygon",
           "render_glyph", "GlyphStream"]

GLYPH_CLASSES: Tuple[str, ...] = (
    "pentagon",
    "hexagon",
    "octagon",
    "star5",
    "star7",
    "ring",
    "crescent",
    "plus",
    "arrow",
    "chevron",
    "l_shape",
    "t_shape",
    "heart",
    "frame",
    "bolt",
    "gear",
)
# Seeds of the splits; "val" is never trained on.
GLYPH_SPLITS: Dict[str, int] = {"train": 0, "val": 1}

_SUPERSAMPLE = 2
Polygon = List[Tuple[float, float]]


def regular_polygon(n: int, r: float, phase: float = 0.0) -> Polygon:
    return [(r * math.cos(phase + 2 * math.pi * i / n), r * math.sin(phase + 2 * math.pi * i / n))
            for i in range(n)]


def _star(n: int, r: float, inner: float) -> Polygon:
    pts = []
    for i in range(2 * n):
        rad = r if i % 2 == 0 else r * inner
        a = math.pi * i / n - math.pi / 2
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


def glyph_parts(rng: np.random.Generator, name: str, r: float) -> List[Tuple[Polygon, bool]]:
    """Polygons of glyph ``name`` (local coordinates, radius ~``r``) as (points, filled) in
    drawing order; an unfilled polygon cuts a hole into what was drawn before."""
    t = r * rng.uniform(0.28, 0.42)  # stroke width of line-like glyphs
    if name in ("pentagon", "hexagon", "octagon"):
        return [(regular_polygon({"pentagon": 5, "hexagon": 6, "octagon": 8}[name], r), True)]
    if name == "star5":
        return [(_star(5, r, rng.uniform(0.38, 0.5)), True)]
    if name == "star7":
        return [(_star(7, r, rng.uniform(0.5, 0.62)), True)]
    if name == "ring":
        return [(regular_polygon(40, r), True), (regular_polygon(40, r * rng.uniform(0.45, 0.65)), False)]
    if name == "crescent":
        off = r * rng.uniform(0.35, 0.55)
        inner = [(x + off, y) for x, y in regular_polygon(40, r * rng.uniform(0.8, 0.95))]
        return [(regular_polygon(40, r), True), (inner, False)]
    if name == "plus":
        a = t / 2
        return [([(-r, -a), (r, -a), (r, a), (-r, a)], True),
                ([(-a, -r), (a, -r), (a, r), (-a, r)], True)]
    if name == "arrow":
        a, head = t / 2, r * 0.45
        return [([(-r, -a), (r - head, -a), (r - head, -2.2 * a), (r, 0.0), (r - head, 2.2 * a),
                  (r - head, a), (-r, a)], True)]
    if name == "chevron":
        return [([(-r, -r), (-r + t, -r), (t * 0.5, 0.0), (-r + t, r), (-r, r),
                  (-t * 0.5, 0.0)], True)]
    if name == "l_shape":
        return [([(-r, -r), (-r + t, -r), (-r + t, r - t), (r, r - t), (r, r), (-r, r)], True)]
    if name == "t_shape":
        a = t / 2
        return [([(-r, -r), (r, -r), (r, -r + t), (a, -r + t), (a, r), (-a, r), (-a, -r + t),
                  (-r, -r + t)], True)]
    if name == "heart":
        pts = []
        for i in range(48):
            s = 2 * math.pi * i / 48
            x = 16 * math.sin(s) ** 3
            y = -(13 * math.cos(s) - 5 * math.cos(2 * s) - 2 * math.cos(3 * s) - math.cos(4 * s))
            pts.append((x * r / 17, y * r / 17))
        return [(pts, True)]
    if name == "frame":
        inner = r - t * 0.8
        return [([(-r, -r), (r, -r), (r, r), (-r, r)], True),
                ([(-inner, -inner), (inner, -inner), (inner, inner), (-inner, inner)], False)]
    if name == "bolt":
        return [([(-0.2 * r, -r), (0.55 * r, -r), (0.1 * r, -0.1 * r), (0.6 * r, -0.1 * r),
                  (-0.4 * r, r), (-0.05 * r, 0.15 * r), (-0.6 * r, 0.15 * r)], True)]
    if name == "gear":
        teeth, pts = int(rng.integers(8, 11)), []
        for i in range(teeth * 4):
            rad = r if (i // 2) % 2 == 0 else r * 0.75
            a = 2 * math.pi * i / (teeth * 4)
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return [(pts, True), (regular_polygon(24, r * 0.3), False)]
    raise ValueError(f"unknown glyph {name!r}")


def place_parts(parts: Sequence[Tuple[Polygon, bool]], cx: float, cy: float, angle: float,
                sx: float, sy: float) -> List[Tuple[Polygon, bool]]:
    """Parts scaled by (sx, sy), rotated by ``angle`` and moved to (cx, cy)."""
    ca, sa = math.cos(angle), math.sin(angle)
    return [([(cx + (x * sx) * ca - (y * sy) * sa, cy + (x * sx) * sa + (y * sy) * ca)
              for x, y in points], filled) for points, filled in parts]


def _coverage(parts: Sequence[Tuple[Polygon, bool]], size: int) -> np.ndarray:
    """Anti-aliased (size, size) coverage in [0, 1] of polygons drawn in order (holes cut)."""
    from PIL import Image, ImageDraw

    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    for points, filled in parts:
        draw.polygon([(x * s - 0.5, y * s - 0.5) for x, y in points], fill=255 if filled else 0)
    # BOX downsampling averages each s x s block: the pixel's covered fraction.
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _clutter(rng: np.random.Generator, size: int) -> List[Tuple[Polygon, bool]]:
    """A thin line or a small dot: marks that belong to no class."""
    if rng.uniform() < 0.5:
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        w = rng.uniform(0.6, 2.0)
        length = max(math.hypot(x1 - x0, y1 - y0), 1e-3)
        nx, ny = -(y1 - y0) / length * w, (x1 - x0) / length * w
        return [([(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)],
                 True)]
    cx, cy = rng.uniform(0, size, size=2)
    return [([(cx + x, cy + y) for x, y in regular_polygon(10, rng.uniform(1.5, 4.0))], True)]


def _paint_visible(rng: np.random.Generator, img: np.ndarray, cov: np.ndarray) -> None:
    """Paint coverage ``cov`` (on its bounding box), unless no pixel is half covered."""
    rows, cols = np.flatnonzero(cov.max(axis=1) >= 0.5), np.flatnonzero(cov.max(axis=0) >= 0.5)
    if rows.size:
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        paint_solid(rng, img, y0, x0, cov[y0:y1, x0:x1])


def render_glyph(seed: int, index: int, size: int = 112) -> Tuple[np.ndarray, int, np.ndarray]:
    """Image ``index`` of the stream ``seed``: (RGB uint8 (size, size, 3), class index, the
    glyph's pixel coverage float32 (size, size) in [0, 1]).

    One glyph of a random class, rotation, aspect (0.75-1.33), scale (radius 18-45% of the
    image) and color over a textured background (the shapes datasets' backgrounds), with 0-5
    clutter marks, some drawn over the glyph.
    """
    rng = np.random.default_rng([seed, index])
    cls = int(rng.integers(len(GLYPH_CLASSES)))
    img = background(rng, size, size)
    marks = int(rng.integers(0, 4))
    under = int(rng.integers(0, marks + 1))
    for _ in range(under):
        _paint_visible(rng, img, _coverage(_clutter(rng, size), size))
    r = rng.uniform(0.25, 0.45) * size
    aspect = math.exp(rng.uniform(-0.29, 0.29))
    cx, cy = rng.uniform(r, size - r, size=2) if r < size / 2 else (size / 2, size / 2)
    parts = place_parts(glyph_parts(rng, GLYPH_CLASSES[cls], r), cx, cy,
                        rng.uniform(0, 2 * math.pi), aspect, 1 / aspect)
    glyph = _coverage(parts, size)
    _paint_visible(rng, img, glyph)
    for _ in range(marks - under):
        _paint_visible(rng, img, _coverage(_clutter(rng, size), size))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), cls, glyph


class GlyphStream:
    """Map-style dataset of ``length`` glyph images of one seed, as (CHW float32 0-255, label,
    coverage HW float32).

    A ``torch.utils.data.Dataset`` by duck typing: index it, or hand it to a ``DataLoader``.
    """

    def __init__(self, seed: int, length: int, size: int = 112):
        self.seed, self.length, self.size = int(seed), int(length), int(size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import torch

        if not 0 <= index < self.length:
            raise IndexError(index)
        image, label, coverage = render_glyph(self.seed, index, self.size)
        return torch.from_numpy(image).permute(2, 0, 1).float(), label, torch.from_numpy(coverage)
