"""Table 7, "FPN Norm: fixed": E3VA on Swin-L with the norms between highway and FPN frozen."""
from .cascade_mask_rcnn_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.train_output_norms = False
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_l_e3va_fixed_fpn_norm"
