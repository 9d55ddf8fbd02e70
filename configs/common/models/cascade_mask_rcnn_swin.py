"""Cascade Mask R-CNN with a tuned Swin + FPN, as in the Swin and E3VA papers.

Box heads follow the official Swin detectors: 4 convs + 1 fc with SyncBN (detectron2 turns
SyncBN into BN when one process trains, see ``e3va_d2.layers.adapt_sync_batchnorm``).
"""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNConvFCHead

from .swin_fpn import backbone, pixel_normalization

model = model_zoo.get_config("common/models/cascade_rcnn.py").model
model.backbone = backbone
model.update(pixel_normalization)
model.roi_heads.box_heads = [
    L(FastRCNNConvFCHead)(
        input_shape=ShapeSpec(channels=256, height=7, width=7),
        conv_dims=[256, 256, 256, 256],
        fc_dims=[1024],
        conv_norm="SyncBN",
    )
    for _ in range(3)
]
