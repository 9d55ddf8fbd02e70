"""Mask R-CNN with a tuned Swin + FPN (detectron2's model-zoo Mask R-CNN otherwise)."""
from detectron2 import model_zoo

from .swin_fpn import backbone, pixel_normalization

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone = backbone
model.update(pixel_normalization)
