"""Pascal VOC detection evaluation that says which AP it reports.

Why: detectron2's ``PascalVOCDetectionEvaluator`` returns ``{"bbox": {"AP", "AP50", "AP75"}}``
where "AP" averages IoU 0.50:0.95, unlike COCO's area-based AP, and AP50 uses the VOC2007
11-point interpolation when the dataset's ``year`` is 2007. Papers (E3VA's Table 2 "AP_box" on
VOC 07+12) report that 11-point AP50, so the log names it exactly.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator

__all__ = ["VOCDetectionEvaluator", "voc_metric_name"]

logger = logging.getLogger(__name__)


def voc_metric_name(year: int) -> str:
    """``"VOC2007 11-point AP50"`` or ``"VOC2012 all-point AP50"``, as detectron2 computes it."""
    return f"VOC{year} {'11-point' if year == 2007 else 'all-point'} AP50"


class VOCDetectionEvaluator(PascalVOCDetectionEvaluator):
    """detectron2's evaluator (same results dict) that logs its AP50 under its exact name and
    materialises datasets generated on demand (``shapes_voc_*``) before reading their files."""

    def __init__(self, dataset_name: str):
        meta = MetadataCatalog.get(dataset_name)
        split_file = os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
        if meta.get("generated_on_demand", False) and not os.path.isfile(split_file):
            DatasetCatalog.get(dataset_name)  # its loader writes the files evaluation reads
        super().__init__(dataset_name)
        self.metric_name = voc_metric_name(meta.year)

    def evaluate(self) -> Optional[OrderedDict]:
        results = super().evaluate()
        if results:  # None on all but the main process
            logger.info(
                "%s on %s: %.2f (AP@[.50:.95] %.2f, AP75 %.2f, same interpolation)",
                self.metric_name,
                self._dataset_name,
                results["bbox"]["AP50"],
                results["bbox"]["AP"],
                results["bbox"]["AP75"],
            )
        return results
