"""Table 7, ADE20K, "FPN Norm: fixed": E3VA on Swin-L with the norms between highway and UPerNet
head frozen (1.79M trainable backbone parameters: the highway adapters only)."""
from .upernet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning.train_output_norms = False
train.output_dir = "./output/ade20k/upernet_swin_l_e3va_fixed_fpn_norm"
