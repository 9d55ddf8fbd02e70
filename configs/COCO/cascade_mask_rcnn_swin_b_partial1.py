"""Table 1, PARTIAL-1: only the last Swin block trains (12.60M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import PartialTuning

from ..common.coco_instance_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(PartialTuning)(last_blocks=1)
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_partial1"
