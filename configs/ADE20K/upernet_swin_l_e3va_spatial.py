"""This project's extension (not a paper row): E3VA with spatial context on its highway; see
e3va_d2/modeling/spatial_highway.py."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import SpatialE3VATuning

from ..common.ade20k_semantic_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning = L(SpatialE3VATuning)(rank=8)
train.output_dir = "./output/ade20k/upernet_swin_l_e3va_spatial"
