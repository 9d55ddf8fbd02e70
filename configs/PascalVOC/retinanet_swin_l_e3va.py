"""Table 2, E3VA: 1.79M trainable backbone parameters (highway adapters + output norms).
RetinaNet, Swin-L, dual low-rank adapters of rank 8 on the highway beside the frozen trunk."""

from ..common.voc_detection import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.rank = 8
train.output_dir = "./output/voc/retinanet_swin_l_e3va"
