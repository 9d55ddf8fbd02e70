"""Table 1, E3VA+: rank 16 (2.35M trainable backbone parameters)."""
from .cascade_mask_rcnn_swin_b_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.rank = 16
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_e3va_plus"
