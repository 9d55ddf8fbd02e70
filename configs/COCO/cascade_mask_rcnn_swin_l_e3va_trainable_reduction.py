"""Table 7, "Reduction: trainable": E3VA on Swin-L with trainable copies of the patch merging
layers in the highway (initialised from the pre-trained ones) instead of the inherited, frozen
ones."""
from .cascade_mask_rcnn_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.trainable_downsampling = True
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_l_e3va_trainable_reduction"
