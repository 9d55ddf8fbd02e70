"""Table 7, "FPN Norm: fixed" (VOC column): 1.79M trainable backbone parameters; the norms
between highway and FPN stay frozen."""

from .retinanet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.train_output_norms = False
train.output_dir = "./output/voc/retinanet_swin_l_e3va_fixed_fpn_norm"
