"""Table 2, E3VA++: rank 32, 6.99M trainable backbone parameters (paper: 7.00M)."""

from .retinanet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.rank = 32
train.output_dir = "./output/voc/retinanet_swin_l_e3va_plusplus"
