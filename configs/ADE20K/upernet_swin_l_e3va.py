"""Table 2, ADE20K, E3VA: UPerNet, Swin-L, dual low-rank adapters of rank 8 on the highway.
1.79M trainable backbone parameters (highway adapters + output norms)."""
from ..common.ade20k_semantic_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning.rank = 8
train.output_dir = "./output/ade20k/upernet_swin_l_e3va"
