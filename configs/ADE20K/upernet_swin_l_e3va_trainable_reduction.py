"""Table 7, ADE20K, "Reduction: trainable": E3VA on Swin-L with trainable copies of the patch
merging layers in the highway (initialised from the pre-trained ones) instead of the inherited,
frozen ones (8.00M trainable backbone parameters)."""
from .upernet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning.trainable_downsampling = True
train.output_dir = "./output/ade20k/upernet_swin_l_e3va_trainable_reduction"
