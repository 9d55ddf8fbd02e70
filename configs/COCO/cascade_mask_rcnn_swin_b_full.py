"""Table 1, FULL: every Swin-B parameter trains (86.75M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import FullTuning

from ..common.coco_instance_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(FullTuning)()
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_full"
