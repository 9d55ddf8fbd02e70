"""Table 1, AdaptFormer: scaled bottlenecks (width 64) parallel to MSA and MLP (3.11M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import AdaptFormerTuning

from ..common.coco_instance_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(AdaptFormerTuning)(width=64)
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_adaptformer"
