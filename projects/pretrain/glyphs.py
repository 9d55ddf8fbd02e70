"""The 16 glyphs of the first pre-text task, drawn as polygons: the first classes of the glyph
scenes (:mod:`projects.pretrain.pretext`).

None of them is a rectangle, ellipse or triangle, the classes of the shapes datasets, so that
a trunk pre-trained on them must still be adapted downstream. The first pre-text itself (one
glyph among clutter, the shipped ``swin_glyphs`` trunk's task) was drawn by ``render_glyph`` of
``e3va_d2/data/glyphs.py`` as it was at c107f8d; nothing uses it since the scenes replaced it.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["GLYPH_CLASSES", "glyph_parts", "place_parts", "regular_polygon"]

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
        return [(regular_polygon(40, r), True),
                (regular_polygon(40, r * rng.uniform(0.45, 0.65)), False)]
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
