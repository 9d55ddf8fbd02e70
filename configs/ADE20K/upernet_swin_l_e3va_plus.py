"""Table 2, ADE20K, E3VA+: rank 16 (3.53M trainable backbone parameters)."""
from .upernet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning.rank = 16
train.output_dir = "./output/ade20k/upernet_swin_l_e3va_plus"
