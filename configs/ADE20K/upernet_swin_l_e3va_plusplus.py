"""Table 2, ADE20K, E3VA++: rank 32 (6.99M trainable backbone parameters; the paper reports
7.00M)."""
from .upernet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning.rank = 32
train.output_dir = "./output/ade20k/upernet_swin_l_e3va_plusplus"
