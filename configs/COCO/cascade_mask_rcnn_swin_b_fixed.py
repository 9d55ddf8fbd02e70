"""Table 1, FIXED: Swin-B frozen (output norms included); only FPN and heads train."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import FixedTuning

from ..common.coco_instance_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(FixedTuning)()
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_fixed"
