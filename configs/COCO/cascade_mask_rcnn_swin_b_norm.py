"""Table 1, NORM-TUNING: only the backbone's LayerNorms train (0.06M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import NormTuning

from ..common.coco_instance_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(NormTuning)()
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_norm"
