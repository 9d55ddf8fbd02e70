"""What a synthetic "shapes" split is: its classes, fills and generation parameters.

Below both :mod:`.shapes_render` (which draws a spec) and :mod:`.shapes` (which caches and
registers the splits), so that neither has to import the other.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

__all__ = ["FILLS", "THING_CLASSES", "ShapesSpec"]

THING_CLASSES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle")
FILLS: Tuple[str, ...] = ("solid", "texture", "dots_rings")  # ShapesSpec.fill


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
    """Generation parameters; their hash names the cache folder, so changes never reuse files."""

    num_images: int = 256
    seed: int = 0
    min_size: int = 160  # image width and height are drawn independently in [min, max]
    max_size: int = 256
    min_objects: int = 1
    max_objects: int = 5
    min_visible_area: int = 30  # pixels; occluders that would leave less are re-placed
    # How objects are filled: "solid" (a shaded colour that stands out from what lies beneath),
    # "texture" (fine stripes or checks whose mean colour is close to what lies beneath, so
    # an object differs from its surroundings mainly by texture) or "dots_rings" (dots on a
    # lattice or rings about the object's centre, their mean colour close to what lies beneath).
    fill: str = "solid"
    # An object's first side, as a share of the image's shorter side, is drawn in this range
    # (its second side is 0.5-1.5 times the first).
    object_scale: Tuple[float, float] = (0.12, 0.45)

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"ShapesSpec.num_images must be >= 1, got {self.num_images}")
        if not 32 <= self.min_size <= self.max_size:
            raise ValueError(f"ShapesSpec needs 32 <= min_size <= max_size, got {self}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"ShapesSpec needs 1 <= min_objects <= max_objects, got {self}")
        if self.min_visible_area < 1:
            raise ValueError("ShapesSpec.min_visible_area must be >= 1")
        if self.fill not in FILLS:
            raise ValueError(f"ShapesSpec.fill must be one of {FILLS}, got {self.fill!r}")
        low, high = self.object_scale
        if not 0 < low <= high <= 1:
            raise ValueError("ShapesSpec needs 0 < object_scale[0] <= object_scale[1] <= 1, got "
                             f"{self.object_scale}")
