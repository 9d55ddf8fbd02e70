"""Table 1, E3VA: Cascade Mask R-CNN, Swin-B, dual low-rank adapters of rank 8 on the highway.
1.20M trainable backbone parameters (highway adapters + output norms)."""
from ..common.coco_instance_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.rank = 8
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_e3va"
