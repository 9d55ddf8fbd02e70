"""Drawing the synthetic shapes: backgrounds, shape outlines, anti-aliased coverage and the
solid or textured fills (one image per (spec, index), from its own seeded generator).

Split from :mod:`.shapes` (the cache folders and registration; the spec is :mod:`.shapes_spec`)
so that the glyphs pre-text task (:mod:`.glyphs`) can draw on the same backgrounds. Changing
anything here changes the images: bump ``shapes._VERSION`` then.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

from .shapes_spec import FILLS, THING_CLASSES, ShapesSpec

__all__ = [
    "FILLS",
    "THING_CLASSES",
    "background",
    "paint_dots_rings",
    "paint_solid",
    "paint_texture",
    "render",
    "upsample",
]

SUPERSAMPLE = 4  # sub-pixel factor for anti-aliased edges and exact 50%-coverage masks


def upsample(low: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small (ly, lx, C) grid to (h, w, C); smooth blotchy textures."""
    ly, lx = low.shape[:2]
    ys, xs = np.linspace(0, ly - 1, h), np.linspace(0, lx - 1, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, ly - 1), np.minimum(x0 + 1, lx - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    rows = low[y0] * (1 - fy) + low[y1] * fy
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient base plus one of: nothing, stripes, checkerboard, blotches; then pixel noise."""
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    t = x * math.cos(theta) + y * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    kind = int(rng.integers(4))
    if kind in (1, 2):
        if kind == 1:
            period, phase, ang = (
                rng.uniform(6, 32),
                rng.uniform(0, 2 * math.pi),
                rng.uniform(0, math.pi),
            )
            u = x * math.cos(ang) + y * math.sin(ang)
            pattern = np.sin(u * (2 * math.pi / period) + phase) > 0
        else:
            cell = int(rng.integers(6, 33))
            ox, oy = (int(v) for v in rng.integers(0, cell, size=2))
            pattern = (((x.astype(int) + ox) // cell + (y.astype(int) + oy) // cell) % 2) == 1
        c2 = rng.uniform(0, 255, size=3).astype(np.float32)
        alpha = np.float32(rng.uniform(0.25, 0.7))
        img = np.where(pattern[..., None], img * (1 - alpha) + c2 * alpha, img)
    elif kind == 3:
        cell = int(rng.integers(8, 33))
        low = rng.normal(0, rng.uniform(15, 45), size=(h // cell + 2, w // cell + 2, 3))
        img = img + upsample(low.astype(np.float32), h, w)
    sigma = rng.uniform(0, 10)
    return img + rng.normal(0, sigma, size=(h, w, 3)).astype(np.float32)


def shape_polygon(rng: np.random.Generator, cls: int, h: int, w: int,
                  scale: Tuple[float, float] = (0.12, 0.45)) -> List[Tuple[float, float]]:
    """Vertices (pixel units) of a random rectangle (0), ellipse (1) or triangle (2), its first
    side ``scale`` (a range) of the image's shorter side."""
    a = rng.uniform(*scale) * min(h, w)
    b = a * rng.uniform(0.5, 1.5)
    cx, cy = rng.uniform(0.08, 0.92) * w, rng.uniform(0.08, 0.92) * h
    if cls == 0:
        angle = 0.0 if rng.uniform() < 0.5 else rng.uniform(0, math.pi)
        local = [(-a / 2, -b / 2), (a / 2, -b / 2), (a / 2, b / 2), (-a / 2, b / 2)]
    elif cls == 1:
        angle = 0.0  # ellipses stay axis-aligned
        n = 48
        local = [
            (a / 2 * math.cos(2 * math.pi * i / n), b / 2 * math.sin(2 * math.pi * i / n))
            for i in range(n)
        ]
    else:
        angle = rng.uniform(0, 2 * math.pi)
        apex = rng.uniform(-a / 2, a / 2)
        local = [(-a / 2, b / 2), (a / 2, b / 2), (apex, -b / 2)]
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + px * ca - py * sa, cy + px * sa + py * ca) for px, py in local]


def coverage(
    points: List[Tuple[float, float]], h: int, w: int
) -> Optional[Tuple[int, int, np.ndarray]]:
    """Fractional pixel coverage of a polygon, clipped to the image, on its bounding region.

    Returns (y0, x0, coverage[hh, ww] in [0, 1]) or None if the polygon misses the image.
    """
    from PIL import Image, ImageDraw

    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = max(int(math.floor(min(xs))), 0), min(int(math.ceil(max(xs))), w)
    y0, y1 = max(int(math.floor(min(ys))), 0), min(int(math.ceil(max(ys))), h)
    if x1 <= x0 or y1 <= y0:
        return None
    s = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    # supersample pixel j has its center at (j + 0.5) / s in image pixel units
    scaled = [((px - x0) * s - 0.5, (py - y0) * s - 0.5) for px, py in points]
    ImageDraw.Draw(canvas).polygon(scaled, fill=255)
    arr = np.asarray(canvas, dtype=np.float32).reshape(y1 - y0, s, x1 - x0, s)
    return y0, x0, arr.mean(axis=(1, 3)) / 255.0


def render(spec: ShapesSpec, index: int) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, int]]]:
    """Render image ``index``: (RGB uint8 image, owner map int16 (-1 = bg), [(class, area)]).

    Later objects occlude earlier ones; an object is re-placed (or skipped) if it would leave an
    earlier one with fewer than ``min_visible_area`` pixels or under 25% of its own area visible,
    so every painted object is annotated and every annotation is clearly visible.
    """
    rng = np.random.default_rng([spec.seed, index])
    h, w = (int(v) for v in rng.integers(spec.min_size, spec.max_size + 1, size=2))
    img = background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int16)
    classes: List[int] = []
    full_area: List[int] = []
    visible: List[int] = []
    num_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    for obj in range(num_objects):
        for _attempt in range(40 if obj == 0 else 8):
            cls = int(rng.integers(len(THING_CLASSES)))
            cov_info = coverage(shape_polygon(rng, cls, h, w, spec.object_scale), h, w)
            if cov_info is None:
                continue
            y0, x0, cov = cov_info
            mask = cov >= 0.5
            area = int(mask.sum())
            if area < spec.min_visible_area:
                continue
            region = owner[y0 : y0 + cov.shape[0], x0 : x0 + cov.shape[1]]
            hidden = np.bincount(region[mask] + 1, minlength=len(classes) + 1)[1:]
            remaining = np.asarray(visible, dtype=np.int64) - hidden
            need = np.maximum(spec.min_visible_area, 0.25 * np.asarray(full_area, dtype=np.float64))
            if np.any(remaining < need):
                continue
            region[mask] = len(classes)
            visible = [int(v) for v in remaining] + [area]
            classes.append(cls)
            full_area.append(area)
            PAINTERS[spec.fill](rng, img, y0, x0, cov)
            break
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return image, owner, list(zip(classes, visible))


def paint_solid(
    rng: np.random.Generator, img: np.ndarray, y0: int, x0: int, cov: np.ndarray
) -> None:
    """Alpha-blend a shaded, slightly noisy object color into ``img`` using coverage ``cov``."""
    hh, ww = cov.shape
    patch = img[y0 : y0 + hh, x0 : x0 + ww]
    under = patch[cov >= 0.5].mean(axis=0)
    for _ in range(6):  # prefer colors that stand out from what lies underneath
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.abs(color - under).sum() > 120:
            break
    gy, gx = rng.uniform(-0.25, 0.25, size=2)
    v = np.linspace(-1, 1, hh, dtype=np.float32)[:, None]
    u = np.linspace(-1, 1, ww, dtype=np.float32)[None, :]
    shade = 1 + np.float32(gx) * u + np.float32(gy) * v
    texture = color * shade[..., None] + rng.normal(0, 4, size=(hh, ww, 3)).astype(np.float32)
    alpha = cov[..., None]
    patch[...] = patch * (1 - alpha) + texture * alpha


def _matched_pair(rng: np.random.Generator, under: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A two-colour pattern's mean (near ``under``, what lies beneath) and its half step (a
    strong one): only the pattern, not the colour, sets the object apart."""
    step = rng.normal(0, 1, size=3).astype(np.float32)
    step *= rng.uniform(50, 80) / max(float(np.linalg.norm(step)), 1e-6)
    mean = under + rng.normal(0, 12, size=3).astype(np.float32)
    return mean, step


def _blend_pattern(rng: np.random.Generator, patch: np.ndarray, cov: np.ndarray,
                   mean: np.ndarray, step: np.ndarray, pattern: np.ndarray) -> None:
    """Alpha-blend ``mean + step`` where ``pattern`` holds, ``mean - step`` elsewhere."""
    hh, ww = cov.shape
    sign = np.where(pattern, np.float32(1), np.float32(-1))[..., None]
    texture = mean + sign * step + rng.normal(0, 4, size=(hh, ww, 3)).astype(np.float32)
    alpha = cov[..., None]
    patch[...] = patch * (1 - alpha) + texture * alpha


def paint_texture(
    rng: np.random.Generator, img: np.ndarray, y0: int, x0: int, cov: np.ndarray
) -> None:
    """Alpha-blend fine stripes or checks into ``img``: two colours a strong step apart whose
    mean is near what lies underneath, so the object's texture, not its colour, sets it apart."""
    hh, ww = cov.shape
    patch = img[y0 : y0 + hh, x0 : x0 + ww]
    mean, step = _matched_pair(rng, patch[cov >= 0.5].mean(axis=0))
    y = np.arange(hh, dtype=np.float32)[:, None] + y0
    x = np.arange(ww, dtype=np.float32)[None, :] + x0
    if rng.uniform() < 0.5:
        period, angle = rng.uniform(3, 7), rng.uniform(0, math.pi)
        u = x * math.cos(angle) + y * math.sin(angle)
        pattern = np.sin(u * (2 * math.pi / period)) > 0
    else:
        cell = int(rng.integers(2, 5))
        pattern = ((x.astype(int) // cell + y.astype(int) // cell) % 2) == 1
    _blend_pattern(rng, patch, cov, mean, step, pattern)


def paint_dots_rings(
    rng: np.random.Generator, img: np.ndarray, y0: int, x0: int, cov: np.ndarray
) -> None:
    """Alpha-blend dots on a square lattice or rings about the object's centre into ``img``,
    colour-matched as :func:`paint_texture`'s fill is: textures that the glyph pre-text drew
    (it kept out only fine stripes and checks), unlike the "far" regime's."""
    hh, ww = cov.shape
    patch = img[y0 : y0 + hh, x0 : x0 + ww]
    mean, step = _matched_pair(rng, patch[cov >= 0.5].mean(axis=0))
    y = np.arange(hh, dtype=np.float32)[:, None]
    x = np.arange(ww, dtype=np.float32)[None, :]
    period = rng.uniform(3, 6)
    if rng.uniform() < 0.5:
        radius = period * rng.uniform(0.25, 0.4)
        ox, oy = rng.uniform(0, period, size=2)
        dx, dy = (x + ox) % period - period / 2, (y + oy) % period - period / 2
        pattern = dx * dx + dy * dy <= radius * radius
    else:
        ys, xs = np.nonzero(cov >= 0.5)
        pattern = np.sin(np.hypot(x - xs.mean(), y - ys.mean()) * (2 * math.pi / period)) > 0
    _blend_pattern(rng, patch, cov, mean, step, pattern)


PAINTERS = {"solid": paint_solid, "texture": paint_texture, "dots_rings": paint_dots_rings}
