"""Table 2, E3VA+: rank 16, 3.52M trainable backbone parameters (paper: 3.53M)."""

from .retinanet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.rank = 16
train.output_dir = "./output/voc/retinanet_swin_l_e3va_plus"
