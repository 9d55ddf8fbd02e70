"""Table 7, "Reduction: trainable" (VOC column): 8.00M trainable backbone parameters;
trainable copies of the patch merging layers in the highway, initialised from the pre-trained
ones, instead of the inherited, frozen ones."""

from .retinanet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.trainable_downsampling = True
train.output_dir = "./output/voc/retinanet_swin_l_e3va_trainable_reduction"
