"""Table 1, E3VA++: rank 32 (4.66M trainable backbone parameters)."""
from .cascade_mask_rcnn_swin_b_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.rank = 32
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_e3va_plusplus"
