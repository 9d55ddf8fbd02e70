"""The "glyph scenes" pre-text task: a broad synthetic stand-in for ImageNet pre-training.

Why: no ImageNet checkpoint can be downloaded on the build machine, and a trunk pre-trained on
one narrow task (16 solid glyphs) gave features too weak to tell whether a gap between tuning
methods is theirs or the trunk's. A scene here holds one main glyph of :data:`SCENE_CLASSES`
(36 classes) drawn in one of :data:`STYLES` (solid, outlined, four textures, gradient) at a
strong range of scales, aspects, rotations and colours, plus smaller distractor glyphs (under
or over it) and clutter, over the shapes datasets' backgrounds. The targets are the main
glyph's class and style (image labels) and, per pixel, the class and style of the visible
glyph (dense labels), so the trunk learns shape, texture, figure/ground and several objects
per image.

Kept out on purpose, so that downstream tasks still need adapting: the downstream classes
(no rectangle, square, ellipse, circle or triangle is a class here), boxes and instance masks,
and fine stripes or checks as an object's fill (the "far" regime's texture; the backgrounds
keep the coarse stripes and checks the shapes datasets also draw under their objects).

An image is a pure function of ``(seed, index)``, so workers, restarts and machines draw the
same stream; a split is a seed (:data:`SCENE_SPLITS`).
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Tuple

import numpy as np

from e3va_d2.data.shapes_render import background, paint_solid, upsample
from projects.pretrain.glyphs import (
    GLYPH_CLASSES,
    Polygon,
    glyph_parts,
    place_parts,
    regular_polygon,
)

__all__ = ["SCENE_CLASSES", "STYLES", "SCENE_SPLITS", "Scene", "render_scene", "token_labels",
           "SceneStream"]

# The 16 glyphs of the first pre-text, then 20 more; none is a downstream class.
SCENE_CLASSES: Tuple[str, ...] = GLYPH_CLASSES + (
    "star4", "star6", "u_shape", "h_shape", "e_shape", "s_band", "hourglass", "teardrop",
    "flower", "trefoil", "cloud", "target", "keyhole", "wave", "spiral", "arch", "dumbbell",
    "hash", "equals", "pacman",
)
STYLES: Tuple[str, ...] = ("solid", "outline", "dots", "grain", "rings", "blotch", "gradient")
SCENE_SPLITS: Dict[str, int] = {"train": 100, "val": 101}  # seeds; "val" is never trained on
BACKGROUND = -1  # label of pixels no glyph covers

_SUPERSAMPLE = 2


class Scene(NamedTuple):
    """One rendered scene: the image and its labels."""

    image: np.ndarray  # (size, size, 3) uint8 RGB
    label: int  # main glyph's class
    style: int  # main glyph's style
    class_map: np.ndarray  # (size, size) int16: class of the visible glyph, BACKGROUND elsewhere
    style_map: np.ndarray  # (size, size) int16: its style, BACKGROUND elsewhere


def _band(path: List[Tuple[float, float]], width: float) -> Polygon:
    """A polygon around a polyline, ``width`` thick (for line-like glyphs)."""
    left, right = [], []
    for k, (x, y) in enumerate(path):
        (xa, ya), (xb, yb) = path[max(k - 1, 0)], path[min(k + 1, len(path) - 1)]
        dx, dy = xb - xa, yb - ya
        norm = max(math.hypot(dx, dy), 1e-6)
        nx, ny = -dy / norm * width / 2, dx / norm * width / 2
        left.append((x + nx, y + ny))
        right.append((x - nx, y - ny))
    return left + right[::-1]


def _polar(r_of_angle, n: int = 72) -> Polygon:
    return [(r_of_angle(a) * math.cos(a), r_of_angle(a) * math.sin(a))
            for a in (2 * math.pi * i / n for i in range(n))]


def _disc(cx: float, cy: float, r: float) -> Polygon:
    return [(cx + x, cy + y) for x, y in regular_polygon(32, r)]


def _bar(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def scene_glyph(rng: np.random.Generator, name: str, r: float) -> List[Tuple[Polygon, bool]]:
    """Parts ``(polygon, filled)`` of glyph ``name`` at radius ~``r`` (local coordinates); an
    unfilled part cuts a hole into what came before."""
    if name in GLYPH_CLASSES:
        return glyph_parts(rng, name, r)
    t = r * rng.uniform(0.28, 0.42)  # stroke width of line-like glyphs
    a = t / 2
    if name in ("star4", "star6"):
        n, inner = (4, rng.uniform(0.3, 0.42)) if name == "star4" else (6, rng.uniform(0.48, 0.6))
        return [([((r if i % 2 == 0 else r * inner) * math.cos(math.pi * i / n),
                   (r if i % 2 == 0 else r * inner) * math.sin(math.pi * i / n))
                  for i in range(2 * n)], True)]
    if name == "u_shape":
        return [([(-r, -r), (-r + t, -r), (-r + t, r - t), (r - t, r - t), (r - t, -r), (r, -r),
                  (r, r), (-r, r)], True)]
    if name == "h_shape":
        return [(_bar(-r, -r, -r + t, r), True), (_bar(r - t, -r, r, r), True),
                (_bar(-r, -a, r, a), True)]
    if name == "e_shape":
        return [(_bar(-r, -r, -r + t, r), True), (_bar(-r, -r, r, -r + t), True),
                (_bar(-r, -a, r * 0.7, a), True), (_bar(-r, r - t, r, r), True)]
    if name == "s_band":
        path = [(r * 0.8 * math.sin(s), -r + 2 * r * k / 40)
                for k, s in enumerate(np.linspace(-math.pi, math.pi, 41))]
        return [(_band(path, t), True)]
    if name == "hourglass":
        w = r * rng.uniform(0.12, 0.25)
        return [([(-r, -r), (r, -r), (w, 0.0), (r, r), (-r, r), (-w, 0.0)], True)]
    if name == "teardrop":
        return [(_polar(lambda ang: r * (0.55 + 0.45 * abs(math.sin(ang / 2)) ** 4)), True)]
    if name == "flower":
        petals = int(rng.integers(5, 7))
        return [(_polar(lambda ang: r * (0.45 + 0.55 * abs(math.cos(petals * ang / 2)))), True)]
    if name == "trefoil":
        return [(_disc(r * 0.5 * math.cos(k * 2 * math.pi / 3 - math.pi / 2),
                       r * 0.5 * math.sin(k * 2 * math.pi / 3 - math.pi / 2), r * 0.5), True)
                for k in range(3)]
    if name == "cloud":
        return [(_disc(-r * 0.5, r * 0.2, r * 0.45), True),
                (_disc(r * 0.5, r * 0.2, r * 0.45), True),
                (_disc(0.0, -r * 0.15, r * 0.6), True),
                (_bar(-r * 0.5, r * 0.2, r * 0.5, r * 0.65), True)]
    if name == "target":
        return [(regular_polygon(40, r), True), (regular_polygon(40, r * 0.68), False),
                (regular_polygon(32, r * 0.36), True)]
    if name == "keyhole":
        return [(_disc(0.0, -r * 0.35, r * 0.55), True),
                ([(-r * 0.22, -r * 0.2), (r * 0.22, -r * 0.2), (r * 0.5, r), (-r * 0.5, r)], True)]
    if name == "wave":
        path = [(x, r * 0.35 * math.sin(2.5 * math.pi * x / r)) for x in np.linspace(-r, r, 41)]
        return [(_band(path, t), True)]
    if name == "spiral":
        path = [(r * (0.2 + 0.8 * u) * math.cos(4 * math.pi * u),
                 r * (0.2 + 0.8 * u) * math.sin(4 * math.pi * u))
                for u in np.linspace(0, 1, 60)]
        return [(_band(path, t * 0.6), True)]
    if name == "arch":
        outer = [(r * math.cos(s), -r * math.sin(s) + r * 0.4) for s in np.linspace(0, math.pi, 25)]
        inner = [(r * 0.55 * math.cos(s), -r * 0.55 * math.sin(s) + r * 0.4)
                 for s in np.linspace(math.pi, 0, 25)]
        return [(outer + inner, True)]
    if name == "dumbbell":
        return [(_disc(-r * 0.62, 0.0, r * 0.38), True), (_disc(r * 0.62, 0.0, r * 0.38), True),
                (_bar(-r * 0.6, -a * 0.7, r * 0.6, a * 0.7), True)]
    if name == "hash":
        b = t * 0.35
        return [(_bar(-r, -r * 0.4 - b, r, -r * 0.4 + b), True),
                (_bar(-r, r * 0.4 - b, r, r * 0.4 + b), True),
                (_bar(-r * 0.4 - b, -r, -r * 0.4 + b, r), True),
                (_bar(r * 0.4 - b, -r, r * 0.4 + b, r), True)]
    if name == "equals":
        return [(_bar(-r, -r * 0.55, r, -r * 0.55 + t), True),
                (_bar(-r, r * 0.55 - t, r, r * 0.55), True)]
    if name == "pacman":
        mouth = rng.uniform(0.35, 0.6)
        pts = [(0.0, 0.0)] + [(r * math.cos(s), r * math.sin(s))
                              for s in np.linspace(mouth, 2 * math.pi - mouth, 40)]
        return [(pts, True)]
    raise ValueError(f"unknown scene glyph {name!r}")


def _coverage(parts, size: int, outline: float = 0.0) -> np.ndarray:
    """Anti-aliased (size, size) coverage in [0, 1] of parts drawn in order (holes cut); with
    ``outline`` > 0 only the parts' outlines, that many pixels wide."""
    from PIL import Image, ImageDraw

    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    for points, filled in parts:
        scaled = [(x * s - 0.5, y * s - 0.5) for x, y in points]
        if outline > 0:
            draw.polygon(scaled, outline=255, width=max(int(round(outline * s)), 1))
        else:
            draw.polygon(scaled, fill=255 if filled else 0)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _two_colours(rng: np.random.Generator, under: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A texture's two colours: a clear step apart, their mean either a new colour or, a third
    of the time, close to what lies underneath (so that texture alone sets the glyph apart)."""
    step = rng.normal(0, 1, size=3).astype(np.float32)
    step *= rng.uniform(35, 90) / max(float(np.linalg.norm(step)), 1e-6)
    if rng.uniform() < 1 / 3:
        mean = under + rng.normal(0, 12, size=3).astype(np.float32)
    else:
        mean = rng.uniform(40, 215, size=3).astype(np.float32)
    return mean - step, mean + step


def _fill(rng: np.random.Generator, style: str, img: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 colours of a glyph in ``style`` (textured styles only) on the patch
    ``img`` that its coverage ``cov`` spans."""
    h, w = cov.shape
    visible = cov >= 0.5
    under = img[visible].mean(axis=0) if visible.any() else img.reshape(-1, 3).mean(axis=0)
    c0, c1 = _two_colours(rng, under)
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    if style == "dots":
        period = rng.uniform(4, 9)
        radius = period * rng.uniform(0.25, 0.4)
        ox, oy = rng.uniform(0, period, size=2)
        dx = (x + ox) % period - period / 2
        dy = (y + oy) % period - period / 2
        mix = (dx * dx + dy * dy <= radius * radius).astype(np.float32)
    elif style == "grain":
        mix = (rng.uniform(size=(h, w)) < 0.5).astype(np.float32)
    elif style == "rings":
        ys, xs = np.nonzero(visible) if visible.any() else (np.array([h / 2]), np.array([w / 2]))
        cy, cx = ys.mean(), xs.mean()
        period = rng.uniform(4, 10)
        mix = (np.sin(np.hypot(x - cx, y - cy) * (2 * math.pi / period)) > 0).astype(np.float32)
    elif style == "blotch":
        cell = int(rng.integers(3, 9))
        low = rng.uniform(size=(h // cell + 2, w // cell + 2, 1)).astype(np.float32)
        mix = (upsample(low, h, w)[..., 0] > 0.5).astype(np.float32)
    elif style == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        u = x * math.cos(theta) + y * math.sin(theta)
        lo, hi = ((float(u[visible].min()), float(u[visible].max())) if visible.any()
                  else (0.0, 1.0))
        mix = np.clip((u - lo) / max(hi - lo, 1e-6), 0, 1)
    else:
        raise ValueError(f"unknown style {style!r}")
    colours = c0 + (c1 - c0) * mix[..., None]
    return colours + rng.normal(0, 4, size=(h, w, 3)).astype(np.float32)


def _paint(rng: np.random.Generator, img: np.ndarray, cov: np.ndarray, style: str) -> None:
    """Alpha-blend a glyph of coverage ``cov`` into ``img`` in ``style`` (on its bounding box)."""
    rows, cols = np.flatnonzero(cov.max(axis=1) > 0), np.flatnonzero(cov.max(axis=0) > 0)
    if not rows.size:
        return
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    cov = cov[y0:y1, x0:x1]
    if style in ("solid", "outline"):
        if (cov >= 0.5).any():  # paint_solid picks its colour against what the glyph covers
            paint_solid(rng, img, y0, x0, cov)
        return
    patch = img[y0:y1, x0:x1]
    alpha = cov[..., None]
    patch[...] = patch * (1 - alpha) + _fill(rng, style, patch, cov) * alpha


def _clutter(rng: np.random.Generator, size: int) -> List[Tuple[Polygon, bool]]:
    """A thin line or a small dot: marks that belong to no class (and carry no label)."""
    if rng.uniform() < 0.5:
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        return [(_band([(x0, y0), (x1, y1)], rng.uniform(1.2, 4.0)), True)]
    return [(_disc(*rng.uniform(0, size, size=2), rng.uniform(1.5, 4.0)), True)]


def _draw_glyph(rng, img, class_map, style_map, cls: int, style: int, r: float, size: int) -> None:
    """Draw glyph ``cls`` of radius ``r`` somewhere in the image and label its visible pixels."""
    aspect = math.exp(rng.uniform(-0.35, 0.35))
    margin = min(r * 0.8, size / 2)
    cx, cy = rng.uniform(margin, size - margin, size=2)
    parts = place_parts(scene_glyph(rng, SCENE_CLASSES[cls], r), cx, cy,
                        rng.uniform(0, 2 * math.pi),
                        aspect, 1 / aspect)
    name = STYLES[style]
    cov = _coverage(parts, size, outline=r * rng.uniform(0.1, 0.2) if name == "outline" else 0.0)
    _paint(rng, img, cov, name)
    mask = cov >= 0.5
    class_map[mask] = cls
    style_map[mask] = style


def render_scene(seed: int, index: int, size: int = 112) -> Scene:
    """Scene ``index`` of the stream ``seed``.

    The main glyph has radius 18-46% of the image; 0-3 distractors of other classes (5-14%)
    lie under it or, small enough to leave it mostly visible, over it; 0-5 clutter marks.
    """
    rng = np.random.default_rng([seed, index])
    cls, style = int(rng.integers(len(SCENE_CLASSES))), int(rng.integers(len(STYLES)))
    img = background(rng, size, size)
    class_map = np.full((size, size), BACKGROUND, dtype=np.int16)
    style_map = np.full((size, size), BACKGROUND, dtype=np.int16)
    distractors = int(rng.choice(4, p=[0.25, 0.35, 0.25, 0.15]))
    over = int(rng.integers(0, distractors + 1)) if distractors else 0
    others = [c for c in range(len(SCENE_CLASSES)) if c != cls]

    def distractor() -> None:
        _draw_glyph(rng, img, class_map, style_map, int(rng.choice(others)),
                    int(rng.integers(len(STYLES))), rng.uniform(0.05, 0.14) * size, size)

    for _ in range(int(rng.integers(0, 3))):
        _paint(rng, img, _coverage(_clutter(rng, size), size), "solid")
    for _ in range(distractors - over):
        distractor()
    _draw_glyph(rng, img, class_map, style_map, cls, style, rng.uniform(0.18, 0.46) * size, size)
    for _ in range(over):
        distractor()
    for _ in range(int(rng.integers(0, 3))):
        _paint(rng, img, _coverage(_clutter(rng, size), size), "solid")
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return Scene(image, cls, style, class_map, style_map)


def token_labels(label_map: np.ndarray, stride: int, num_labels: int) -> np.ndarray:
    """(ceil(H / stride), ceil(W / stride)) int64 label of each token of a ``stride`` grid over
    ``label_map`` (H, W; BACKGROUND where no glyph is): the glyph label covering at least a
    quarter of the token's cell (its part inside the image), else ``num_labels``."""
    height, width = label_map.shape
    h, w = -(-height // stride), -(-width // stride)
    cell = (np.arange(height)[:, None] // stride) * w + np.arange(width)[None, :] // stride
    counts = np.bincount((cell * (num_labels + 1) + label_map + 1).ravel(),
                         minlength=h * w * (num_labels + 1)).reshape(h, w, num_labels + 1)
    inside = counts.sum(axis=2)  # pixels of the cell inside the image
    best = counts[..., 1:].argmax(axis=2)
    covered = np.take_along_axis(counts[..., 1:], best[..., None], axis=2)[..., 0] >= 0.25 * inside
    return np.where(covered, best, num_labels)


class SceneStream:
    """Map-style dataset of ``length`` scenes of one seed, starting at image ``start``, as
    (CHW float32 0-255, class, style, {"class@S": token classes, "style@S": token styles} for
    each stride S of ``token_strides``).

    A ``torch.utils.data.Dataset`` by duck typing: index it, or hand it to a ``DataLoader``
    (whose workers then compute the dense labels too).
    """

    def __init__(self, seed: int, length: int, size: int = 112, start: int = 0,
                 token_strides: Tuple[int, ...] = (16, 32)):
        self.seed, self.length = int(seed), int(length)
        self.size, self.start = int(size), int(start)
        self.token_strides = tuple(token_strides)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import torch

        if not 0 <= index < self.length:
            raise IndexError(index)
        scene = render_scene(self.seed, self.start + index, self.size)
        dense = {}
        for stride in self.token_strides:
            dense[f"class@{stride}"] = torch.from_numpy(
                token_labels(scene.class_map, stride, len(SCENE_CLASSES)))
            dense[f"style@{stride}"] = torch.from_numpy(
                token_labels(scene.style_map, stride, len(STYLES)))
        image = torch.from_numpy(scene.image).permute(2, 0, 1).float()
        return image, scene.label, scene.style, dense
