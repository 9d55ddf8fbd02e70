"""This project's extension (not a paper row): E3VA with spatial context on its highway
(depthwise 3x3 convolutions in every adapter's bottleneck, adapters that read the highway's
deviation from the trunk, a spatial bottleneck on the highway at each stage's end); see
e3va_d2/modeling/spatial_highway.py."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import SpatialE3VATuning

from ..common.coco_instance_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(SpatialE3VATuning)(rank=8)
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_e3va_spatial"
