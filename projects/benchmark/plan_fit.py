"""The planner's model of a step's peak: fitted on small measured steps, predicted at any size
and batch, refused where the fit is not physical (``plan_checks.check_fit``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

from .plan_checks import check_fit
from .sweep import per_pixel_image_and_constant

__all__ = ["PeakModel", "fits", "padded_pixels"]


def padded_pixels(width: int, height: int, divisibility: int) -> int:
    """Pixels of the padded image the backbone sees (detectron2 pads to the divisibility)."""
    step = max(divisibility, 1)
    return math.ceil(width / step) * step * math.ceil(height / step) * step


@dataclass
class PeakModel:
    """``peak = max(per_pixel * pixels * batch + per_image * batch + constant, update)``.

    The linear part is the forward and backward pass's peak; ``update`` is the optimizer
    update's (weights, gradients, moments and the update's temporaries), which does not grow
    with the image. At small sizes the update can set a step's peak, and a line through such
    peaks is flat: fitting the forward and backward peaks alone keeps the slope physical.
    """

    per_pixel: float
    per_image: float
    constant: float
    update: float = 0.0

    @classmethod
    def fit(cls, points: Sequence[dict], key: str = "peak_bytes") -> PeakModel:
        """Least squares over ``points``, dicts with ``pixels`` (padded pixels of the whole
        batch, as ``sweep.py`` counts them), ``batch`` and ``key``; relative errors. Points
        measured by phase (``forward_backward_bytes``, ``update_bytes``) fit the linear part
        to the forward and backward peaks and take the largest update peak."""
        sizes, batches = {p["pixels"] / p["batch"] for p in points}, {p["batch"] for p in points}
        if len(sizes) < 2 or len(batches) < 2:
            raise ValueError("the fit needs at least two image sizes and two batch sizes")
        if key == "peak_bytes" and all("forward_backward_bytes" in p for p in points):
            return cls(*per_pixel_image_and_constant(list(points), "forward_backward_bytes"),
                       update=max(p["update_bytes"] for p in points))
        return cls(*per_pixel_image_and_constant(list(points), key))

    def predict(self, pixels: int, batch: int) -> float:
        """Peak bytes for ``batch`` images of ``pixels`` (padded) pixels each."""
        return max(self.per_pixel * pixels * batch + self.per_image * batch + self.constant,
                   self.update)

    def largest_batch(self, pixels: int, budget: float, max_batch: int = 64) -> int:
        """The largest batch (<= ``max_batch``) whose predicted peak is within ``budget`` bytes;
        0 when not even one image fits."""
        if self.update > budget:
            return 0
        per_batch = self.per_pixel * pixels + self.per_image
        if per_batch <= 0:
            return max_batch if self.constant <= budget else 0
        return int(max(0, min(max_batch, math.floor((budget - self.constant) / per_batch))))


def fits(points: Dict[str, List[dict]]) -> Dict[str, PeakModel]:
    """Each method's fit over its "fit" points, refused where it is not physical."""
    models = {}
    for method, pts in points.items():
        models[method] = PeakModel.fit([p for p in pts if p["role"] == "fit"])
        check_fit(method, models[method], pts)
    return models
