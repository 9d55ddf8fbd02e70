"""Base of every COCO row: Cascade Mask R-CNN, Swin-B + E3VA, the paper's recipe.

Paper appendix A: AdamW, lr 1e-4, batch 2 per GPU on 8 GPUs, 36 epochs, LR x0.1 at epochs 27
and 33; backbone initialised from ImageNet-22K. One epoch of COCO train2017 (117,266 images
with annotations) at batch 16 is 7,330 iterations, so 36 epochs = 263,880 iterations.
"""
from ..common.data.coco import dataloader
from ..common.models.cascade_mask_rcnn_swin import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import iterations_per_epoch, step_schedule
from ..common.train import train

model.roi_heads.num_classes = 80

EPOCH = iterations_per_epoch(117266, dataloader.train.total_batch_size)
train.max_iter = 36 * EPOCH
# In epochs; 500 warmup iterations as in the Swin detectors.
lr_multiplier = step_schedule(milestones=[27, 33], total=36, warmup_fraction=500 / train.max_iter)
optimizer.lr = 1e-4

train.init_checkpoint = (
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
    "swin_base_patch4_window7_224_22k.pth"
)
train.checkpointer.period = 3 * EPOCH
train.eval_period = 6 * EPOCH
train.output_dir = "./output/coco"
