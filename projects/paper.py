"""The paper's published figures (Yin et al., 2023: Tables 1, 2, 4-7), in one place.

Tests check the built models' trainable parameter counts against them; the configs table of
docs/CONFIGS.md (``projects/model_zoo/config_table.py``) prints them next to ours. They are the
paper's results on the real datasets, not ours.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

__all__ = ["METHODS", "METRIC", "ROWS", "TABLE4_CARDS", "TABLE4_FITS",
           "TRAINABLE_BACKBONE_MILLIONS", "TRAINING_MEMORY_MB"]

# (benchmark folder, config row suffix) -> (trainable backbone parameters in millions, or None
# where the paper gives none; the metric as printed).
ROWS: Dict[Tuple[str, str], Tuple[Optional[float], str]] = {
    ("COCO", "b_full"): (86.75, "51.9 / 45.0"),
    ("COCO", "b_fixed"): (0.00, "43.5 / 38.6"),
    ("COCO", "b_bitfit"): (0.20, "47.9 / 41.9"),
    ("COCO", "b_norm"): (0.06, "48.0 / 41.4"),
    ("COCO", "b_partial1"): (12.60, "49.2 / 42.8"),
    ("COCO", "b_adapter"): (3.11, "50.9 / 43.8"),
    ("COCO", "b_lora"): (3.03, "51.2 / 44.3"),
    ("COCO", "b_adaptformer"): (3.11, "51.4 / 44.5"),
    ("COCO", "b_e3va"): (1.20, "50.5 / 43.8"),
    ("COCO", "b_e3va_plus"): (2.35, "51.0 / 44.2"),
    ("COCO", "b_e3va_plusplus"): (4.66, "51.6 / 44.5"),
    ("COCO", "l_e3va"): (1.80, "52.2 / 45.2"),
    ("COCO", "l_e3va_trainable_reduction"): (None, "51.7 box (Table 7)"),
    ("COCO", "l_e3va_fixed_fpn_norm"): (None, "51.8 box (Table 7)"),
    ("PascalVOC", "l_full"): (198.58, "83.5"),
    ("PascalVOC", "l_fixed"): (0.00, "83.6"),
    ("PascalVOC", "l_bitfit"): (0.30, "85.7"),
    ("PascalVOC", "l_norm"): (0.09, "85.8"),
    ("PascalVOC", "l_partial1"): (28.34, "85.4"),
    ("PascalVOC", "l_adapter"): (4.66, "87.1"),
    ("PascalVOC", "l_lora"): (4.57, "87.5"),
    ("PascalVOC", "l_adaptformer"): (4.66, "87.3"),
    ("PascalVOC", "l_e3va"): (1.79, "86.5"),
    ("PascalVOC", "l_e3va_plus"): (3.53, "86.8"),
    ("PascalVOC", "l_e3va_plusplus"): (7.00, "87.0"),
    ("PascalVOC", "l_e3va_standard_adapter"): (2.35, "85.4 (Table 5)"),
    ("PascalVOC", "l_e3va_stacked"): (None, "85.9 (Table 6)"),
    ("PascalVOC", "l_e3va_trainable_reduction"): (None, "86.7 (Table 7)"),
    ("PascalVOC", "l_e3va_fixed_fpn_norm"): (None, "85.9 (Table 7)"),
    ("ADE20K", "l_full"): (198.58, "52.10"),
    ("ADE20K", "l_fixed"): (0.00, "46.84"),
    ("ADE20K", "l_bitfit"): (0.30, "48.37"),
    ("ADE20K", "l_norm"): (0.09, "47.98"),
    ("ADE20K", "l_partial1"): (28.34, "47.44"),
    ("ADE20K", "l_adapter"): (4.66, "50.78"),
    ("ADE20K", "l_lora"): (4.57, "50.34"),
    ("ADE20K", "l_adaptformer"): (4.66, "50.83"),
    ("ADE20K", "l_e3va"): (1.79, "49.64"),
    ("ADE20K", "l_e3va_plus"): (3.53, "50.20"),
    ("ADE20K", "l_e3va_plusplus"): (7.00, "51.01"),
    ("ADE20K", "l_e3va_trainable_reduction"): (None, "49.97 (Table 7)"),
    ("ADE20K", "l_e3va_fixed_fpn_norm"): (None, "48.51 (Table 7)"),
}

METRIC = {
    "COCO": "AP box / mask",
    "PascalVOC": "VOC2007 11-point AP50",
    "ADE20K": "mIoU",
}

# The methods of Tables 1-2, as registered in e3va_d2.modeling.tuning.
METHODS = ("full", "fixed", "bitfit", "norm", "partial1", "adapter", "lora", "adaptformer",
           "e3va", "e3va_plus", "e3va_plusplus")

# Trainable backbone parameters (millions) per method: Swin-B from Table 1 (COCO), Swin-L from
# Table 2 (Pascal VOC; its COCO row prints 1.80M for E3VA, the VOC and ADE20K rows 1.79M).
TRAINABLE_BACKBONE_MILLIONS: Dict[str, Dict[str, float]] = {
    size: {method: ROWS[folder, f"{size.lower()}_{method}"][0] for method in METHODS}
    for size, folder in (("B", "COCO"), ("L", "PascalVOC"))
}

# Training memory per GPU at batch 2 as the paper prints it ("MB"; read as MiB: mmdetection's
# log prints torch.cuda.max_memory_allocated / 2**20 under that name): Table 1 (COCO, Cascade
# Mask R-CNN, Swin-B; its last row Swin-L) and Table 2 (Pascal VOC, RetinaNet, Swin-L).
TRAINING_MEMORY_MB: Dict[Tuple[str, str], int] = {
    ("COCO", "b_full"): 17061, ("COCO", "b_fixed"): 7137, ("COCO", "b_bitfit"): 13657,
    ("COCO", "b_norm"): 12831, ("COCO", "b_partial1"): 7301, ("COCO", "b_adapter"): 12557,
    ("COCO", "b_lora"): 11975, ("COCO", "b_adaptformer"): 13186, ("COCO", "b_e3va"): 7639,
    ("COCO", "b_e3va_plus"): 7761, ("COCO", "b_e3va_plusplus"): 8941, ("COCO", "l_e3va"): 9471,
    ("PascalVOC", "l_full"): 15679, ("PascalVOC", "l_fixed"): 3967,
    ("PascalVOC", "l_bitfit"): 10861, ("PascalVOC", "l_norm"): 10123,
    ("PascalVOC", "l_partial1"): 3943, ("PascalVOC", "l_adapter"): 10793,
    ("PascalVOC", "l_lora"): 10127, ("PascalVOC", "l_adaptformer"): 11036,
    ("PascalVOC", "l_e3va"): 4819, ("PascalVOC", "l_e3va_plus"): 5175,
    ("PascalVOC", "l_e3va_plusplus"): 5405,
}

# Table 4: which card trains Swin-L Cascade Mask R-CNN (COCO) with each method, per batch:
# (method, batch) -> trains on (GTX 1080Ti 11GB, Tesla P100 16GB, RTX 3090 24GB, V100 32GB).
TABLE4_CARDS = (("GTX 1080Ti", 11), ("Tesla P100", 16), ("RTX 3090", 24), ("Tesla V100", 32))
TABLE4_FITS: Dict[Tuple[str, int], Tuple[bool, bool, bool, bool]] = {
    ("full", 1): (False, False, True, True), ("full", 2): (False, False, False, False),
    ("bitfit", 1): (False, False, True, True), ("bitfit", 2): (False, False, False, False),
    ("adapter", 1): (False, False, True, True), ("adapter", 2): (False, False, False, False),
    ("lora", 1): (False, False, True, True), ("lora", 2): (False, False, False, False),
    ("e3va", 1): (True, True, True, True), ("e3va", 2): (False, True, True, True),
}
